//! The HTTP path shared by inbound and outbound: serve a detected HTTP/1.1 or HTTP/2 connection
//! with hyper, forward each request over one upstream connection of the same version, and record
//! the golden metrics. Upstream failures become 502 responses, never a dropped downstream.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;

use super::detect::Protocol;
use super::metrics::{ConnLabels, Metrics};
use super::tcp::BoxIo;
use crate::drain::Drain;

pub type RespBody = Either<Incoming, Full<Bytes>>;
pub type Connect = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<BoxIo>> + Send>> + Send + Sync>;

/// Largest request head accepted from a client; beyond it hyper answers 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long (re)connecting upstream may take before the request fails with 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

enum Sender {
    H1(client1::SendRequest<Incoming>),
    H2(client2::SendRequest<Incoming>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// One upstream connection, (re)opened on demand with `connect`.
pub struct Upstream {
    protocol: Protocol,
    connect: Connect,
    sender: Mutex<Option<Sender>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream connect failed: {0}")]
    Connect(#[from] std::io::Error),
    #[error("upstream HTTP error: {0}")]
    Http(#[from] hyper::Error),
}

impl Upstream {
    pub fn new(protocol: Protocol, connect: Connect) -> Self {
        Self { protocol, connect, sender: Mutex::new(None) }
    }

    async fn handshake(&self, io: BoxIo) -> Result<Sender, Error> {
        let io = TokioIo::new(io);
        Ok(match self.protocol {
            Protocol::Http2 => {
                let (s, conn) = client2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H2(s)
            }
            _ => {
                let (s, conn) = client1::handshake(io).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H1(s)
            }
        })
    }

    /// Installs an already-connected IO as the upstream connection.
    pub async fn prime(&self, io: BoxIo) -> Result<(), Error> {
        let s = self.handshake(io).await?;
        *self.sender.lock().await = Some(s);
        Ok(())
    }

    async fn open(&self) -> Result<Sender, Error> {
        let io = tokio::time::timeout(CONNECT_TIMEOUT, (self.connect)())
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        self.handshake(io).await
    }

    /// Opens the connection unless one is live, so a balancer can try another endpoint before
    /// it hands over a request (which cannot be taken back once sent).
    pub async fn connected(&self) -> Result<(), Error> {
        let mut guard = self.sender.lock().await;
        if guard.as_ref().is_none_or(|s| s.is_closed()) {
            *guard = Some(self.open().await?);
        }
        Ok(())
    }

    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, Error> {
        let mut guard = self.sender.lock().await;
        let sender = match guard.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.open().await?,
        };
        match sender {
            Sender::H2(s) => {
                *guard = Some(Sender::H2(s.clone()));
                drop(guard);
                let mut s = s;
                s.ready().await?;
                Ok(s.send_request(req).await?)
            }
            Sender::H1(mut s) => {
                s.ready().await?;
                let fut = s.send_request(req);
                *guard = Some(Sender::H1(s));
                // HTTP/1 carries one request at a time per connection; release the lock so the
                // wait for the response does not also block the next caller's reconnect check.
                drop(guard);
                Ok(fut.await?)
            }
        }
    }
}

pub type ResponseFuture<'a> = Pin<Box<dyn Future<Output = Result<Response<Incoming>, Error>> + Send + 'a>>;

/// Where a connection's requests go: one upstream connection, or a balancer over the endpoints
/// of a discovered destination (`discovery::Balanced`).
pub trait Dispatch: Send + Sync {
    fn dispatch(&self, req: Request<Incoming>) -> ResponseFuture<'_>;
}

impl Dispatch for Upstream {
    fn dispatch(&self, req: Request<Incoming>) -> ResponseFuture<'_> {
        Box::pin(self.send(req))
    }
}

/// Per-connection forwarding context.
pub struct Forward {
    pub metrics: Metrics,
    pub labels: ConnLabels,
    pub tls: &'static str,
    pub upstream: Box<dyn Dispatch>,
    /// The share of requests answered 503 without forwarding (the `--test-fail-share` test
    /// knob; 0 in production).
    pub fail_share: f64,
}

impl Forward {
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
        let authority = authority_label(&req);
        let l = &self.labels;
        let base = [l.direction, authority.as_str(), &l.target_addr, self.tls, &l.client_id, &l.server_id];
        self.metrics.request_total.with_label_values(&base).inc();
        strip_hop_by_hop(req.headers_mut());
        let start = Instant::now();
        let (status, resp) = if self.fail_share > 0.0 && rand::random::<f64>() < self.fail_share {
            let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(b"failed on purpose (--test-fail-share)\n"))));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            (StatusCode::SERVICE_UNAVAILABLE, resp)
        } else {
            match self.upstream.dispatch(req).await {
                Ok(resp) => {
                    let mut resp = resp.map(Either::Left);
                    strip_hop_by_hop(resp.headers_mut());
                    (resp.status(), resp)
                }
                Err(e) => {
                    tracing::debug!(error = %e, target = %l.target_addr, "forwarding failed");
                    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(b"upstream unavailable\n"))));
                    *resp.status_mut() = StatusCode::BAD_GATEWAY;
                    (StatusCode::BAD_GATEWAY, resp)
                }
            }
        };
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let code = status.as_str();
        let class = if status.is_server_error() { "failure" } else { "success" };
        let [a, b, c, d, e, f] = base;
        self.metrics.response_latency_ms.with_label_values(&[a, b, c, d, e, f, code]).observe(ms);
        self.metrics.response_total.with_label_values(&[a, b, c, d, e, f, code, class]).inc();
        Ok(resp)
    }
}

/// Serves one downstream HTTP connection until it closes or the proxy drains.
pub async fn serve(io: BoxIo, protocol: Protocol, fwd: Arc<Forward>, drain: Drain) {
    let svc = hyper::service::service_fn(move |req| fwd.clone().handle(req));
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = drain.signaled() => { conn.as_mut().graceful_shutdown(); conn.await }
            }
        }
        _ => {
            let conn = hyper::server::conn::http1::Builder::new().max_buf_size(MAX_HEAD_BYTES).header_read_timeout(None).serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = drain.signaled() => { conn.as_mut().graceful_shutdown(); conn.await }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Authority as a metric label: the URI's, else Host; odd values are dropped rather than letting a
/// client mint arbitrary label values.
fn authority_label<B>(req: &Request<B>) -> String {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_default();
    let ok = raw.len() <= 253 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    if ok {
        raw.to_ascii_lowercase()
    } else {
        String::new()
    }
}

const HOP_BY_HOP: &[&str] = &["keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    headers.remove(header::CONNECTION);
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}
