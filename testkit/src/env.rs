//! What the tests need from their environment.

/// Environment variable `var`, which names a server or tool a test needs (`how` says where it
/// comes from). Such tests are `#[ignore]`d, so they run only when asked for
/// (`-- --include-ignored`): missing, it fails the test, naming what to start. Never `None`;
/// the `Option` lets callers keep `?`.
pub fn needed_var(var: &str, how: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) => panic!("{var} is not set: this test needs it ({how})"),
    }
}

/// Environment variable `var` for an optional part of a test that runs anyway: missing, that
/// part is left out, saying so (and in CI, where everything is provided, it fails).
pub fn optional_var(var: &str, how: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) => {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "{var} is not set: CI must provide it ({how})"
            );
            eprintln!("left out: {var} is not set ({how})");
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
