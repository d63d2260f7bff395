//! Configuration: defaults < TOML file (`--config`) < environment (`MESHFLEET_*`) < command
//! line, parsed into one typed struct. Every problem is collected and reported at once; the
//! binary exits with code 64 (EX_USAGE) on any of them. Secrets never appear in Debug output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// None: embedded SQLite under `data_dir`.
    pub database_url: Option<SecretString>,
    pub data_dir: PathBuf,
    /// Where users and agents reach the API; defaults to `http://<listen>`.
    pub public_url: Option<String>,
    /// Where agents reach the gateway; defaults to `https://<gateway_listen>`.
    pub gateway_address: Option<String>,
    pub agent_image: String,
    pub mesh_namespace: String,
    /// Base64 of 32 bytes. None: a key file in `data_dir`, created on first start.
    pub sealing_key: Option<SecretString>,
    pub log_format: LogFormat,
    pub log: String,
    /// An OpenTelemetry collector's OTLP/gRPC address (`http://collector:4317`); None: no trace export.
    pub otlp_endpoint: Option<String>,
    pub db_max_connections: u32,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub bootstrap_token_ttl: Duration,
    pub login_max_failures_per_account: u32,
    pub login_max_failures_per_address: u32,
    pub login_failure_window: Duration,
    /// Which parts this process runs: api, gateway, worker.
    pub roles: Roles,
    pub gateway_listen: SocketAddr,
    /// Names and addresses the gateway's server certificate covers.
    pub gateway_hostnames: Vec<String>,
    /// Serve the gateway with this certificate chain and key, and tell agents to pin this CA
    /// bundle, instead of the ones created and kept in the database. All three or none.
    pub gateway_tls_cert: Option<PathBuf>,
    pub gateway_tls_key: Option<PathBuf>,
    pub gateway_tls_ca: Option<PathBuf>,
    pub agent_cert_ttl: Duration,
    /// A connected agent unheard for this long is shown stale; for `disconnected_after_secs`, disconnected.
    pub stale_after: Duration,
    pub disconnected_after: Duration,
    /// After SIGTERM, how long open streams and requests may take to finish before the
    /// process exits anyway (everything acknowledged is already stored).
    pub shutdown_grace: Duration,
    /// How long per-minute metrics and events are kept (`metric_retention_hours`).
    pub metric_retention: Duration,
    /// How long resolved alerts, sent notifications with their delivery log, and expired
    /// silences are kept (`alert_retention_days`).
    pub alert_retention: Duration,
    /// Most reports stored in one transaction; 1 stores each report on its own.
    pub ingest_batch_max: usize,
    /// Writer tasks for reports (0: 1 on SQLite, 4 on PostgreSQL).
    pub ingest_writers: usize,
    /// Messages per second one cluster's agent may send, and the burst above that. Kept per
    /// cluster (not per stream), so reconnecting does not refill the burst.
    pub gateway_rate_per_sec: f64,
    pub gateway_rate_burst: f64,
    /// Connections one cluster's agent may open per minute, and the burst above that.
    pub gateway_connects_per_min: f64,
    pub gateway_connects_burst: f64,
    /// Quotas per cluster: distinct workloads with metrics (series), events accepted per
    /// minute, and the largest message of each kind, in bytes (`quota_bytes`).
    pub quota_series: u32,
    pub quota_events_per_min: u32,
    pub quota_bytes: QuotaBytes,
    /// How long a token's principal and a rendered page of the cluster list may be reused
    /// (ms); 0 turns these caches off. See `cache`.
    pub read_cache: Duration,
    /// How long a replica holds a background job's lease without renewing it, and how often it
    /// renews: a dead holder's jobs move to another replica within `job_lease_ms`.
    pub job_lease: Duration,
    pub job_lease_renew: Duration,
    /// Fleet health: the success rates below which a cluster is critical or degraded (and at
    /// which a degraded one recovers), and how long before expiry a certificate is a finding.
    pub health: crate::domain::health::Thresholds,
    /// How often alert rules are evaluated on every cluster's findings, and how long a firing
    /// alert's condition must stay gone before it resolves (so a flapping one does not notify
    /// on every flap).
    pub alert_evaluation: Duration,
    pub alert_resolve_delay: Duration,
    /// How often clusters under an automatic upgrade policy are looked at for a newer release
    /// to propose into a rollout.
    pub upgrade_proposals: Duration,
    /// Alert delivery: the delay before each attempt of a notification (the first is usually
    /// 0s; after the last, it has failed), hosts and networks admitted despite the SSRF guard,
    /// how long a receiver has to answer, and how long a rotated-out secret keeps signing.
    pub alert_retry_schedule: Vec<Duration>,
    pub alert_webhook_allow: crate::alerting::ssrf::Allow,
    pub alert_delivery_timeout: Duration,
    pub alert_secret_overlap: Duration,
    /// The mesh's PKI: lifetimes of generated trust anchors and of signed cluster issuers, the
    /// share of an issuer's lifetime left when it is signed again, and how often the
    /// `issuer-rotation` job looks for issuers that are due.
    pub anchor_lifetime: Duration,
    pub issuer_lifetime: Duration,
    pub issuer_renew_fraction: f64,
    pub issuer_rotation_check: Duration,
    /// Release catalog entries (YAML, `releases: [...]`) written to the catalog at start.
    pub release_catalog: Option<PathBuf>,
    /// SHA-256 (hex) of the token that opens the operator-only API (the catalog's writes);
    /// None: that API is closed. Only the hash is configured, so the setting reveals nothing.
    pub operator_token_sha256: Option<[u8; 32]>,
}

/// The largest agent message accepted per kind, in bytes (bounded above by the gRPC cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaBytes {
    pub snapshot: usize,
    pub delta: usize,
    pub metrics: usize,
    pub events: usize,
    pub command_result: usize,
}

impl QuotaBytes {
    /// The limit for a report kind as `gateway::ingest::Report::kind` names it.
    pub fn of(&self, kind: &str) -> usize {
        match kind {
            "snapshot" => self.snapshot,
            "delta" => self.delta,
            "metrics" => self.metrics,
            "events" => self.events,
            _ => self.command_result,
        }
    }
}

impl Default for QuotaBytes {
    fn default() -> Self {
        const MIB: usize = 1024 * 1024;
        // A snapshot of 100,000 pods needs most of the 4 MiB cap; a Metrics report of 10,000
        // workloads about 1 MiB; a command result carries up to 1 MiB of output.
        QuotaBytes { snapshot: 4 * MIB, delta: 4 * MIB, metrics: 2 * MIB, events: MIB, command_result: 2 * MIB }
    }
}

impl std::str::FromStr for QuotaBytes {
    type Err = String;
    /// `kind=bytes` pairs, comma-separated; kinds not named keep their default.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut q = QuotaBytes::default();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, n) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not kind=bytes"))?;
            let n: usize = n.trim().parse().map_err(|_| format!("{n:?} is not a number of bytes"))?;
            let slot = match kind.trim() {
                "snapshot" => &mut q.snapshot,
                "delta" => &mut q.delta,
                "metrics" => &mut q.metrics,
                "events" => &mut q.events,
                "command_result" => &mut q.command_result,
                other => return Err(format!("unknown kind {other:?}: expected snapshot, delta, metrics, events or command_result")),
            };
            *slot = n;
        }
        Ok(q)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub gateway: bool,
    pub worker: bool,
}

impl std::str::FromStr for Roles {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut roles = Roles { api: false, gateway: false, worker: false };
        for role in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "api" => roles.api = true,
                "gateway" => roles.gateway = true,
                "worker" => roles.worker = true,
                other => return Err(format!("unknown role {other:?}: expected api, gateway or worker")),
            }
        }
        if roles == (Roles { api: false, gateway: false, worker: false }) {
            return Err("name at least one role".into());
        }
        Ok(roles)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            data_dir: PathBuf::from("meshfleet-data"),
            public_url: None,
            gateway_address: None,
            agent_image: format!("meshfleet/meshfleet-agent:{}", env!("CARGO_PKG_VERSION")),
            mesh_namespace: meshfleet_pki::names::MESH_NAMESPACE.into(),
            sealing_key: None,
            log_format: LogFormat::Text,
            log: "info".into(),
            otlp_endpoint: None,
            db_max_connections: 16,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            bootstrap_token_ttl: Duration::from_secs(3600),
            login_max_failures_per_account: 5,
            login_max_failures_per_address: 20,
            login_failure_window: Duration::from_secs(15 * 60),
            roles: Roles { api: true, gateway: true, worker: true },
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            gateway_hostnames: vec!["localhost".into(), "127.0.0.1".into()],
            gateway_tls_cert: None,
            gateway_tls_key: None,
            gateway_tls_ca: None,
            agent_cert_ttl: Duration::from_secs(7 * 24 * 3600),
            stale_after: Duration::from_secs(30),
            disconnected_after: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(20),
            metric_retention: Duration::from_secs(7 * 24 * 3600),
            alert_retention: Duration::from_secs(90 * 24 * 3600),
            ingest_batch_max: 500,
            ingest_writers: 0,
            gateway_rate_per_sec: 50.0,
            gateway_rate_burst: 500.0,
            gateway_connects_per_min: 6.0,
            gateway_connects_burst: 10.0,
            quota_series: 2000,
            quota_events_per_min: 1000,
            quota_bytes: QuotaBytes::default(),
            read_cache: Duration::from_millis(1000),
            job_lease: Duration::from_millis(15_000),
            job_lease_renew: Duration::from_millis(5_000),
            health: Default::default(),
            alert_evaluation: Duration::from_secs(1),
            alert_resolve_delay: Duration::from_secs(10),
            upgrade_proposals: Duration::from_secs(30),
            alert_retry_schedule: schedule("0s,5s,5m,30m,2h,5h,10h,10h").expect("valid default"),
            alert_webhook_allow: Default::default(),
            alert_delivery_timeout: Duration::from_millis(15_000),
            alert_secret_overlap: Duration::from_secs(24 * 3600),
            anchor_lifetime: Duration::from_secs(365 * 24 * 3600),
            issuer_lifetime: Duration::from_secs(30 * 24 * 3600),
            issuer_renew_fraction: 0.5,
            issuer_rotation_check: Duration::from_secs(30),
            release_catalog: None,
            operator_token_sha256: None,
        }
    }
}

type Setter = fn(&mut Config, &str, &str) -> Result<(), String>;

/// Every setting, each named once: its name (in the environment upper-cased behind
/// `MESHFLEET_`; units in the name are parsed here, once) and how a value sets it. The README's
/// settings table lists exactly these (a test checks).
#[allow(clippy::unit_arg)] // `Ok(c.field = value?)` keeps each setting on one line.
pub const SETTINGS: &[(&str, Setter)] = &[
    ("listen", |c, _, v| Ok(c.listen = address(v, "127.0.0.1:8080")?)),
    ("database_url", |c, _, v| {
        if crate::db::Engine::of_url(v.trim()).is_none() {
            return Err("must start with sqlite: or postgres:".into());
        }
        Ok(c.database_url = Some(SecretString::from(v.trim().to_owned())))
    }),
    ("data_dir", |c, _, v| Ok(c.data_dir = PathBuf::from(nonempty(v)?))),
    ("public_url", |c, _, v| Ok(c.public_url = Some(nonempty(v)?.trim_end_matches('/').to_owned()))),
    ("gateway_address", |c, _, v| Ok(c.gateway_address = Some(nonempty(v)?.trim_end_matches('/').to_owned()))),
    ("agent_image", |c, _, v| Ok(c.agent_image = nonempty(v)?)),
    ("mesh_namespace", |c, _, v| {
        crate::domain::labels::validate_dns1123_label(v).map_err(|e| e.to_string())?;
        Ok(c.mesh_namespace = v.to_owned())
    }),
    ("sealing_key", |c, _, v| {
        crate::secrets::Sealer::from_base64(v).map_err(|e| e.to_string())?;
        Ok(c.sealing_key = Some(SecretString::from(v.trim().to_owned())))
    }),
    ("log_format", |c, _, v| {
        c.log_format = match v.trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(format!("{other:?} is not text or json")),
        };
        Ok(())
    }),
    ("log", |c, _, v| Ok(c.log = nonempty(v)?)),
    ("otlp_endpoint", |c, _, v| {
        let url: reqwest::Url = v.trim().parse().map_err(|e| format!("{e}: expected a URL such as http://collector:4317"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("expected an http:// or https:// URL such as http://collector:4317".into());
        }
        Ok(c.otlp_endpoint = Some(v.trim().to_owned()))
    }),
    ("db_max_connections", |c, _, v| Ok(c.db_max_connections = num(v)?)),
    ("access_token_ttl_secs", |c, n, v| Ok(c.access_token_ttl = secs(n, v)?)),
    ("refresh_token_ttl_secs", |c, n, v| Ok(c.refresh_token_ttl = secs(n, v)?)),
    ("bootstrap_token_ttl_secs", |c, n, v| Ok(c.bootstrap_token_ttl = secs(n, v)?)),
    ("login_max_failures_per_account", |c, _, v| Ok(c.login_max_failures_per_account = num(v)?)),
    ("login_max_failures_per_address", |c, _, v| Ok(c.login_max_failures_per_address = num(v)?)),
    ("login_failure_window_secs", |c, n, v| Ok(c.login_failure_window = secs(n, v)?)),
    ("roles", |c, _, v| Ok(c.roles = v.parse()?)),
    ("gateway_listen", |c, _, v| Ok(c.gateway_listen = address(v, "127.0.0.1:8443")?)),
    ("gateway_hostnames", |c, _, v| {
        c.gateway_hostnames = v.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect();
        if c.gateway_hostnames.is_empty() {
            return Err("name at least one host".into());
        }
        Ok(())
    }),
    ("gateway_tls_cert", |c, _, v| Ok(c.gateway_tls_cert = Some(PathBuf::from(nonempty(v)?)))),
    ("gateway_tls_key", |c, _, v| Ok(c.gateway_tls_key = Some(PathBuf::from(nonempty(v)?)))),
    ("gateway_tls_ca", |c, _, v| Ok(c.gateway_tls_ca = Some(PathBuf::from(nonempty(v)?)))),
    ("agent_cert_ttl_secs", |c, n, v| Ok(c.agent_cert_ttl = secs(n, v)?)),
    ("stale_after_secs", |c, n, v| Ok(c.stale_after = secs(n, v)?)),
    ("disconnected_after_secs", |c, n, v| Ok(c.disconnected_after = secs(n, v)?)),
    ("shutdown_grace_secs", |c, n, v| Ok(c.shutdown_grace = secs(n, v)?)),
    ("metric_retention_hours", |c, n, v| Ok(c.metric_retention = Duration::from_secs(3600) * positive(n, v)?)),
    ("alert_retention_days", |c, n, v| Ok(c.alert_retention = Duration::from_secs(86_400) * positive(n, v)?)),
    ("ingest_batch_max", |c, _, v| Ok(c.ingest_batch_max = num(v)?)),
    ("ingest_writers", |c, _, v| Ok(c.ingest_writers = num(v)?)),
    ("gateway_rate_per_sec", |c, _, v| Ok(c.gateway_rate_per_sec = num(v)?)),
    ("gateway_rate_burst", |c, _, v| Ok(c.gateway_rate_burst = num(v)?)),
    ("gateway_connects_per_min", |c, _, v| Ok(c.gateway_connects_per_min = num(v)?)),
    ("gateway_connects_burst", |c, _, v| Ok(c.gateway_connects_burst = num(v)?)),
    ("quota_series", |c, _, v| Ok(c.quota_series = num(v)?)),
    ("quota_events_per_min", |c, _, v| Ok(c.quota_events_per_min = num(v)?)),
    ("quota_bytes", |c, _, v| Ok(c.quota_bytes = v.parse()?)),
    ("read_cache_ms", |c, _, v| Ok(c.read_cache = Duration::from_millis(num(v)?))),
    ("job_lease_ms", |c, _, v| Ok(c.job_lease = Duration::from_millis(num(v)?))),
    ("job_lease_renew_ms", |c, _, v| Ok(c.job_lease_renew = Duration::from_millis(num(v)?))),
    ("health_critical_below", |c, _, v| Ok(c.health.critical_below = num(v)?)),
    ("health_degraded_below", |c, _, v| Ok(c.health.degraded_below = num(v)?)),
    ("health_recovered_at", |c, _, v| Ok(c.health.recovered_at = num(v)?)),
    ("health_expiry_warning_secs", |c, n, v| Ok(c.health.expiry_warning = secs(n, v)?)),
    ("health_clock_skew_secs", |c, n, v| Ok(c.health.clock_skew = secs(n, v)?)),
    ("alert_evaluation_ms", |c, _, v| Ok(c.alert_evaluation = Duration::from_millis(num(v)?))),
    ("upgrade_proposals_ms", |c, _, v| Ok(c.upgrade_proposals = Duration::from_millis(num(v)?))),
    ("alert_resolve_delay_ms", |c, _, v| Ok(c.alert_resolve_delay = Duration::from_millis(num(v)?))),
    ("alert_retry_schedule", |c, _, v| Ok(c.alert_retry_schedule = schedule(v)?)),
    ("alert_webhook_allow", |c, _, v| Ok(c.alert_webhook_allow = v.parse()?)),
    ("alert_delivery_timeout_ms", |c, _, v| Ok(c.alert_delivery_timeout = Duration::from_millis(num(v)?))),
    ("alert_secret_overlap_secs", |c, n, v| Ok(c.alert_secret_overlap = secs(n, v)?)),
    ("anchor_lifetime_secs", |c, n, v| Ok(c.anchor_lifetime = secs(n, v)?)),
    ("issuer_lifetime_secs", |c, n, v| Ok(c.issuer_lifetime = secs(n, v)?)),
    ("issuer_renew_fraction", |c, _, v| Ok(c.issuer_renew_fraction = num(v)?)),
    ("issuer_rotation_check_ms", |c, _, v| Ok(c.issuer_rotation_check = Duration::from_millis(num(v)?))),
    ("release_catalog", |c, _, v| Ok(c.release_catalog = Some(PathBuf::from(nonempty(v)?)))),
    ("operator_token_sha256", |c, _, v| {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(v.trim(), &mut hash).map_err(|_| "must be 64 hex digits (sha256sum of the operator token)".to_owned())?;
        Ok(c.operator_token_sha256 = Some(hash))
    }),
];

/// Comma-separated durations with a unit each: `0s,5s,5m,30m,2h,250ms`.
fn schedule(v: &str) -> Result<Vec<Duration>, String> {
    let parsed: Result<Vec<Duration>, String> = v
        .split(',')
        .map(str::trim)
        .map(|d| {
            let split = d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len());
            let n: u64 = d[..split].parse().map_err(|_| format!("{d:?} is not a duration like 5s"))?;
            match &d[split..] {
                "ms" => Ok(Duration::from_millis(n)),
                "s" => Ok(Duration::from_secs(n)),
                "m" => Ok(Duration::from_secs(n * 60)),
                "h" => Ok(Duration::from_secs(n * 3600)),
                _ => Err(format!("{d:?}: give a unit (ms, s, m or h)")),
            }
        })
        .collect();
    parsed.and_then(|s| if s.is_empty() { Err("name at least one attempt".into()) } else { Ok(s) })
}

fn num<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.trim().parse().map_err(|_| format!("{v:?} is not a valid number"))
}

fn positive(name: &str, v: &str) -> Result<u32, String> {
    match num::<u32>(v) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name}: {v:?} is not a positive whole number")),
    }
}

/// A positive number of seconds (the name says the unit: `_secs`).
fn secs(name: &str, v: &str) -> Result<Duration, String> {
    match num::<u64>(v) {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
        _ => Err(format!("{name}: {v:?} is not a positive number of seconds")),
    }
}

fn nonempty(v: &str) -> Result<String, String> {
    if v.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(v.trim().to_owned())
    }
}

fn address(v: &str, example: &str) -> Result<SocketAddr, String> {
    v.trim().parse().map_err(|_| format!("{v:?} is not an address like {example}"))
}

/// The process environment, behind a trait so tests pass a map instead of mutating it.
pub trait Env {
    fn vars(&self) -> Vec<(String, String)>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
    }
}

impl Env for Vec<(String, String)> {
    fn vars(&self) -> Vec<(String, String)> {
        self.clone()
    }
}

#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// `overrides` are command-line settings as (name, value), applied last.
    pub fn load(file: Option<&Path>, env: &dyn Env, overrides: &[(&str, String)]) -> Result<Config, ConfigErrors> {
        let mut settings: Vec<(String, String, String)> = Vec::new(); // (name, value, source)
        let mut errors = Vec::new();
        if let Some(path) = file {
            match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|s| s.parse::<toml::Table>().map_err(|e| e.to_string())) {
                Err(e) => errors.push(format!("config file {}: {e}", path.display())),
                Ok(table) => {
                    for (name, value) in table {
                        let source = format!("{name} (config file {})", path.display());
                        if !SETTINGS.iter().any(|(n, _)| *n == name) {
                            errors.push(format!("{source}: unknown setting"));
                            continue;
                        }
                        match value {
                            toml::Value::String(s) => settings.push((name, s, source)),
                            toml::Value::Integer(i) => settings.push((name, i.to_string(), source)),
                            toml::Value::Boolean(b) => settings.push((name, b.to_string(), source)),
                            other => errors.push(format!("{source}: expected a string or number, found {}", other.type_str())),
                        }
                    }
                }
            }
        }
        for (key, value) in env.vars() {
            if let Some(name) = key.strip_prefix("MESHFLEET_").map(str::to_lowercase) {
                if SETTINGS.iter().any(|(n, _)| *n == name) {
                    settings.push((name, value, format!("{key} (environment)")));
                }
            }
        }
        for (name, value) in overrides {
            settings.push((name.to_string(), value.clone(), format!("--{} (command line)", name.replace('_', "-"))));
        }

        let mut config = Config::default();
        for (name, value, source) in settings {
            if let Err(e) = config.set(&name, &value) {
                errors.push(format!("{source}: {e}"));
            }
        }
        errors.extend(config.check());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        match SETTINGS.iter().find(|(n, _)| *n == name) {
            Some((name, set)) => set(self, name, value),
            None => Err(format!("unknown setting {name}")),
        }
    }

    /// Checks that span settings or bound values.
    fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !(1..=1000).contains(&self.db_max_connections) {
            errors.push("db_max_connections: must be between 1 and 1000".to_owned());
        }
        let files = [&self.gateway_tls_cert, &self.gateway_tls_key, &self.gateway_tls_ca];
        if files.iter().any(|f| f.is_some()) && !files.iter().all(|f| f.is_some()) {
            errors.push("gateway_tls_cert, gateway_tls_key, gateway_tls_ca: give all three or none".to_owned());
        }
        for path in files.into_iter().flatten() {
            if !path.is_file() {
                errors.push(format!("gateway TLS file {}: not found", path.display()));
            }
        }
        if self.disconnected_after < self.stale_after {
            errors.push("disconnected_after_secs: must not be below stale_after_secs".to_owned());
        }
        if self.job_lease_renew.is_zero() || self.job_lease_renew >= self.job_lease {
            errors.push("job_lease_renew_ms: must be positive and below job_lease_ms".to_owned());
        }
        if self.upgrade_proposals.is_zero() {
            errors.push("upgrade_proposals_ms: must be positive".to_owned());
        }
        if self.alert_evaluation.is_zero() {
            errors.push("alert_evaluation_ms: must be positive".to_owned());
        }
        if !(self.issuer_renew_fraction > 0.0 && self.issuer_renew_fraction < 1.0) {
            errors.push("issuer_renew_fraction: must be above 0 and below 1".to_owned());
        }
        if self.issuer_rotation_check.is_zero() {
            errors.push("issuer_rotation_check_ms: must be positive".to_owned());
        }
        if !(1..=10_000).contains(&self.ingest_batch_max) {
            errors.push("ingest_batch_max: must be between 1 and 10000".to_owned());
        }
        if !(self.gateway_rate_per_sec > 0.0 && self.gateway_rate_burst >= 1.0) {
            errors.push("gateway_rate_per_sec and gateway_rate_burst: must be positive".to_owned());
        }
        if !(self.gateway_connects_per_min > 0.0 && self.gateway_connects_burst >= 1.0) {
            errors.push("gateway_connects_per_min and gateway_connects_burst: must be positive".to_owned());
        }
        if self.quota_series == 0 || self.quota_events_per_min == 0 {
            errors.push("quota_series and quota_events_per_min: must be at least 1".to_owned());
        }
        let b = self.quota_bytes;
        let cap = meshfleet_agent_protocol::MAX_MESSAGE_BYTES;
        if [b.snapshot, b.delta, b.metrics, b.events, b.command_result].iter().any(|n| !(1024..=cap).contains(n)) {
            errors.push(format!("quota_bytes: each kind's limit must be between 1024 and {cap} bytes"));
        }
        if self.login_max_failures_per_account == 0 || self.login_max_failures_per_address == 0 {
            errors.push("login_max_failures_per_*: must be at least 1".to_owned());
        }
        errors.extend(self.health.validate().err());
        errors
    }

    /// Where agents reach the gateway.
    pub fn gateway_address(&self) -> String {
        self.gateway_address.clone().unwrap_or_else(|| format!("https://{}", self.gateway_listen))
    }

    /// The public base URL of the API.
    pub fn public_url(&self) -> String {
        self.public_url.clone().unwrap_or_else(|| format!("http://{}", self.listen))
    }

    /// Settings that start fine but are likely wrong for how the process is deployed; logged
    /// as warnings at start-up. Pure, so each case is tested without starting a server.
    pub fn startup_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let postgres = self.database_url.as_ref().and_then(|u| crate::db::Engine::of_url(u.expose_secret())) == Some(crate::db::Engine::Postgres);
        if postgres && self.sealing_key.is_none() {
            warnings.push(format!(
                "sealing_key is not set: the key that seals private keys in PostgreSQL is the file {} on this machine; whoever copies it \
                 can unseal them, and every replica needs the same one. Supply it from your secret store instead: MESHFLEET_SEALING_KEY, \
                 or sealing_key in a --config file readable only by the service",
                self.data_dir.join("sealing.key").display()
            ));
        }
        // Reachable from elsewhere, yet telling users and agents to dial this machine itself.
        let exposed = !self.listen.ip().is_loopback() || (self.roles.gateway && !self.gateway_listen.ip().is_loopback());
        let handed_out =
            [("public_url", self.public_url.is_some(), self.public_url()), ("gateway_address", self.gateway_address.is_some(), self.gateway_address())];
        for (name, set, url) in handed_out {
            if exposed && names_this_machine_only(&url) {
                let origin = if set { "is set to" } else { "defaults to" };
                warnings.push(format!(
                    "{name} {origin} {url}, which only this machine can reach, but the service listens on {} (gateway {}): \
                     install manifests and links carry {url}; set {name} (MESHFLEET_{}) to the address others use",
                    self.listen,
                    self.gateway_listen,
                    name.to_uppercase()
                ));
            }
        }
        warnings
    }
}

pub use crate::domain::ms;

/// Whether a URL's host is a loopback or unspecified address (`127.0.0.1`, `[::1]`, `0.0.0.0`,
/// `localhost`): fine on a laptop, useless in an install manifest for another machine.
fn names_this_machine_only(url: &str) -> bool {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest).split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(host, _port)| host),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meshfleet.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nmesh_namespace = \"from-file\"\ndb_max_connections = 4\n").unwrap();
        let c = Config::load(Some(&file), &env(&[("MESHFLEET_MESH_NAMESPACE", "from-env"), ("MESHFLEET_TEST_POSTGRES_URL", "x")]), &[]).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.mesh_namespace, "from-env");
        assert_eq!(c.db_max_connections, 4);
        let c = Config::load(Some(&file), &env(&[]), &[("listen", "127.0.0.1:7000".into())]).unwrap();
        assert_eq!(c.listen.port(), 7000);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meshfleet.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let errs = Config::load(
            Some(&file),
            &env(&[("MESHFLEET_LISTEN", "nowhere"), ("MESHFLEET_LOG_FORMAT", "xml"), ("MESHFLEET_SEALING_KEY", "short")]),
            &[("database_url", "mysql://x".into())],
        )
        .unwrap_err();
        let text = errs.to_string();
        for needle in ["lisen", "MESHFLEET_LISTEN", "MESHFLEET_LOG_FORMAT", "MESHFLEET_SEALING_KEY", "--database-url"] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("short"), "a secret value was echoed:\n{text}");
    }

    fn warnings(pairs: &[(&str, &str)]) -> Vec<String> {
        Config::load(None, &env(pairs), &[]).unwrap().startup_warnings()
    }

    #[test]
    fn a_sealing_key_file_beside_postgresql_is_warned_about() {
        let pg = ("MESHFLEET_DATABASE_URL", "postgres://u@h/db");
        let key = ("MESHFLEET_SEALING_KEY", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        let w = warnings(&[pg]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("sealing_key is not set") && w[0].contains("meshfleet-data/sealing.key") && w[0].contains("MESHFLEET_SEALING_KEY"), "{w:?}");
        // Supplied from outside, or the embedded database (whose folder holds the key anyway).
        assert!(warnings(&[pg, key]).is_empty());
        assert!(warnings(&[]).is_empty());
        assert!(warnings(&[("MESHFLEET_DATABASE_URL", "sqlite:///var/lib/meshfleet/db")]).is_empty());
    }

    #[test]
    fn loopback_addresses_handed_out_by_an_exposed_listener_are_warned_about() {
        // The quickstart: everything on loopback, nothing to say.
        assert!(warnings(&[]).is_empty());
        // Listening everywhere with the defaults: both handed-out addresses are useless elsewhere.
        let w = warnings(&[("MESHFLEET_LISTEN", "0.0.0.0:8080"), ("MESHFLEET_GATEWAY_LISTEN", "0.0.0.0:8443")]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("public_url defaults to http://0.0.0.0:8080") && w[0].contains("MESHFLEET_PUBLIC_URL"), "{w:?}");
        assert!(w[1].contains("gateway_address defaults to https://0.0.0.0:8443") && w[1].contains("MESHFLEET_GATEWAY_ADDRESS"), "{w:?}");
        // An explicit loopback address is as useless.
        let w = warnings(&[
            ("MESHFLEET_LISTEN", "[::]:8080"),
            ("MESHFLEET_PUBLIC_URL", "http://localhost:8080"),
            ("MESHFLEET_GATEWAY_ADDRESS", "https://mesh.example.com:8443"),
        ]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("public_url is set to http://localhost:8080"), "{w:?}");
        // Real names: nothing to say.
        let named = [
            ("MESHFLEET_LISTEN", "0.0.0.0:8080"),
            ("MESHFLEET_PUBLIC_URL", "https://meshfleet.example.com"),
            ("MESHFLEET_GATEWAY_ADDRESS", "https://[2001:db8::1]:8443"),
        ];
        assert!(warnings(&named).is_empty());
        // Only the gateway exposed: it hands out its own address, but manifests still carry
        // the API's loopback URL to other machines.
        let w = warnings(&[("MESHFLEET_GATEWAY_LISTEN", "10.0.0.5:8443")]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("public_url defaults to http://127.0.0.1:8080"), "{w:?}");
    }

    #[test]
    fn hosts_that_name_only_this_machine() {
        for url in ["http://127.0.0.1:8080", "https://[::1]:8443", "http://0.0.0.0", "http://LOCALHOST:80/x", "https://[::]:1"] {
            assert!(names_this_machine_only(url), "{url}");
        }
        for url in ["https://meshfleet.example.com", "https://10.0.0.5:8443", "http://[2001:db8::1]:80", "https://localhost.example.com"] {
            assert!(!names_this_machine_only(url), "{url}");
        }
    }

    #[test]
    fn quota_bytes_name_kinds_and_stay_under_the_message_cap() {
        let c = Config::load(None, &env(&[("MESHFLEET_QUOTA_BYTES", "events=4096, metrics=65536")]), &[]).unwrap();
        assert_eq!((c.quota_bytes.events, c.quota_bytes.metrics, c.quota_bytes.snapshot), (4096, 65536, QuotaBytes::default().snapshot));
        for bad in ["events", "logs=10", "events=lots", "events=100", "snapshot=99999999"] {
            let errs = Config::load(None, &env(&[("MESHFLEET_QUOTA_BYTES", bad)]), &[]).unwrap_err().to_string();
            assert!(errs.contains("quota_bytes") || errs.contains("MESHFLEET_QUOTA_BYTES"), "{bad}: {errs}");
        }
    }

    #[test]
    fn the_readme_lists_every_setting_and_no_other() {
        let readme = include_str!("../../../README.md");
        let table = readme.split("| setting | default |").nth(1).expect("the README has a settings table");
        let mut listed: Vec<&str> =
            table.lines().skip(2).take_while(|l| l.starts_with('|')).flat_map(|l| l.split('|').nth(1).unwrap_or("").split('`').skip(1).step_by(2)).collect();
        let mut known: Vec<&str> = SETTINGS.iter().map(|(n, _)| *n).collect();
        listed.sort_unstable();
        known.sort_unstable();
        assert_eq!(listed, known);
    }

    #[test]
    fn durations_are_read_once_in_the_unit_their_name_says() {
        let c = Config::load(None, &env(&[("MESHFLEET_ACCESS_TOKEN_TTL_SECS", "90"), ("MESHFLEET_READ_CACHE_MS", "250")]), &[]).unwrap();
        assert_eq!((c.access_token_ttl, c.read_cache), (Duration::from_secs(90), Duration::from_millis(250)));
        assert_eq!(ms(c.access_token_ttl), 90_000);
        let c = Config::load(None, &env(&[("MESHFLEET_METRIC_RETENTION_HOURS", "48")]), &[]).unwrap();
        assert_eq!(c.metric_retention, Duration::from_secs(48 * 3600));
        assert!(Config::load(None, &env(&[("MESHFLEET_METRIC_RETENTION_HOURS", "0")]), &[]).is_err());
        for bad in ["0", "-5", "soon"] {
            let errs = Config::load(None, &env(&[("MESHFLEET_STALE_AFTER_SECS", bad)]), &[]).unwrap_err().to_string();
            assert!(errs.contains("stale_after_secs: ") && errs.contains("is not a positive number of seconds"), "{bad}: {errs}");
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = Config::load(None, &env(&[("MESHFLEET_DATABASE_URL", "postgres://u:hunter2@h/db")]), &[]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
