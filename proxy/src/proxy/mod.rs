//! meshfleet-proxy: the mesh sidecar. Inbound takes mTLS from peers and forwards plaintext to the
//! local app; outbound takes plaintext from the app and forwards mTLS to destination proxies.
//! Its key is generated in memory at start and never written; its leaf comes from the controller.

pub mod admin;
pub mod balance;
pub mod detect;
pub mod discovery;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod intercept;
pub mod metrics;
pub mod outbound;
pub mod tcp;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::destination::Target;
use crate::drain::{self, DrainController};
use metrics::Metrics;
use outbound::Route;
use tls::{InboundAuth, TlsState};

/// The proxy's ports: inbound (mTLS), intercepted outbound, admin. The init step's defaults and
/// the injector's sidecar use the same.
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;

#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    #[arg(long, env = "MESHFLEET_PROXY_ADMIN_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)))]
    pub admin_addr: SocketAddr,
    /// Inbound (mTLS) listen address.
    #[arg(long, env = "MESHFLEET_PROXY_INBOUND_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], INBOUND_PORT)))]
    pub inbound_addr: SocketAddr,
    /// The local application's port that inbound traffic is forwarded to.
    #[arg(long, env = "MESHFLEET_PROXY_INBOUND_FORWARD", default_value = "127.0.0.1:8080")]
    pub inbound_forward: SocketAddr,
    /// Outbound route LISTEN=TARGET[#IDENTITY]; repeat for several destinations. With
    /// --destination, a TARGET without IDENTITY (a Service name such as
    /// web.apps.svc.cluster.local:80, or an IP) is resolved and balanced over its endpoints.
    #[arg(long = "outbound", env = "MESHFLEET_PROXY_OUTBOUND", value_delimiter = ',')]
    pub outbound: Vec<Route>,
    /// Listen here for outbound connections redirected by `meshfleet-proxy init` (its
    /// --outbound-port); each is routed by its original destination (see --route, --unmeshed).
    #[arg(long, env = "MESHFLEET_PROXY_OUTBOUND_INTERCEPT")]
    pub outbound_intercept: Option<SocketAddr>,
    /// Intercepted route ORIG_IP:PORT#IDENTITY: connections first addressed to ORIG go there over
    /// mTLS and the far end must prove IDENTITY; repeat for several destinations.
    #[arg(long = "route", env = "MESHFLEET_PROXY_ROUTE", value_delimiter = ',')]
    pub routes: Vec<intercept::InterceptRoute>,
    /// Intercepted connections whose destination has no --route: `forward` as plain TCP, or `refuse`.
    #[arg(long, value_enum, default_value = "forward")]
    pub unmeshed: intercept::Unmeshed,
    /// The controller's destination service, HOST:PORT (usually the controller's address):
    /// outbound targets without an identity and intercepted destinations without a --route are
    /// resolved through it.
    #[arg(long, env = "MESHFLEET_PROXY_DESTINATION_ADDR")]
    pub destination: Option<String>,
    /// Controller identity service, HOST:PORT.
    #[arg(long, env = "MESHFLEET_PROXY_CONTROLLER_ADDR")]
    pub controller_addr: String,
    #[arg(long, env = "MESHFLEET_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The identity the controller must prove; default spiffe://<trust-domain>/ns/meshfleet/sa/meshfleet-controller.
    #[arg(long, env = "MESHFLEET_PROXY_CONTROLLER_IDENTITY")]
    pub controller_identity: Option<String>,
    /// Trust anchors to start with (PEM); the controller's bundle stream replaces them live.
    #[arg(long, env = "MESHFLEET_PROXY_TRUST_ANCHORS")]
    pub trust_anchors: PathBuf,
    /// Proof of identity sent to the controller (a projected service-account token in Kubernetes).
    #[arg(long, env = "MESHFLEET_PROXY_TOKEN_FILE", default_value = "/var/run/secrets/tokens/meshfleet-identity")]
    pub token_file: PathBuf,
    /// `authenticated` (client certificate required) or `unauthenticated` (TLS required, certificate optional).
    #[arg(long, default_value = "authenticated")]
    pub inbound_auth: String,
    /// Only these client identities may connect inbound (repeatable); empty allows any authenticated peer.
    #[arg(long = "allow-identity", value_delimiter = ',')]
    pub allow_identities: Vec<String>,
    /// How long to wait for a client's first bytes before treating the stream as opaque TCP.
    #[arg(long, default_value_t = 1000)]
    pub detect_timeout_ms: u64,
    /// How long connections may take to finish after shutdown starts.
    #[arg(long, default_value_t = 10)]
    pub drain_timeout_secs: u64,
    /// Write {"admin", "inbound", "outbound": [..]} addresses here once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// The version this proxy reports (admin `/version`, `proxy_build_info`) [default: the
    /// build's]. Lets one binary play several releases (an upgrade's "current" and "next").
    #[arg(long, env = "MESHFLEET_VERSION_OVERRIDE")]
    pub version_override: Option<String>,
    /// TEST KNOB, never for production: answer this share (0 to 1) of inbound HTTP requests
    /// with 503 instead of forwarding them, to play a bad release. 0 (the default) is off.
    #[arg(long, env = "MESHFLEET_TEST_FAIL_SHARE", default_value_t = 0.0)]
    pub test_fail_share: f64,
    /// TEST KNOB, never for production: never report ready, to play a release that fails
    /// readiness.
    #[arg(long, env = "MESHFLEET_TEST_FAIL_READINESS")]
    pub test_fail_readiness: bool,
}

impl Config {
    /// The version the proxy reports.
    pub fn version(&self) -> &str {
        self.version_override.as_deref().unwrap_or(crate::VERSION)
    }
}

/// What every connection task shares.
pub struct Ctx {
    pub tls: Arc<TlsState>,
    pub metrics: Metrics,
    pub detect_timeout: Duration,
    pub inbound_forward: SocketAddr,
    pub inbound_target: String,
    pub allow: Vec<String>,
    /// The share of inbound HTTP requests failed on purpose (`--test-fail-share`).
    pub fail_share: f64,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if !(0.0..=1.0).contains(&config.test_fail_share) {
        problems.push(format!("--test-fail-share {}: expected a share from 0 to 1", config.test_fail_share));
    }
    if config.test_fail_share > 0.0 || config.test_fail_readiness {
        tracing::warn!(fail_share = config.test_fail_share, fail_readiness = config.test_fail_readiness, "test knobs on: this proxy fails on purpose");
    }
    let auth = match config.inbound_auth.as_str() {
        "authenticated" => InboundAuth::Authenticated,
        "unauthenticated" => InboundAuth::Unauthenticated,
        other => {
            problems.push(format!("--inbound-auth {other:?}: expected authenticated or unauthenticated"));
            InboundAuth::Authenticated
        }
    };
    for id in &config.allow_identities {
        if let Err(e) = id.parse::<meshfleet_pki::spiffe::WorkloadId>() {
            problems.push(format!("--allow-identity: {e}"));
        }
    }
    let bundle = std::fs::read(&config.trust_anchors)
        .map_err(|e| e.to_string())
        .and_then(|pem| meshfleet_pki::verify::TrustBundle::from_pem(&pem).map_err(|e| e.to_string()))
        .map_err(|e| problems.push(format!("--trust-anchors {}: {e}", config.trust_anchors.display())));
    if config.controller_addr.is_empty() {
        problems.push("--controller-addr is empty".into());
    }
    let bundle = match bundle {
        Ok(b) if problems.is_empty() => b,
        _ => return Err(crate::ConfigError(problems).into()),
    };
    let controller_id = config.controller_identity.clone().unwrap_or_else(|| format!("spiffe://{}/ns/meshfleet/sa/meshfleet-controller", config.trust_domain));
    // The key exists only in this process's memory: the CSR carries its public half.
    let key = meshfleet_pki::mint::new_key()?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let state = Arc::new(TlsState::new(key_der, bundle, auth, controller_id)?);
    let metrics = Metrics::new(config.version());

    let admin = TcpListener::bind(config.admin_addr).await.with_context(|| format!("binding the admin address {}", config.admin_addr))?;
    let inbound = TcpListener::bind(config.inbound_addr).await.with_context(|| format!("binding the inbound address {}", config.inbound_addr))?;
    let mut outbound = Vec::new();
    for route in &config.outbound {
        let l = TcpListener::bind(route.listen).await.with_context(|| format!("binding the outbound address {}", route.listen))?;
        outbound.push((l, Arc::new(route.clone())));
    }
    let intercept = match config.outbound_intercept {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding the outbound intercept address {addr}"))?),
        None => None,
    };
    let addrs = serde_json::json!({
        "admin": admin.local_addr()?.to_string(),
        "inbound": inbound.local_addr()?.to_string(),
        "outbound": outbound.iter().map(|(l, _)| l.local_addr().map(|a| a.to_string()).unwrap_or_default()).collect::<Vec<_>>(),
        "outbound_intercept": intercept.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
    });

    let tls_source = {
        let state = state.clone();
        Arc::new(move || state.controller_config()) as crate::identity::TlsSource
    };
    let channel = crate::identity::channel(&config.controller_addr, tls_source.clone())?;
    let resolver = match &config.destination {
        Some(addr) => Some(Arc::new(discovery::Resolver::new(crate::identity::channel(addr, tls_source.clone())?))),
        None => None,
    };
    let (issuer_tx, announced_issuer) = tokio::sync::watch::channel(String::new());
    let certifier = identity::Certifier {
        state: state.clone(),
        metrics: metrics.clone(),
        channel: channel.clone(),
        token_file: config.token_file.clone(),
        key,
        announced_issuer,
    };
    let background = [tokio::spawn(certifier.run()), tokio::spawn(identity::follow_bundle(state.clone(), metrics.clone(), channel, issuer_tx))];

    let ctx = Arc::new(Ctx {
        tls: state.clone(),
        metrics: metrics.clone(),
        detect_timeout: Duration::from_millis(config.detect_timeout_ms),
        inbound_forward: config.inbound_forward,
        inbound_target: config.inbound_forward.to_string(),
        allow: config.allow_identities.clone(),
        fail_share: config.test_fail_share,
    });
    let (drain_ctl, drain) = DrainController::new();
    let shutdown = Arc::new(Notify::new());
    tokio::spawn(crate::admin::serve(
        admin,
        admin::handler(state, metrics, shutdown.clone(), config.version().to_owned(), config.test_fail_readiness),
        drain.clone(),
    ));
    tokio::spawn(inbound::serve(inbound, ctx.clone(), drain.clone()));
    for (listener, route) in outbound {
        let discovered = match (&resolver, &route.identity) {
            (Some(resolver), None) => route.target.parse::<Target>().ok().map(|t| resolver.destination(t)),
            _ => None,
        };
        match discovered {
            Some(dest) => tokio::spawn(discovery::serve(listener, dest, ctx.clone(), drain.clone())),
            None => tokio::spawn(outbound::serve(listener, route, ctx.clone(), drain.clone())),
        };
    }
    if let Some(listener) = intercept {
        let table = Arc::new(intercept::Table::new(&config.routes, config.unmeshed, resolver.clone()));
        tokio::spawn(intercept::serve(listener, table, ctx.clone(), drain.clone()));
    }
    crate::ready::announce(config.ready_file.as_deref(), &addrs)?;
    tracing::info!(%addrs, "proxy listening");

    tokio::select! {
        _ = drain::os_signal() => {}
        _ = shutdown.notified() => {}
    }
    tracing::info!("draining");
    drop(drain);
    let clean = drain_ctl.drain(Duration::from_secs(config.drain_timeout_secs)).await;
    background.iter().for_each(|t| t.abort());
    tracing::info!(clean, "stopped");
    Ok(())
}
