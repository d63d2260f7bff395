//! Serving the proxy injector: `POST /inject` over HTTPS (TLS 1.2/1.3, the certificate from
//! `--injector-cert`/`--injector-key`), answering AdmissionReview v1 JSON with
//! [`inject::review`]. The namespace's `meshfleet.io/inject` annotation is looked up here, when
//! the controller has a Kubernetes client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Namespace;
use prometheus::IntCounterVec;
use tokio::net::TcpListener;

use super::inject::{self, AdmissionReview, InjectConfig};

/// AdmissionReview bodies carry one Pod; the API server's own limit is 3 MiB per object.
const BODY_LIMIT: usize = 4 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole connection; the API server gives the webhook 5 s per call (timeoutSeconds).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
const NAMESPACE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Injector {
    pub config: InjectConfig,
    pub requests: IntCounterVec,
    /// For namespace lookups; without one, only pod annotations enable injection.
    pub kube: Option<kube::Client>,
}

/// The TLS configuration from PEM files (certificate chain, key).
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = meshfleet_pki::pem::certs_from_pem(&std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?)
        .with_context(|| format!("{}: no PEM certificates", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let key = meshfleet_pki::pem::key_from_pem(&key_pem).with_context(|| format!("{}: no PEM private key", key.display()))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the injector's certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub fn router(injector: Arc<Injector>) -> Router {
    Router::new().route("/inject", post(handle)).layer(DefaultBodyLimit::max(BODY_LIMIT)).with_state(injector)
}

async fn handle(State(injector): State<Arc<Injector>>, body: Bytes) -> Json<AdmissionReview> {
    let namespace = serde_json::from_slice::<AdmissionReview>(&body).ok().and_then(|r| r.request).and_then(|r| r.namespace);
    let namespace_injects = match (&injector.kube, namespace) {
        (Some(client), Some(ns)) => namespace_injects(client, &ns).await,
        _ => false,
    };
    let (review, outcome) = inject::review(&body, &injector.config, namespace_injects);
    injector.requests.with_label_values(&[outcome.label()]).inc();
    if let Some(warning) = review.response.as_ref().and_then(|r| r.warnings.first()) {
        tracing::warn!(%warning, "injector request not understood; allowed unchanged");
    }
    Json(review)
}

/// Whether the namespace is meshed, by label or annotation (the rule the agent applies too); a
/// failed lookup says no.
async fn namespace_injects(client: &kube::Client, name: &str) -> bool {
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    match tokio::time::timeout(NAMESPACE_LOOKUP_TIMEOUT, api.get(name)).await {
        Ok(Ok(ns)) => meshfleet_pki::names::namespace_injects(ns.metadata.labels.as_ref(), ns.metadata.annotations.as_ref()),
        Ok(Err(e)) => {
            tracing::warn!(namespace = name, error = %e, "injector: namespace lookup failed");
            false
        }
        Err(_) => {
            tracing::warn!(namespace = name, "injector: namespace lookup timed out");
            false
        }
    }
}

pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, injector: Arc<Injector>, drain: crate::drain::Drain) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let service = TowerToHyperService::new(router(injector));
    while let Some((tcp, peer)) = drain.accept(&listener, "injector").await {
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "injector TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "injector TLS handshake timed out"),
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "injector connection failed"),
                Err(_) => tracing::debug!(%peer, "injector connection closed after the timeout"),
                Ok(Ok(())) => {}
            }
        });
    }
}
