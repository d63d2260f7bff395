//! The proxy's admin routes (default port 4191): metrics, readiness (503 until it holds a
//! certificate), liveness, version, identity JSON (what the proxy is and trusts), and POST
//! /shutdown from loopback only.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, StatusCode};
use meshfleet_pki::pem::fingerprint;
use rustls::pki_types::UnixTime;
use tokio::sync::Notify;

use super::metrics::Metrics;
use super::tls::TlsState;
use crate::admin::{self, Handler};

/// `version` is the version it reports; `fail_readiness` (a test knob) makes it never ready.
pub fn handler(tls: Arc<TlsState>, metrics: Metrics, shutdown: Arc<Notify>, version: String, fail_readiness: bool) -> Handler {
    Arc::new(move |method: &Method, path: &str, peer: SocketAddr| match (method, path) {
        (&Method::GET, "/metrics") => admin::metrics(&metrics.registry),
        (&Method::GET, "/ready") if fail_readiness => admin::text(StatusCode::SERVICE_UNAVAILABLE, "never ready (--test-fail-readiness)\n"),
        (&Method::GET, "/ready") => match tls.leaf() {
            Some(_) => admin::text(StatusCode::OK, "ready\n"),
            None => admin::text(StatusCode::SERVICE_UNAVAILABLE, "no certificate yet\n"),
        },
        (&Method::GET, "/live") => admin::text(StatusCode::OK, "live\n"),
        (&Method::GET, "/version") => admin::text(StatusCode::OK, format!("{version}\n")),
        (&Method::GET, "/identity") => admin::json(StatusCode::OK, &identity(&tls)),
        (&Method::POST, "/shutdown") if peer.ip().is_loopback() => {
            shutdown.notify_one();
            admin::text(StatusCode::OK, "shutting down\n")
        }
        (_, "/shutdown") if *method == Method::POST => admin::text(StatusCode::FORBIDDEN, "only from localhost\n"),
        (_, "/shutdown") => admin::text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n"),
        _ => admin::not_found(),
    })
}

/// What the proxy is and trusts: its identity, the bundle in use, and its leaf (validity, the
/// issuer that signed it and the bundle anchor it chains to, null if none does now).
fn identity(tls: &TlsState) -> serde_json::Value {
    let bundle = tls.bundle();
    let leaf = tls.leaf();
    let leaf_json = leaf.as_ref().map(|l| {
        let anchor = l.chain.split_first().and_then(|(end, rest)| bundle.anchor_of(end, rest, UnixTime::now()));
        serde_json::json!({
            "not_before_unix": l.not_before_unix,
            "not_after_unix": l.not_after_unix,
            "issuer_fingerprint": (!l.issuer_fingerprint.is_empty()).then_some(&l.issuer_fingerprint),
            "anchor_fingerprint": anchor.map(|a| fingerprint(a)),
        })
    });
    serde_json::json!({
        "identity": leaf.as_ref().map(|l| l.identity.clone()),
        "not_after_unix": leaf.as_ref().map(|l| l.not_after_unix),
        "issuer": leaf.as_ref().map(|l| l.issuer.clone()),
        "trust_bundle": { "version": bundle.version(), "anchors": bundle.fingerprints() },
        "bundle_fingerprints": bundle.fingerprints(),
        "leaf": leaf_json,
    })
}
