//! What the tests need from their environment.

/// Environment variable `var`, which names something a test needs (`how` says where it comes
/// from): missing, it fails the test in CI and skips it elsewhere, saying so.
pub fn needed_var(var: &str, how: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) => {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "{var} is not set: CI must provide it ({how})"
            );
            eprintln!("skipped: {var} is not set ({how})");
            None
        }
    }
}

/// A free loopback port, bound and released: for programs that take a fixed address (a
/// child process, Prometheus). Another process may take it meanwhile; rare enough in tests.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
