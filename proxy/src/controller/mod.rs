//! meshfleet-controller: the cluster's identity CA. Owns the current (issuer, bundle) pair,
//! follows it from files or the Kubernetes API without a restart, signs proxy leaves over gRPC
//! and streams the bundle. It never switches to a pair that fails validation, and writes key
//! material only in `dev-certs` (and prints it only in `install --dev-certs`).

pub mod destination;
pub mod inject;
pub mod install;
pub mod issuer;
pub mod metrics;
mod reload;
pub mod service;
pub mod source;
pub mod tokenreview;
pub mod verifier;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use meshfleet_pki::mint::{self, CaMaterial, CaProfile};
use meshfleet_pki::names;
use meshfleet_pki::spiffe::WorkloadId;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::drain::{self, DrainController};
use issuer::Pair;
use metrics::Metrics;
use reload::{ServingCert, Switch};
use source::IssuerSource;
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
    /// Where the issuer and trust bundle come from: `file` (the paths below, polled) or
    /// `kubernetes` (the Secret and ConfigMap below in --namespace, watched).
    #[arg(long, env = "MESHFLEET_ISSUER_SOURCE", value_enum, default_value_t = IssuerSource::File)]
    pub issuer_source: IssuerSource,
    /// The issuer Secret (`tls.crt`, `tls.key`) for `--issuer-source kubernetes`.
    #[arg(long, env = "MESHFLEET_ISSUER_SECRET", default_value = names::ISSUER_SECRET)]
    pub issuer_secret: String,
    /// The trust-bundle ConfigMap (`ca-bundle.crt`) for `--issuer-source kubernetes`.
    #[arg(long, env = "MESHFLEET_TRUST_BUNDLE_CONFIGMAP", default_value = names::TRUST_BUNDLE)]
    pub trust_bundle_configmap: String,
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
    /// How often the issuer and bundle files are re-read, in milliseconds (`file` source).
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
    /// The controller's own namespace and service account: its serving certificate's identity,
    /// and where the `kubernetes` source finds the issuer Secret and bundle ConfigMap.
    #[arg(long, env = "MESHFLEET_CONTROLLER_NAMESPACE", default_value = names::MESH_NAMESPACE)]
    pub namespace: String,
    #[arg(long, default_value = names::CONTROLLER_DEPLOYMENT)]
    pub service_account: String,
    /// The proxy injector's HTTPS listen address (`POST /inject`, AdmissionReview v1); no
    /// injector without it.
    #[arg(long, env = "MESHFLEET_INJECTOR_ADDR")]
    pub injector_addr: Option<SocketAddr>,
    /// The injector's serving certificate (PEM chain; the API server must trust its CA and it
    /// must name the controller's Service) and key. Read at start.
    #[arg(long, env = "MESHFLEET_INJECTOR_CERT", default_value = "/var/run/meshfleet/injector/tls.crt")]
    pub injector_cert: PathBuf,
    #[arg(long, env = "MESHFLEET_INJECTOR_KEY", default_value = "/var/run/meshfleet/injector/tls.key")]
    pub injector_key: PathBuf,
    /// The proxy image injected, without its tag.
    #[arg(long, env = "MESHFLEET_PROXY_IMAGE", default_value = "meshfleet/proxy")]
    pub proxy_image: String,
    /// The control plane's current proxy version: the injected image's tag unless a pod pins one
    /// [default: the version the controller reports].
    #[arg(long, env = "MESHFLEET_PROXY_VERSION")]
    pub proxy_version: Option<String>,
    /// The version the controller reports (admin `/version`, `controller_build_info`)
    /// [default: the build's]. Lets one binary play several releases (an upgrade's "current"
    /// and "next").
    #[arg(long, env = "MESHFLEET_VERSION_OVERRIDE")]
    pub version_override: Option<String>,
    /// The controller's gRPC address as injected proxies dial it
    /// [default: meshfleet-controller.<--namespace>.svc:8080].
    #[arg(long, env = "MESHFLEET_INJECTOR_CONTROLLER_ADDR")]
    pub injector_controller_addr: Option<String>,
    /// Serve discovery (`Resolve`): mirror Services, EndpointSlices and Pods cluster-wide, which
    /// needs list/watch on them (the install grants both). Off, `Resolve` is Unavailable.
    #[arg(long, env = "MESHFLEET_DISCOVERY")]
    pub discovery: bool,
    /// Write {"grpc": addr, "admin": addr[, "injector": addr]} here once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

impl Config {
    /// The version the controller reports.
    pub fn version(&self) -> &str {
        self.version_override.as_deref().unwrap_or(crate::VERSION)
    }

    /// The proxy version its injector injects.
    pub fn proxy_version(&self) -> &str {
        self.proxy_version.as_deref().unwrap_or(self.version())
    }

    pub fn leaf_lifetime(&self) -> Duration {
        Duration::from_secs(self.leaf_lifetime_secs.max(1))
    }
}

pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    pub verifier: Arc<dyn TokenVerifier>,
    /// The pair in use (None until the first valid one); bundle streams subscribe to it.
    current: watch::Sender<Option<Arc<Pair>>>,
    serving: Arc<ServingCert>,
}

impl Shared {
    pub fn pair(&self) -> Option<Arc<Pair>> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Pair>>> {
        self.current.subscribe()
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new(config.version());
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
    // One client for TokenReview and the issuer source, made only when either needs it.
    let kube = tokio::sync::OnceCell::new();
    let kube_client =
        || kube.get_or_try_init(|| async { kube::Client::try_default().await.context("kubernetes client (TokenReview, issuer source, discovery)") });
    let verifier: Arc<dyn TokenVerifier> = match &config.tokens_file {
        Some(path) if config.verifier == "file" => Arc::new(verifier::FileVerifier::new(path.clone())),
        _ => Arc::new(tokenreview::TokenReviewVerifier::new(kube_client().await?.clone(), vec![config.token_audience.clone()])),
    };
    let own_lifetime = config.leaf_lifetime().max(Duration::from_secs(3600));
    let (current, _) = watch::channel(None);
    let shared = Arc::new(Shared { config: config.clone(), metrics, verifier, current, serving: Arc::new(ServingCert::default()) });
    let own_identity = own_id.to_string();
    let mut switch = Switch::new(shared.clone(), own_id, own_lifetime);
    let (offers, offered) = mpsc::channel(16);
    let source = match config.issuer_source {
        IssuerSource::File => {
            // Files must hold a valid pair at start, as they always had to.
            let sources = source::files::read(&config)?;
            let pair = issuer::validate(&sources, SystemTime::now()).context("initial issuer and trust bundle")?;
            switch.install(sources, pair);
            tokio::spawn(source::files::poll(config.clone(), offers))
        }
        IssuerSource::Kubernetes => tokio::spawn(source::kubernetes::watch(kube_client().await?.clone(), config.clone(), offers)),
    };

    let grpc = TcpListener::bind(config.grpc_addr).await.with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
    let admin = TcpListener::bind(config.admin_addr).await.with_context(|| format!("binding the admin address {}", config.admin_addr))?;
    let mut addrs = serde_json::json!({"grpc": grpc.local_addr()?.to_string(), "admin": admin.local_addr()?.to_string()});
    let (drain_ctl, drain) = DrainController::new();
    if let Some(addr) = config.injector_addr {
        let tls = webhook::tls_config(&config.injector_cert, &config.injector_key)
            .map_err(|e| crate::ConfigError(vec![format!("--injector-cert/--injector-key: {e:#}")]))?;
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the injector address {addr}"))?;
        addrs["injector"] = listener.local_addr()?.to_string().into();
        let controller_addr = config
            .injector_controller_addr
            .clone()
            .unwrap_or_else(|| format!("{}.{}.svc:{}", names::CONTROLLER_DEPLOYMENT, config.namespace, install::GRPC_PORT));
        let inject_config = inject::InjectConfig {
            proxy_image: config.proxy_image.clone(),
            proxy_version: config.proxy_version().to_owned(),
            controller_addr,
            controller_identity: Some(own_identity),
            trust_domain: config.trust_domain.clone(),
            token_audience: config.token_audience.clone(),
        };
        // Namespace lookups need the API; without a client (local runs) only pod annotations count.
        let kube = match kube_client().await {
            Ok(client) => Some(client.clone()),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "injector: no Kubernetes client; namespace annotations are not looked up");
                None
            }
        };
        let injector = Arc::new(webhook::Injector { config: inject_config, requests: shared.metrics.injector_requests.clone(), kube });
        tokio::spawn(webhook::serve(listener, tls, injector, drain.clone()));
    }

    let (index, discovery) = if config.discovery {
        let (index, driver) = destination::Index::start(kube_client().await?.clone(), config.trust_domain.clone());
        (Some(index), Some(tokio::spawn(driver)))
    } else {
        (None, None)
    };

    let switch = tokio::spawn(switch.run(offered));
    tokio::spawn(crate::admin::serve(admin, admin_handler(shared.clone()), drain.clone()));
    let server = tokio::spawn(serve_grpc(grpc, shared.clone(), destination::DestinationService { index, metrics: shared.metrics.clone() }, drain.clone()));
    crate::ready::announce(config.ready_file.as_deref(), &addrs)?;
    tracing::info!(%addrs, source = ?config.issuer_source, "controller listening");

    drain::os_signal().await;
    tracing::info!("shutting down");
    source.abort();
    switch.abort();
    discovery.iter().for_each(|d| d.abort());
    drop(drain);
    drain_ctl.drain(Duration::from_secs(5)).await;
    server.abort();
    Ok(())
}

async fn serve_grpc(listener: TcpListener, shared: Arc<Shared>, destination: destination::DestinationService, drain: crate::drain::Drain) {
    let mut tls = match rustls::ServerConfig::builder_with_provider(crate::tls::provider()).with_protocol_versions(&[&rustls::version::TLS13]) {
        Ok(b) => b.with_no_client_auth().with_cert_resolver(shared.serving.clone()),
        Err(e) => return tracing::error!(error = %e, "TLS config"),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    // Handshakes run in their own tasks so one slow client cannot stall the accept loop.
    let accepting = drain.clone();
    tokio::spawn(async move {
        while let Some((tcp, peer)) = accepting.accept(&listener, "identity").await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
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
    let destination = crate::destination::pb::destination_server::DestinationServer::new(destination);
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let result = tonic::transport::Server::builder()
        .add_service(svc)
        .add_service(destination)
        .serve_with_incoming_shutdown(incoming, async move { drain.signaled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server failed");
    }
}

fn admin_handler(shared: Arc<Shared>) -> crate::admin::Handler {
    use crate::admin;
    use http::{Method, StatusCode};
    Arc::new(move |method: &Method, path: &str, _peer| match (method, path) {
        (&Method::GET, "/metrics") => admin::metrics(&shared.metrics.registry),
        // Ready only with a valid pair: before it, nothing can be signed or served.
        (&Method::GET, "/ready") => match shared.pair() {
            Some(_) => admin::text(StatusCode::OK, "ok\n"),
            None => admin::text(StatusCode::SERVICE_UNAVAILABLE, "no valid issuer and trust bundle yet\n"),
        },
        (&Method::GET, "/live") => admin::text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/version") => admin::text(StatusCode::OK, format!("{}\n", shared.config.version())),
        _ => admin::not_found(),
    })
}

/// Writes a development anchor + issuer (and the bundle) into `dir`, for local runs.
pub fn write_dev_certs(dir: &std::path::Path) -> anyhow::Result<()> {
    let (anchor, issuer) = dev_anchor_and_issuer()?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("anchor.crt"), &anchor.cert_pem)?;
    std::fs::write(dir.join("anchor.key"), &anchor.key_pem)?;
    std::fs::write(dir.join("ca-bundle.crt"), &anchor.cert_pem)?;
    std::fs::write(dir.join("issuer.crt"), &issuer.cert_pem)?;
    std::fs::write(dir.join("issuer.key"), &issuer.key_pem)?;
    Ok(())
}

/// A development trust anchor (a year) and an issuer it signed (half a year), for `dev-certs`
/// and `install --dev-certs`.
pub fn dev_anchor_and_issuer() -> anyhow::Result<(CaMaterial, CaMaterial)> {
    let year = Duration::from_secs(365 * 86400);
    let anchor = mint::new_anchor(&CaProfile::new("meshfleet dev trust anchor", year))?;
    let issuer = mint::new_issuer(&anchor, &CaProfile::new("meshfleet dev issuer", year / 2))?;
    Ok((anchor, issuer))
}
