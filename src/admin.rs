//! The admin HTTP server: `/metrics` (OpenMetrics), `/live`, `/ready`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the admin server serves: liveness (tasks running, the watch not failing for long),
/// readiness (synced) and the metrics.
pub struct AdminState {
    /// The watch delivered its first full list.
    pub ready: AtomicBool,
    pub metrics: Metrics,
    /// Workers running, and how many were started.
    workers: AtomicUsize,
    workers_started: AtomicUsize,
    watch_running: AtomicBool,
    /// Since when every watch attempt has failed, and the latest failure; `None` while it
    /// works.
    watch_failing_since: Mutex<Option<(Instant, Instant)>>,
    /// How long the watch may fail before `/ready` says so.
    pub watch_stale_after: Duration,
    /// No failure for this long: the watch works again. A watch that resumes without a change
    /// to report yields no event, so a silence longer than the watcher's longest backoff (30 s)
    /// plus one failing request is the sign that its retry succeeded.
    pub watch_recovered_after: Duration,
    /// Passes in flight, and when one last ended (or the process started).
    passes: AtomicUsize,
    last_pass_ended: Mutex<Instant>,
    /// Passes in flight and none ended for this long: the workers make no progress (each pass
    /// has a deadline, so this is a backstop for a worker stuck outside it).
    pub stalled_after: Duration,
}

/// Counts a pass in flight; dropping it marks the moment a pass ended.
pub struct PassGuard<'a>(&'a AdminState);

impl Drop for PassGuard<'_> {
    fn drop(&mut self) {
        self.0.passes.fetch_sub(1, Ordering::SeqCst);
        *self.0.last_pass_ended.lock().expect("lock") = Instant::now();
    }
}

/// Counts a running task for `/live`; dropping it (a return or a panic) counts it gone.
pub struct Running<'a> {
    count: Option<&'a AtomicUsize>,
    flag: Option<&'a AtomicBool>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.count {
            c.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(f) = self.flag {
            f.store(false, Ordering::SeqCst);
        }
    }
}

impl AdminState {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            ready: AtomicBool::new(false),
            metrics,
            workers: AtomicUsize::new(0),
            workers_started: AtomicUsize::new(0),
            watch_running: AtomicBool::new(false),
            watch_failing_since: Mutex::new(None),
            watch_stale_after: Duration::from_secs(120),
            watch_recovered_after: Duration::from_secs(90),
            passes: AtomicUsize::new(0),
            last_pass_ended: Mutex::new(Instant::now()),
            stalled_after: Duration::from_secs(900),
        }
    }

    /// A pass starts; keep the guard until it ends.
    pub fn pass(&self) -> PassGuard<'_> {
        self.passes.fetch_add(1, Ordering::SeqCst);
        PassGuard(self)
    }

    /// Passes are in flight and none has ended for longer than `stalled_after`.
    fn stalled(&self) -> Option<Duration> {
        let since = self.last_pass_ended.lock().expect("lock").elapsed();
        (self.passes.load(Ordering::SeqCst) > 0 && since > self.stalled_after).then_some(since)
    }

    /// A worker starts; keep the guard for as long as it runs.
    pub fn worker(&self) -> Running<'_> {
        self.workers.fetch_add(1, Ordering::SeqCst);
        self.workers_started.fetch_add(1, Ordering::SeqCst);
        Running {
            count: Some(&self.workers),
            flag: None,
        }
    }

    /// Workers still running.
    pub fn workers_running(&self) -> usize {
        self.workers.load(Ordering::SeqCst)
    }

    /// The watch task starts; keep the guard for as long as it runs.
    pub fn watch(&self) -> Running<'_> {
        self.watch_running.store(true, Ordering::SeqCst);
        Running {
            count: None,
            flag: Some(&self.watch_running),
        }
    }

    /// The watch failed (it retries by itself) or delivered something.
    pub fn watch_result(&self, ok: bool) {
        let mut since = self.watch_failing_since.lock().expect("lock");
        let now = Instant::now();
        *since = match (ok, *since) {
            (true, _) => None,
            (false, Some((first, last))) if last.elapsed() <= self.watch_recovered_after => {
                Some((first, now))
            }
            (false, _) => Some((now, now)),
        };
    }

    /// How long every watch attempt has failed; zero while it works.
    pub fn watch_failing_for(&self) -> Duration {
        match *self.watch_failing_since.lock().expect("lock") {
            Some((first, last)) if last.elapsed() <= self.watch_recovered_after => first.elapsed(),
            _ => Duration::ZERO,
        }
    }

    /// Why the process is not live: a worker or the watch task is gone.
    pub fn not_live(&self) -> Option<String> {
        let started = self.workers_started.load(Ordering::SeqCst);
        let running = self.workers.load(Ordering::SeqCst);
        if running < started {
            return Some(format!(
                "{} of {started} workers are gone\n",
                started - running
            ));
        }
        if started > 0 && !self.watch_running.load(Ordering::SeqCst) {
            return Some("the watch task is gone\n".into());
        }
        if let Some(since) = self.stalled() {
            return Some(format!(
                "no pass has ended for {} s while passes are in flight\n",
                since.as_secs()
            ));
        }
        None
    }

    /// Why the process is not ready: no first list yet, or the watch failing for too long.
    pub fn not_ready(&self) -> Option<String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Some("waiting for the first watch events\n".into());
        }
        let failing = self.watch_failing_for();
        match failing > self.watch_stale_after {
            true => Some(format!(
                "the watch has been failing for {} s\n",
                failing.as_secs()
            )),
            false => None,
        }
    }
}

fn respond(health: &AdminState, path: &str) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            health.metrics.encode(),
        ),
        "/live" => match health.not_live() {
            None => (StatusCode::OK, "text/plain", "ok\n".into()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", why),
        },
        "/ready" => match health.not_ready() {
            None => (StatusCode::OK, "text/plain", "ready\n".into()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", why),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

/// Binds `addr` and serves until `stop`; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    health: Arc<AdminState>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = stop.cancelled() => break,
                c = listener.accept() => c,
            };
            let Ok((stream, _)) = conn else { continue };
            let health = health.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let resp = respond(&health, req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failing is measured from the first failure, ends with an event, and ends by itself
    /// after a silence longer than the watcher's backoff (a resumed watch yields nothing).
    /// A pass in flight with none ended for longer than `stalled_after` makes `/live` fail: the
    /// workers are making no progress. Idle workers (no pass in flight) are live.
    #[test]
    fn live_fails_when_passes_stop_ending() {
        let mut s = AdminState::new(Metrics::new());
        s.stalled_after = Duration::from_millis(50);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(s.not_live(), None, "idle is live");
        let pass = s.pass();
        assert!(
            s.not_live()
                .is_some_and(|w| w.contains("no pass has ended"))
        );
        drop(pass);
        assert_eq!(s.not_live(), None, "a pass ended");
        let _stuck = s.pass();
        assert_eq!(s.not_live(), None, "just started");
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.not_live().is_some());
    }

    #[test]
    fn the_watch_fails_from_its_first_failure_until_an_event_or_a_long_silence() {
        let mut state = AdminState::new(Metrics::new());
        state.watch_recovered_after = Duration::from_millis(300);
        state.watch_stale_after = Duration::from_millis(100);
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(state.watch_failing_for(), Duration::ZERO);
        state.watch_result(false);
        std::thread::sleep(Duration::from_millis(150));
        state.watch_result(false);
        assert!(state.watch_failing_for() >= Duration::from_millis(150));
        assert!(state.not_ready().is_some_and(|w| w.contains("failing")));
        state.watch_result(true);
        assert_eq!(state.watch_failing_for(), Duration::ZERO);
        assert_eq!(state.not_ready(), None);

        state.watch_result(false);
        std::thread::sleep(Duration::from_millis(200));
        assert!(state.watch_failing_for() >= Duration::from_millis(200));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            state.watch_failing_for(),
            Duration::ZERO,
            "recovered silently"
        );
        assert_eq!(state.not_ready(), None);
        // A failure after the silence starts a new count.
        state.watch_result(false);
        assert!(state.watch_failing_for() < Duration::from_millis(100));
    }
}
