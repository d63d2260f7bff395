//! The running service: shared state, start-up (database, keys) and the HTTP server.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::{self, Clock, Db};
use crate::gateway::ingest::Ingest;
use crate::gateway::limits::Limits;
use crate::gateway::pki::Pki;
use crate::gateway::registry::Registry;
use crate::jwt::Keyring;
use crate::metrics::Metrics;
use crate::secrets::Sealer;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: Db,
    pub sealer: Sealer,
    pub keys: Keyring,
    pub clock: Arc<Clock>,
    pub metrics: Arc<Metrics>,
    pub pki: Pki,
    /// Agent streams open on this replica.
    pub agents: Registry,
    /// Per-cluster rate limits and quotas of the gateway on this replica.
    pub limits: Limits,
    pub ingest: Ingest,
    /// Notices to the other replicas (PostgreSQL).
    pub notifier: crate::gateway::dispatch::Notifier,
    /// The dashboard's per-organization fleet overview.
    pub fleet_cache: crate::fleet::FleetCache,
    pub read_cache: crate::cache::ReadCache,
    /// Alert notifications being sent by this replica, per channel.
    pub deliveries: crate::alerting::delivery::InFlight,
    /// Workloads' golden metrics as alert evaluation last read them.
    pub workload_samples: crate::alerting::rules::SampleMemo,
    /// Trust anchors ready to sign cluster issuers, and where signed issuers are recorded.
    pub signers: crate::gateway::issuer::Signers,
    pub issuer_log: crate::gateway::issuer::IssuerLog,
    /// The release catalog as this replica last read it.
    pub releases: crate::releases::ReleaseCache,
    /// Cancelled when the server starts to stop: the listeners stop accepting, and responses
    /// that never end by themselves (the dashboard's live updates) end, or a graceful stop
    /// would wait for them forever.
    pub stopping: tokio_util::sync::CancellationToken,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Opens the database (applying migrations), the sealing key and the signing keys.
    pub async fn build(config: Config) -> anyhow::Result<AppState> {
        let url = match &config.database_url {
            Some(url) => url.expose_secret().to_owned(),
            None => db::sqlite_url_in(&config.data_dir).with_context(|| format!("creating data directory {}", config.data_dir.display()))?,
        };
        for warning in config.startup_warnings() {
            tracing::warn!("{warning}");
        }
        let db = Db::connect(&url, config.db_max_connections).await.context("opening the database")?;
        let sealer = match &config.sealing_key {
            Some(key) => Sealer::from_base64(key.expose_secret())?,
            None => local_sealing_key(&config.data_dir)?,
        };
        let clock = Arc::new(Clock::default());
        let keys = Keyring::load(&db, &sealer, clock.now_ms()).await.context("loading signing keys")?;
        let mut pki = Pki::load_or_create(&db, &sealer, &config.gateway_hostnames, clock.now_ms()).await.context("loading the gateway PKI")?;
        if let (Some(cert), Some(key), Some(ca)) = (&config.gateway_tls_cert, &config.gateway_tls_key, &config.gateway_tls_ca) {
            pki.use_server_files(cert, key, ca).context("reading the gateway TLS files")?;
        }
        crate::releases::prepare(&db, config.release_catalog.as_deref(), clock.now_ms()).await?;
        let metrics = Arc::new(Metrics::new());
        let writers = match (config.ingest_writers, db.engine) {
            (0, db::Engine::Sqlite) => 1,
            (0, db::Engine::Postgres) => 4,
            (n, _) => n,
        };
        let quotas = crate::gateway::ingest::Quotas { series: config.quota_series };
        let ingest = Ingest::start(db.clone(), clock.clone(), metrics.clone(), writers, config.ingest_batch_max, quotas);
        let limits = Limits::new(&config);
        let read_cache = crate::cache::ReadCache::new(config.read_cache);
        let workload_samples = crate::alerting::rules::SampleMemo::new(config.alert_evaluation);
        let issuer_log = crate::gateway::issuer::IssuerLog::start(db.clone());
        let deliveries = crate::alerting::delivery::InFlight::start(db.clone());
        let notifier = crate::gateway::dispatch::Notifier::start(db.clone());
        Ok(AppState(Arc::new(Inner {
            config,
            db,
            sealer,
            keys,
            clock,
            metrics,
            pki,
            agents: Registry::default(),
            limits,
            ingest,
            notifier,
            fleet_cache: Default::default(),
            read_cache,
            deliveries,
            workload_samples,
            signers: Default::default(),
            issuer_log,
            releases: Default::default(),
            stopping: Default::default(),
        })))
    }
}

impl AppState {
    /// Cluster liveness now, by the `stale_after_secs` and `disconnected_after_secs` settings.
    pub fn liveness(&self) -> crate::domain::liveness::Liveness {
        crate::domain::liveness::Liveness::at(self.clock.now_ms(), self.config.stale_after, self.config.disconnected_after)
    }
}

/// The key-encryption key of a single-node install, kept beside the embedded database with
/// owner-only permissions.
fn local_sealing_key(dir: &Path) -> anyhow::Result<Sealer> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("sealing.key");
    if !path.exists() {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        use std::io::Write;
        match options.open(&path) {
            Ok(mut file) => file.write_all(Sealer::generate_key().as_bytes())?,
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    let key = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Sealer::from_base64(&key).with_context(|| format!("{} is not a valid sealing key", path.display()))
}

/// A started server: its addresses, and a handle that stops it.
pub struct Server {
    /// The HTTP listener: the API (with the `api` role) and always the operational endpoints.
    pub addr: SocketAddr,
    /// The agent gateway, with the `gateway` role.
    pub gateway_addr: Option<SocketAddr>,
    pub state: AppState,
    /// Dropped (by `stop`, or by whoever took it with `stop_signal`), it stops the server.
    stop: Option<tokio_util::sync::DropGuard>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    jobs: Option<crate::jobs::Jobs>,
}

impl Server {
    /// Binds `config.listen` and (with the gateway role) `config.gateway_listen` (port 0
    /// picks a free port), and serves in the background.
    pub async fn start(mut config: Config) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding the API address {} (listen)", config.listen))?;
        let gateway = match config.roles.gateway {
            true => Some(
                crate::gateway::bind(config.gateway_listen)
                    .with_context(|| format!("binding the gateway address {} (gateway_listen)", config.gateway_listen))?,
            ),
            false => None,
        };
        let addr = listener.local_addr()?;
        let gateway_addr = gateway.as_ref().map(|g| g.local_addr()).transpose()?;
        // Port 0 resolved: default public addresses (API, gateway) name the real ports.
        config.listen = addr;
        if let Some(gateway_addr) = gateway_addr {
            config.gateway_listen = gateway_addr;
        }
        let state = AppState::build(config).await?;
        let stop = state.stopping.clone().drop_guard();
        let stopped = || state.stopping.clone().cancelled_owned();
        let mut tasks = Vec::new();
        let app = crate::http::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let http_stopped = stopped();
        // As on the gateway: a response written in parts (a streamed page, server-sent events)
        // must not wait out the client's delayed ACK.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        tasks.push(tokio::spawn(async move { Ok(axum::serve(listener, app).with_graceful_shutdown(http_stopped).await?) }));
        if let Some(listener) = gateway {
            tasks.push(tokio::spawn(crate::gateway::serve(state.clone(), listener, stopped())));
        }
        // Every role keeps caches that other replicas' changes make stale, so every replica
        // runs the notification listener (`jobs::registered`), not only the gateway.
        let jobs = crate::jobs::Jobs::start(&state, crate::jobs::registered(&state));
        Ok(Server { addr, gateway_addr, state, stop: Some(stop), tasks, jobs: Some(jobs) })
    }

    /// Waits until the server stops (after `stop` or a fatal error).
    /// Background jobs are stopped once the listeners have stopped.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for task in self.tasks.drain(..) {
            result = task.await.map_err(anyhow::Error::from).and_then(|r| r);
            if result.is_err() {
                break;
            }
        }
        let stopping = std::time::Instant::now();
        if let Some(jobs) = self.jobs.take() {
            jobs.stop().await;
        }
        tracing::info!(target: "meshfleet_server::shutdown", jobs_ms = stopping.elapsed().as_millis() as u64, "listeners closed, background jobs stopped");
        result
    }

    /// The background jobs still running (empty once `stop` has returned).
    pub fn running_jobs(&self) -> crate::jobs::Running {
        self.jobs.as_ref().map(|j| j.running()).unwrap_or_default()
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stop.take());
        self.wait().await
    }

    /// Drop it to stop the server.
    pub fn stop_signal(&mut self) -> Option<tokio_util::sync::DropGuard> {
        self.stop.take()
    }
}
