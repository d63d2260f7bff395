//! Graceful shutdown: a signal every listener and connection watches, and a count of live
//! connections to wait for. Connection tasks hold a `Drain`; the process waits until all are
//! dropped (or the drain deadline passes) before it exits.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

#[derive(Clone)]
pub struct Drain {
    signal: watch::Receiver<bool>,
    // Held only for its drop: the controller's receiver closes when the last clone goes away.
    _live: mpsc::Sender<()>,
}

pub struct DrainController {
    signal: watch::Sender<bool>,
    live_tx: Option<mpsc::Sender<()>>,
    live_rx: mpsc::Receiver<()>,
}

impl DrainController {
    pub fn new() -> (Self, Drain) {
        let (signal, signal_rx) = watch::channel(false);
        let (live_tx, live_rx) = mpsc::channel(1);
        let drain = Drain { signal: signal_rx, _live: live_tx.clone() };
        (Self { signal, live_tx: Some(live_tx), live_rx }, drain)
    }

    /// Signals shutdown, then waits for every `Drain` clone to drop. Returns false on timeout.
    pub async fn drain(mut self, deadline: Duration) -> bool {
        let _ = self.signal.send(true);
        self.live_tx.take();
        tokio::time::timeout(deadline, self.live_rx.recv()).await.is_ok()
    }
}

impl Drain {
    /// Resolves once shutdown has been signalled.
    pub async fn signaled(&self) {
        let mut rx = self.signal.clone();
        let _ = rx.wait_for(|v| *v).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// The next connection on `listener` (of `what`: inbound, outbound, ...), or `None` once
    /// shutdown is signalled. An accept error (out of file descriptors, say) is logged and
    /// retried after a pause, never fatal. Nagle's algorithm is off: every listener here answers
    /// requests, and HTTP/2 writes a response's HEADERS and DATA apart, so with it on the second
    /// waits for the peer's delayed ACK (40 ms per admission, BENCHMARKS.md).
    pub async fn accept(&self, listener: &TcpListener, what: &str) -> Option<(TcpStream, SocketAddr)> {
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        return Some((tcp, peer));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "{what} accept failed");
                        // Errors such as running out of file descriptors would otherwise turn
                        // the accept loop into a busy loop.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = self.signaled() => return None,
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
