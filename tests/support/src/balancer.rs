//! A TCP load balancer for tests with several replicas behind one address: each accepted
//! connection goes to the next backend round-robin that accepts a connection (a stopped one is
//! skipped), and bytes are copied both ways until either side closes. It never inspects or
//! retries what flows through: a backend dying mid-connection closes the client's connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

/// Listens on 127.0.0.1 until dropped; dropping it also closes every connection it carries.
pub struct Balancer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Balancer {
    /// Balances over `backends` on a new port of 127.0.0.1.
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        Balancer::start_on(0, backends).await
    }

    /// Balances over `backends` on 127.0.0.1:`port` (0: a new one).
    pub async fn start_on(port: u16, backends: Vec<SocketAddr>) -> Balancer {
        assert!(!backends.is_empty(), "a balancer needs a backend");
        // The backlog of the gateway (`meshfleet_server::gateway::bind`, not a dependency here)
        // and of a production balancer (HAProxy's is its maxconn): the default of 128 drops the
        // handshakes of thousands of agents reconnecting at once.
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(SocketAddr::from(([127, 0, 0, 1], port))).expect("bind the balancer");
        let listener = socket.listen(4096).expect("listen");
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(backends);
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            // Owned by this task, so aborting it ends the connections too.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let (backends, next) = (backends.clone(), next.clone());
                        connections.spawn(async move {
                            if let Some(backend) = connect(&backends, &next).await {
                                forward(client, backend).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Balancer { addr, task }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The next backend in turn that accepts a connection; None when none does.
async fn connect(backends: &[SocketAddr], next: &AtomicUsize) -> Option<TcpStream> {
    for _ in 0..backends.len() {
        let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(backend)).await {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
    }
    None
}

async fn forward(mut client: TcpStream, mut backend: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
}
