//! A TCP proxy that black-holes connections, as a load balancer that lost its backend does:
//! while the hole is on, every connection (open ones and new ones) goes dead for good. A dead
//! connection stays open and swallows every byte either way: nothing is answered, refused or
//! closed. Once the hole is off, new connections work; the dead ones stay dead, as connections
//! whose state the balancer lost do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Hole {
    on: bool,
    connections: Vec<Weak<AtomicBool>>,
}

pub struct BlackHoleProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    hole: Arc<Mutex<Hole>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BlackHoleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BlackHoleProxy {
    /// Forwards loopback connections to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let hole = Arc::new(Mutex::new(Hole::default()));
        let h = hole.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let dead = {
                    let mut h = h.lock().unwrap();
                    let dead = Arc::new(AtomicBool::new(h.on));
                    h.connections.retain(|c| c.strong_count() > 0);
                    h.connections.push(Arc::downgrade(&dead));
                    dead
                };
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    // Both directions end only when both peers are gone.
                    tokio::join!(pump(cr, sw, dead.clone()), pump(sr, cw, dead));
                });
            }
        });
        Self { url, hole, task }
    }

    /// Turns the hole on (every connection open now or made while it lasts goes dead) or off.
    pub fn set_black_hole(&self, on: bool) {
        let mut h = self.hole.lock().unwrap();
        h.on = on;
        if on {
            for c in h.connections.iter().filter_map(Weak::upgrade) {
                c.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Copies `from` to `to` until the connection is dead; then swallows what `from` sends.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    dead: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if dead.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
