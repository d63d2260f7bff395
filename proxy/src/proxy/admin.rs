//! The proxy's admin routes (default port 4191): metrics, readiness (503 until it holds a
//! certificate), liveness, version, identity JSON, and POST /shutdown from loopback only.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, StatusCode};
use tokio::sync::Notify;

use super::metrics::Metrics;
use super::tls::TlsState;
use crate::admin::{self, Handler};

pub fn handler(tls: Arc<TlsState>, metrics: Metrics, shutdown: Arc<Notify>) -> Handler {
    Arc::new(move |method: &Method, path: &str, peer: SocketAddr| match (method, path) {
        (&Method::GET, "/metrics") => admin::metrics(&metrics.registry),
        (&Method::GET, "/ready") => match tls.leaf() {
            Some(_) => admin::text(StatusCode::OK, "ready\n"),
            None => admin::text(StatusCode::SERVICE_UNAVAILABLE, "no certificate yet\n"),
        },
        (&Method::GET, "/live") => admin::text(StatusCode::OK, "live\n"),
        (&Method::GET, "/version") => admin::text(StatusCode::OK, format!("{}\n", crate::VERSION)),
        (&Method::GET, "/identity") => {
            let bundle = tls.bundle();
            let leaf = tls.leaf();
            admin::json(
                StatusCode::OK,
                &serde_json::json!({
                    "identity": leaf.as_ref().map(|l| l.identity.clone()),
                    "not_after_unix": leaf.as_ref().map(|l| l.not_after_unix),
                    "issuer": leaf.as_ref().map(|l| l.issuer.clone()),
                    "trust_bundle": { "version": bundle.version(), "anchors": bundle.fingerprints() },
                }),
            )
        }
        (&Method::POST, "/shutdown") if peer.ip().is_loopback() => {
            shutdown.notify_one();
            admin::text(StatusCode::OK, "shutting down\n")
        }
        (_, "/shutdown") if *method == Method::POST => admin::text(StatusCode::FORBIDDEN, "only from localhost\n"),
        (_, "/shutdown") => admin::text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n"),
        _ => admin::not_found(),
    })
}
