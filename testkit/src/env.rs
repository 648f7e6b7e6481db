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
