//! The running service: shared state, start-up (database, keys) and the HTTP server.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::{self, Clock, Db};
use crate::jwt::Keyring;
use crate::metrics::Metrics;
use crate::secrets::Sealer;
use crate::throttle::LoginThrottle;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: Db,
    pub sealer: Sealer,
    pub keys: Keyring,
    pub clock: Clock,
    pub throttle: LoginThrottle,
    pub metrics: Metrics,
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
            None => db::sqlite_url_in(&config.data_dir)
                .with_context(|| format!("creating data directory {}", config.data_dir.display()))?,
        };
        let db = Db::connect(&url, config.db_max_connections).await.context("opening the database")?;
        let sealer = match &config.sealing_key {
            Some(key) => Sealer::from_base64(key.expose_secret())?,
            None => {
                if db.engine == db::Engine::Postgres {
                    tracing::warn!("MESHFLEET_SEALING_KEY is not set: using a key file in the data directory; every replica must share one key");
                }
                local_sealing_key(&config.data_dir)?
            }
        };
        let clock = Clock::default();
        let keys = Keyring::load(&db, &sealer, clock.now_ms()).await.context("loading signing keys")?;
        let throttle = LoginThrottle::new(Duration::from_secs(config.login_failure_window_secs));
        Ok(AppState(Arc::new(Inner { config, db, sealer, keys, clock, throttle, metrics: Metrics::new() })))
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

/// A started server: its address, and a handle that stops it.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds `config.listen` (port 0 picks a free port) and serves in the background.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let state = AppState::build(config).await?;
        Self::serve(listener, state).await
    }

    pub async fn serve(listener: TcpListener, state: AppState) -> anyhow::Result<Server> {
        let addr = listener.local_addr()?;
        let app = crate::http::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
        });
        Ok(Server { addr, state, shutdown: Some(tx), task })
    }

    /// Waits until the server stops (after `stop` or a fatal error).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        (&mut self.task).await??;
        Ok(())
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    pub fn stop_signal(&mut self) -> Option<tokio::sync::oneshot::Sender<()>> {
        self.shutdown.take()
    }
}
