//! What the controller's end-to-end tests share besides Argo's objects (those are in
//! `core/tests/support`).
#![allow(dead_code)]

use std::time::Duration;

use artgc::controller::{ControllerConfig, ControllerHandle};

/// A controller that answers quickly: an ephemeral admin port, short backoffs, 5 s to stop;
/// the test stores listen on loopback, which the operator must allow.
pub fn quick_config() -> ControllerConfig {
    ControllerConfig {
        policy: loopback_policy(),
        admin_addr: ([127, 0, 0, 1], 0).into(),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        shutdown_grace: Duration::from_secs(5),
        ..Default::default()
    }
}

/// The default policy, with loopback stores allowed (`allowLoopback: true`).
pub fn loopback_policy() -> std::sync::Arc<artgc_core::policy::Policy> {
    std::sync::Arc::new(artgc_core::policy::Policy {
        allow_loopback: true,
        ..Default::default()
    })
}

/// Polls `check` every 50 ms until it holds; fails naming `what` after 30 s (the real API
/// server, under the whole suite on two cores, is far slower than the test server).
pub async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one series in a Prometheus exposition, by its exact name and labels
/// (`artgc_leader`, `artgc_kept_total{reason="shared"}`). A substring search matches
/// `# HELP` lines and longer numbers: "artgc_leader 1" is in the help text of the gauge.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, v)| v.parse().ok())
}

/// The controller's `/metrics`.
pub async fn metrics(handle: &ControllerHandle) -> String {
    let url = format!("http://{}/metrics", handle.admin_addr);
    let (status, body) = http_get(&url).await;
    assert_eq!(status, 200);
    body
}

/// A plain HTTP/1.1 GET over a TCP stream: enough for the admin server.
pub async fn http_get(url: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}
