//! Runs a simulated fleet: finds or creates `<prefix>-NNNN` clusters through the API, registers
//! each once (identities kept in the state dir), then runs one real gateway client per cluster
//! with a driver that reports drifting metrics, churn and warnings.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use meshfleet_client::{Client, Cluster};

use super::pki::{GatewayLink, MeshPki};
use super::{synthetic_cluster, SharedCluster, SimError};
use meshfleet_agent::client::now_ms;
use meshfleet_agent::{register, spawn, AgentHandle, ClientConfig, Identity, Report, Reporter};

pub enum Auth {
    Password { email: String, password: SecretString },
    Token(SecretString),
}

pub struct FleetConfig {
    pub api_url: String,
    pub auth: Auth,
    pub clusters: usize,
    pub prefix: String,
    pub state_dir: PathBuf,
    pub metrics_interval: Duration,
    pub status_interval: Duration,
    pub agent_version: String,
    /// Clusters prepared (created / registered) at once.
    pub setup_concurrency: usize,
    /// The share of clusters (0 to 1, chosen by name) on which an upgrade goes badly: once
    /// their workloads run another proxy version than at start, they fail 30% of requests.
    pub bad_upgrade_share: f64,
}

/// Where the gateway is, remembered so restarts need no new install manifest.
#[derive(Clone, Serialize, Deserialize)]
struct GatewayFile {
    gateway_address: String,
    ca_pem: String,
}

/// Totals over the fleet's clients.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetStatus {
    pub total: usize,
    pub connected: usize,
    pub sessions: u64,
    pub acked: u64,
    pub buffered: usize,
    pub dropped: u64,
    pub commands: u64,
    pub renewals: u64,
}

impl FleetStatus {
    pub fn collect<'a>(reporters: impl IntoIterator<Item = &'a Reporter>) -> Self {
        reporters.into_iter().map(Reporter::stats).fold(FleetStatus::default(), |mut f, s| {
            f.total += 1;
            f.connected += usize::from(s.connected);
            f.sessions += s.sessions;
            f.acked += s.last_acked_seq;
            f.buffered += s.buffered;
            f.dropped += s.dropped;
            f.commands += s.commands_executed;
            f.renewals += s.renewals;
            f
        })
    }
}

impl std::fmt::Display for FleetStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connected {}/{} | sessions {} | reports acked {} | buffered {} | dropped {} | commands {} | renewals {}",
            self.connected, self.total, self.sessions, self.acked, self.buffered, self.dropped, self.commands, self.renewals
        )
    }
}

/// Prepares the fleet, runs it until `shutdown` resolves, then shuts every client down
/// gracefully and returns the final totals.
pub async fn run(config: FleetConfig, shutdown: impl Future<Output = ()>) -> Result<FleetStatus, SimError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| SimError::Io { path: config.state_dir.clone(), source })?;
    let api = match &config.auth {
        Auth::Password { email, password } => Client::login(&config.api_url, email, password).await?,
        Auth::Token(t) => Client::with_token(&config.api_url, t.clone()),
    };
    let existing: HashMap<String, Cluster> = api.list_clusters().await?.into_iter().map(|c| (c.name.clone(), c)).collect();
    let gateway_path = config.state_dir.join("gateway.json");
    let gateway = Arc::new(Mutex::new(read_json::<GatewayFile>(&gateway_path)));
    let prepared: Vec<(usize, Cluster, Identity)> = futures::stream::iter(0..config.clusters)
        .map(|i| prepare(&config, &api, &existing, &gateway, i))
        .buffer_unordered(config.setup_concurrency.max(1))
        .try_collect()
        .await?;
    let saved = gateway.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let gw = match saved {
        Some(g) => g,
        None => {
            // Every identity was already saved but the gateway file is gone: learn it again.
            let b = api.bootstrap(&prepared.first().map(|p| p.1.id.clone()).unwrap_or_default()).await?;
            GatewayFile { gateway_address: b.gateway_address, ca_pem: b.ca_pem }
        }
    };
    write_json(&gateway_path, &gw)?;
    tracing::info!(clusters = prepared.len(), gateway = %gw.gateway_address, "starting simulated agents");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles: Vec<AgentHandle> = Vec::new();
    let mut drivers = Vec::new();
    for (i, cluster_ref, identity) in prepared {
        let name = format!("{}-{i:04}", config.prefix);
        let seed = seed_for(&cluster_ref.name);
        // From a generator of its own, so the knob changes nothing else about a cluster.
        let bad = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed ^ 0xBAD).gen_bool(config.bad_upgrade_share.clamp(0.0, 1.0));
        let mut synthetic = synthetic_cluster(seed).with_bad_upgrades(bad);
        // The issuer the service signed before a restart, as a real cluster keeps it.
        let pki_path = config.state_dir.join(format!("{name}.pki.json"));
        if let Some(pki) = MeshPki::load(&pki_path) {
            synthetic.adopt(pki, now_ms());
        }
        let cluster = SharedCluster::new(synthetic);
        let client_config = ClientConfig {
            agent_version: config.agent_version.clone(),
            identity_path: Some(identity_path(&config.state_dir, &name)),
            ..ClientConfig::new(&gw.gateway_address, &gw.ca_pem)
        };
        let handle = spawn(client_config, identity, Arc::new(cluster.clone()));
        cluster.link(GatewayLink { reporter: handle.reporter(), state_path: Some(pki_path) });
        drivers.push(tokio::spawn(drive(handle.reporter(), cluster, config.metrics_interval, stop_rx.clone())));
        handles.push(handle);
    }
    let reporters: Vec<Reporter> = handles.iter().map(AgentHandle::reporter).collect();
    let mut status = tokio::time::interval(config.status_interval.max(Duration::from_millis(100)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = status.tick() => println!("{}", FleetStatus::collect(&reporters)),
        }
    }
    let _ = stop_tx.send(true);
    for d in drivers {
        let _ = d.await;
    }
    futures::future::join_all(handles.into_iter().map(AgentHandle::shutdown)).await;
    Ok(FleetStatus::collect(&reporters))
}

/// Reports for one simulated cluster every `interval` (first tick at a random offset, so a
/// fleet started at once does not report in lockstep) until `stop` turns true.
pub async fn drive(reporter: Reporter, cluster: SharedCluster, interval: Duration, mut stop: watch::Receiver<bool>) {
    let interval = interval.max(Duration::from_millis(10));
    let offset = Duration::from_millis(rand::thread_rng().gen_range(0..=interval.as_millis() as u64));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            _ = ticks.tick() => {
                let now = now_ms();
                let mut reports = Vec::new();
                {
                    let mut c = cluster.lock();
                    reports.push(Report::Metrics(c.next_metrics(now)));
                    if let Some((delta, events)) = c.next_delta(now) {
                        reports.push(Report::Delta(delta));
                        reports.push(Report::Events(events));
                    }
                    reports.extend(c.next_warnings(now).map(Report::Events));
                }
                for r in reports {
                    reporter.report(r);
                }
            }
        }
    }
}

async fn prepare(
    config: &FleetConfig,
    api: &Client,
    existing: &HashMap<String, Cluster>,
    gateway: &Mutex<Option<GatewayFile>>,
    i: usize,
) -> Result<(usize, Cluster, Identity), SimError> {
    let name = format!("{}-{i:04}", config.prefix);
    let cluster = match existing.get(&name) {
        Some(c) => c.clone(),
        None => api.create_cluster(&name, &labels(i)).await?.cluster,
    };
    let path = identity_path(&config.state_dir, &name);
    match Identity::load(&path) {
        Ok(id) if id.cluster_id == cluster.id && id.not_after_unix_ms > now_ms() => return Ok((i, cluster, id)),
        Ok(_) => tracing::warn!(cluster = %name, "saved identity is expired or for another cluster; registering again"),
        Err(_) => {}
    }
    let b = api.bootstrap(&cluster.id).await?;
    *gateway.lock().unwrap_or_else(|e| e.into_inner()) = Some(GatewayFile { gateway_address: b.gateway_address.clone(), ca_pem: b.ca_pem.clone() });
    let id = register(&b.gateway_address, &b.ca_pem, b.token.expose_secret(), &config.agent_version).await?;
    id.save(&path)?;
    tracing::info!(cluster = %name, cluster_id = %cluster.id, "registered");
    Ok((i, cluster, id))
}

fn labels(i: usize) -> BTreeMap<String, String> {
    let env = match i % 10 {
        0..=4 => "prod",
        5..=7 => "staging",
        _ => "dev",
    };
    let regions = ["eu-west-1", "us-east-1", "us-west-2", "ap-southeast-1"];
    BTreeMap::from([
        ("env".to_owned(), env.to_owned()),
        ("region".to_owned(), regions[(i / 10) % regions.len()].to_owned()),
        ("meshfleet.io/simulated".to_owned(), "true".to_owned()),
    ])
}

fn identity_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.identity.json"))
}

/// A stable seed per cluster name (FNV-1a), so a restarted simulator shows the same clusters.
fn seed_for(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SimError> {
    std::fs::write(path, serde_json::to_vec_pretty(value).expect("serializes")).map_err(|source| SimError::Io { path: path.to_owned(), source })
}
