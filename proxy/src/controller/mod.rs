//! meshfleet-controller: the cluster's identity CA. Owns the current (issuer, bundle) pair,
//! reloads it from files without a restart, signs proxy leaves over gRPC and streams the bundle.
//! It never switches to a pair that fails validation, and writes key material only in `dev-certs`.

pub mod issuer;
pub mod metrics;
mod reload;
pub mod service;
pub mod tokenreview;
pub mod verifier;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use meshfleet_pki::mint::{self, CaProfile};
use meshfleet_pki::spiffe::WorkloadId;
use meshfleet_pki::verify::TrustBundle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::drain::{self, DrainController};
use issuer::Pair;
use metrics::Metrics;
use reload::{read_sources, serving_cert, watch_files, ServingCert};
use verifier::TokenVerifier;

#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// gRPC (TLS) listen address for the identity service.
    #[arg(long, env = "MESHFLEET_CONTROLLER_GRPC_ADDR", default_value = "0.0.0.0:8080")]
    pub grpc_addr: SocketAddr,
    /// Admin listen address: /metrics, /ready, /live, /version.
    #[arg(long, env = "MESHFLEET_CONTROLLER_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    pub admin_addr: SocketAddr,
    #[arg(long, env = "MESHFLEET_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Issuer certificate (PEM; extra certificates after the first are sent as its chain).
    #[arg(long, env = "MESHFLEET_ISSUER_CERT", default_value = "/var/run/meshfleet/issuer/tls.crt")]
    pub issuer_cert: PathBuf,
    #[arg(long, env = "MESHFLEET_ISSUER_KEY", default_value = "/var/run/meshfleet/issuer/tls.key")]
    pub issuer_key: PathBuf,
    /// Trust bundle: one or more anchor certificates, PEM.
    #[arg(long, env = "MESHFLEET_TRUST_BUNDLE", default_value = "/var/run/meshfleet/trust/ca-bundle.crt")]
    pub trust_bundle: PathBuf,
    /// Lifetime of signed proxy leaves, in seconds.
    #[arg(long, env = "MESHFLEET_LEAF_LIFETIME_SECS", default_value_t = 86400)]
    pub leaf_lifetime_secs: u64,
    /// How often the issuer and bundle files are re-read, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub reload_interval_ms: u64,
    /// `file` (tokens from --tokens-file) or `kubernetes` (TokenReview).
    #[arg(long, env = "MESHFLEET_TOKEN_VERIFIER", default_value = "kubernetes")]
    pub verifier: String,
    #[arg(long, env = "MESHFLEET_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Audience the projected service-account tokens must carry (TokenReview only).
    #[arg(long, default_value = "meshfleet-identity")]
    pub token_audience: String,
    /// The controller's own namespace and service account: its serving certificate's identity.
    #[arg(long, env = "MESHFLEET_CONTROLLER_NAMESPACE", default_value = "meshfleet")]
    pub namespace: String,
    #[arg(long, default_value = "meshfleet-controller")]
    pub service_account: String,
    /// Write {"grpc": addr, "admin": addr} here once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

impl Config {
    pub fn leaf_lifetime(&self) -> Duration {
        Duration::from_secs(self.leaf_lifetime_secs.max(1))
    }
}

pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    pub verifier: Arc<dyn TokenVerifier>,
    pub bundle_tx: watch::Sender<Arc<TrustBundle>>,
    pair: RwLock<Arc<Pair>>,
    serving: Arc<ServingCert>,
}

impl Shared {
    pub fn pair(&self) -> Arc<Pair> {
        self.pair.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let mut problems = Vec::new();
    let own_id = WorkloadId::new(&config.trust_domain, &config.namespace, &config.service_account)
        .map_err(|e| problems.push(format!("--trust-domain/--namespace/--service-account: {e}")));
    match (config.verifier.as_str(), &config.tokens_file) {
        ("file", None) => problems.push("--verifier file needs --tokens-file".into()),
        ("file", Some(_)) | ("kubernetes", _) => {}
        (other, _) => problems.push(format!("--verifier {other:?}: expected file or kubernetes")),
    }
    let own_id = match own_id {
        Ok(id) if problems.is_empty() => id,
        _ => return Err(crate::ConfigError(problems).into()),
    };
    let verifier: Arc<dyn TokenVerifier> = match &config.tokens_file {
        Some(path) if config.verifier == "file" => Arc::new(verifier::FileVerifier::new(path.clone())),
        _ => Arc::new(tokenreview::TokenReviewVerifier::from_env(vec![config.token_audience.clone()]).await.context("kubernetes client for TokenReview")?),
    };
    let sources = read_sources(&config)?;
    let pair = issuer::validate(&sources, SystemTime::now()).context("initial issuer and trust bundle")?;
    let own_lifetime = config.leaf_lifetime().max(Duration::from_secs(3600));
    let (cert, validity) = serving_cert(&pair, &own_id, own_lifetime)?;
    let serving = Arc::new(ServingCert { current: RwLock::new(cert), not_after: RwLock::new(validity) });
    metrics.issuer_expiry.set(pair.issuer.info.not_after_unix);
    metrics.bundle_anchors.set(pair.bundle.anchors().len() as i64);
    let (bundle_tx, _) = watch::channel(Arc::new(pair.bundle.clone()));
    let shared = Arc::new(Shared { config: config.clone(), metrics, verifier, bundle_tx, pair: RwLock::new(Arc::new(pair)), serving: serving.clone() });

    let grpc = TcpListener::bind(config.grpc_addr).await.with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
    let admin = TcpListener::bind(config.admin_addr).await.with_context(|| format!("binding the admin address {}", config.admin_addr))?;
    let addrs = serde_json::json!({"grpc": grpc.local_addr()?.to_string(), "admin": admin.local_addr()?.to_string()});
    let (drain_ctl, drain) = DrainController::new();

    tokio::spawn(crate::admin::serve(admin, admin_handler(shared.clone()), drain.clone()));
    tokio::spawn(watch_files(shared.clone(), sources, own_id, own_lifetime));
    let server = tokio::spawn(serve_grpc(grpc, shared.clone(), drain.clone()));
    crate::ready::announce(config.ready_file.as_deref(), &addrs)?;
    tracing::info!(%addrs, "controller ready");

    drain::os_signal().await;
    tracing::info!("shutting down");
    drop(drain);
    drain_ctl.drain(Duration::from_secs(5)).await;
    server.abort();
    Ok(())
}

async fn serve_grpc(listener: TcpListener, shared: Arc<Shared>, drain: crate::drain::Drain) {
    let mut tls = match rustls::ServerConfig::builder_with_provider(crate::tls::provider()).with_protocol_versions(&[&rustls::version::TLS13]) {
        Ok(b) => b.with_no_client_auth().with_cert_resolver(shared.serving.clone()),
        Err(e) => return tracing::error!(error = %e, "TLS config"),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    // Handshakes run in their own tasks so one slow client cannot stall the accept loop.
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "identity accept failed");
                    crate::drain::accept_backoff().await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "identity TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "identity TLS handshake timed out"),
                }
            });
        }
    });
    let svc = crate::identity::pb::identity_server::IdentityServer::new(service::IdentityService(shared));
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let result = tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(incoming, async move { drain.signaled().await }).await;
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server failed");
    }
}

fn admin_handler(shared: Arc<Shared>) -> crate::admin::Handler {
    use crate::admin;
    use http::{Method, StatusCode};
    Arc::new(move |method: &Method, path: &str, _peer| match (method, path) {
        (&Method::GET, "/metrics") => admin::metrics(&shared.metrics.registry),
        (&Method::GET, "/ready") | (&Method::GET, "/live") => admin::text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/version") => admin::text(StatusCode::OK, format!("{}\n", crate::VERSION)),
        _ => admin::not_found(),
    })
}

/// Writes a development anchor + issuer (and the bundle) into `dir`, for local runs.
pub fn write_dev_certs(dir: &std::path::Path) -> anyhow::Result<()> {
    let year = Duration::from_secs(365 * 86400);
    let anchor = mint::new_anchor(&CaProfile::new("meshfleet dev trust anchor", year))?;
    let issuer = mint::new_issuer(&anchor, &CaProfile::new("meshfleet dev issuer", year / 2))?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("anchor.crt"), &anchor.cert_pem)?;
    std::fs::write(dir.join("anchor.key"), &anchor.key_pem)?;
    std::fs::write(dir.join("ca-bundle.crt"), &anchor.cert_pem)?;
    std::fs::write(dir.join("issuer.crt"), &issuer.cert_pem)?;
    std::fs::write(dir.join("issuer.key"), &issuer.key_pem)?;
    Ok(())
}
