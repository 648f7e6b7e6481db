//! The accept loop shared by the test servers.

use std::error::Error as StdError;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A listener on a free loopback port and its `host:port`.
pub(crate) async fn bind_loopback() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    (listener, addr)
}

/// Serves HTTP/1 and HTTP/2 connections with `service` (over TLS when `tls` is given) until the
/// returned sender fires or is dropped.
pub(crate) fn serve<S, B>(
    listener: TcpListener,
    service: S,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> oneshot::Sender<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let socket = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
                _ = &mut stopped => return,
            };
            let (http, service, tls) = (http.clone(), service.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(socket), service).await;
                    }
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(socket).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                }
            });
        }
    });
    stop
}

/// The value of `--name N` on the command line, or `default` (for benchmark examples).
pub fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
