//! A small HTTP/1.1 admin server shared by both binaries (metrics, health, version). It serves
//! local operators and scrapers only; it never proxies traffic and never blocks the data path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::drain::Drain;

pub type Body = Full<Bytes>;

/// Routes a request: (method, path, peer address) -> response.
pub type Handler = Arc<dyn Fn(&Method, &str, SocketAddr) -> Response<Body> + Send + Sync>;

pub async fn serve(listener: TcpListener, handler: Handler, drain: Drain) {
    while let Some((tcp, peer)) = drain.accept(&listener, "admin").await {
        let handler = handler.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    // Bodies are never needed; read and drop them, bounded by hyper's limits.
                    let _ = http_body_util::Limited::new(body, 64 * 1024).collect().await;
                    Ok::<_, Infallible>(handler(&parts.method, parts.uri.path(), peer))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder().status(status).header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8").body(Full::new(body.into())).unwrap_or_default()
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap_or_default()
}

pub fn metrics(registry: &Registry) -> Response<Body> {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    Response::builder().header(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT).body(Full::new(Bytes::from(buf))).unwrap_or_default()
}

pub fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}
