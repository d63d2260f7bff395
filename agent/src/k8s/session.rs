//! The leader's session: load (or register once and store) the identity, run the gateway client
//! with this cluster as its `Agent`, and pump Deltas, events and metrics into it. It starts when
//! this replica becomes leader and stops as soon as it is not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ::kube::api::{Api, PostParams};
use ::kube::runtime::watcher::{self, watcher, Event};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Client, ResourceExt};
use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as KubeEvent, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use meshfleet_agent_protocol::v1;
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::commands::Executor;
use super::config::{AgentConfig, IDENTITY_KEY, IDENTITY_SECRET};
use super::inventory::{ChangedPods, Inventory, MeshedPod};
use super::metrics::Scraper;
use super::telemetry::Telemetry;
use super::Error;
use crate::{AgentHandle, ClientConfig, Identity, Report, Reporter};

/// What the service was last told, so Deltas carry only changes. The client's snapshot on
/// every (re)connect resets it.
#[derive(Default)]
struct LastSent {
    pods: HashMap<String, v1::Pod>,
    facts: Option<v1::Inventory>,
}

struct KubeAgent {
    inventory: Arc<Inventory>,
    executor: Arc<Executor>,
    last: Arc<Mutex<LastSent>>,
}

impl crate::Agent for KubeAgent {
    fn kubernetes_version(&self) -> String {
        self.inventory.kubernetes_version()
    }

    fn snapshot(&self) -> v1::Inventory {
        let inv = self.inventory.snapshot();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.pods = inv.pods.iter().map(|p| (format!("{}/{}", p.namespace, p.name), p.clone())).collect();
        last.facts = Some(v1::Inventory { pods: Vec::new(), ..inv.clone() });
        inv
    }

    fn execute(&self, id: String, command: v1::command::Body) -> BoxFuture<'static, v1::CommandResult> {
        self.executor.execute(id, command)
    }
}

/// A running session: the gateway client, its pumps, and what it last told the service.
struct Session {
    handle: AgentHandle,
    tasks: Vec<JoinHandle<()>>,
    last: Arc<Mutex<LastSent>>,
}

#[derive(Default)]
pub struct Slot {
    current: Mutex<Option<Session>>,
}

impl Slot {
    pub fn stats(&self) -> Option<crate::Stats> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.handle.stats())
    }

    /// The pods as the session last reported them (in a Snapshot or a Delta), sorted by key.
    pub fn reported_pods(&self) -> Option<Vec<v1::Pod>> {
        let last = self.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.last.clone())?;
        let last = last.lock().unwrap_or_else(|e| e.into_inner());
        let mut pods: Vec<(&String, &v1::Pod)> = last.pods.iter().collect();
        pods.sort_by_key(|(k, _)| *k);
        Some(pods.into_iter().map(|(_, p)| p.clone()).collect())
    }

    pub async fn stop(&self) {
        let taken = self.current.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(Session { handle, tasks, .. }) = taken {
            for t in tasks {
                t.abort();
            }
            handle.shutdown().await;
        }
    }
}

/// Follows leadership: starts a session on becoming leader, stops it on losing it.
pub async fn supervise(
    config: AgentConfig,
    client: Client,
    inventory: Arc<Inventory>,
    telemetry: Telemetry,
    mut leader: watch::Receiver<bool>,
    slot: Arc<Slot>,
) {
    // The certificate chain stored in the Secret, to notice renewals.
    let mut stored: Option<String> = None;
    loop {
        let leading = *leader.borrow_and_update();
        telemetry.leader.set(i64::from(leading));
        let running = slot.current.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        if leading && !running {
            match start_session(&config, &client, &inventory, &telemetry).await {
                Ok(s) => {
                    stored = Some(s.handle.identity().chain_pem);
                    *slot.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not start the gateway session; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    continue;
                }
            }
        } else if !leading && running {
            tracing::info!("lost leadership; stopping the gateway session");
            slot.stop().await;
        }
        let mut renewal_check = tokio::time::interval(std::time::Duration::from_secs(30));
        renewal_check.tick().await;
        loop {
            tokio::select! {
                changed = leader.changed() => {
                    if changed.is_err() {
                        slot.stop().await;
                        return;
                    }
                    break;
                }
                _ = renewal_check.tick() => {
                    let current = slot.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.handle.identity());
                    if let Some(id) = current.filter(|id| stored.as_deref() != Some(id.chain_pem.as_str())) {
                        match save_identity(&client, &config.pod_namespace, &id).await {
                            Ok(()) => stored = Some(id.chain_pem.clone()),
                            Err(e) => tracing::warn!(error = %e, "could not store the renewed identity"),
                        }
                    }
                }
            }
        }
    }
}

async fn load_or_register(config: &AgentConfig, client: &Client) -> Result<Identity, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.pod_namespace);
    if let Some(s) = secrets.get_opt(IDENTITY_SECRET).await? {
        let bytes = s.data.as_ref().and_then(|d| d.get(IDENTITY_KEY)).map(|b| b.0.clone()).unwrap_or_default();
        return Identity::from_json(&bytes).map_err(|e| Error::BadIdentity(IDENTITY_SECRET.into(), e.to_string()));
    }
    let token = config.bootstrap_token.as_ref().ok_or_else(|| Error::NoBootstrapToken(IDENTITY_SECRET.into()))?;
    let identity = crate::register(&config.gateway_address, &config.gateway_ca_pem, token.expose_secret(), env!("CARGO_PKG_VERSION")).await?;
    let secret = Secret {
        metadata: ObjectMeta { name: Some(IDENTITY_SECRET.into()), ..Default::default() },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(IDENTITY_KEY.to_owned(), ByteString(identity.to_json()))])),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        // The Secret appeared since it was read (another replica, or a retried request): the
        // identity just issued is the valid one (the token is single use), so it replaces it.
        Err(e) if super::conflict::is_conflict(&e) => save_identity(client, &config.pod_namespace, &identity).await?,
        Err(e) => return Err(e.into()),
    }
    tracing::info!(cluster = %identity.cluster_id, "registered; identity stored in Secret {IDENTITY_SECRET}");
    Ok(identity)
}

async fn start_session(config: &AgentConfig, client: &Client, inventory: &Arc<Inventory>, telemetry: &Telemetry) -> Result<Session, Error> {
    let identity = load_or_register(config, client).await?;
    let executor = Arc::new(Executor { client: client.clone(), config: config.clone(), inventory: inventory.clone(), reporter: Mutex::new(None) });
    let last = Arc::new(Mutex::new(LastSent::default()));
    let agent = Arc::new(KubeAgent { inventory: inventory.clone(), executor: executor.clone(), last: last.clone() });
    let handle = crate::spawn(ClientConfig::new(&config.gateway_address, &config.gateway_ca_pem), identity, agent);
    let reporter = handle.reporter();
    *executor.reporter.lock().unwrap_or_else(|e| e.into_inner()) = Some(reporter.clone());
    let tasks = vec![
        tokio::spawn(pump(config.clone(), inventory.clone(), last.clone(), reporter.clone(), telemetry.clone())),
        tokio::spawn(warnings(client.clone(), inventory.clone(), reporter.clone(), telemetry.clone())),
        tokio::spawn(scrape(config.clone(), inventory.clone(), reporter.clone(), telemetry.clone())),
    ];
    Ok(Session { handle, tasks, last })
}

/// Debounced Deltas (changed pods, removed pods, changed facts) and proxy-restart events.
/// Each round looks only at the pods the watchers changed since the previous one (all of them
/// after a relist or at the start of a session), so following churn in a large cluster costs
/// O(changes), not O(pods), per Delta.
async fn pump(config: AgentConfig, inventory: Arc<Inventory>, last: Arc<Mutex<LastSent>>, reporter: Reporter, telemetry: Telemetry) {
    // Pod key -> (uid, proxy restarts) as last seen; a restart is reported only for the same pod
    // (uid), so a pod recreated under its name does not count as one.
    let mut restarts: HashMap<String, (String, u32)> = HashMap::new();
    inventory.mark_all_pods_changed();
    loop {
        inventory.changed.notified().await;
        tokio::time::sleep(config.debounce).await;
        let changes = inventory.take_pod_changes();
        let facts = inventory.facts();
        telemetry.pods.set(inventory.lock().pods.len() as i64);
        let mut events = Vec::new();
        let delta = {
            let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
            let mut upserted: Vec<v1::Pod> = Vec::new();
            let mut removed: Vec<v1::PodRef> = Vec::new();
            match changes {
                ChangedPods::All(pods) => {
                    for (k, p) in &pods {
                        saw(&mut restarts, &mut events, k, p);
                    }
                    restarts.retain(|k, _| pods.contains_key(k));
                    removed.extend(
                        l.pods.iter().filter(|(k, _)| !pods.contains_key(*k)).map(|(_, p)| v1::PodRef { namespace: p.namespace.clone(), name: p.name.clone() }),
                    );
                    for r in &removed {
                        l.pods.remove(&format!("{}/{}", r.namespace, r.name));
                    }
                    for (k, p) in pods {
                        if l.pods.get(&k) != Some(&p.pod) {
                            upserted.push(p.pod.clone());
                            l.pods.insert(k, p.pod);
                        }
                    }
                }
                ChangedPods::Some(changed) => {
                    for (k, p) in changed {
                        match p {
                            Some(p) => {
                                saw(&mut restarts, &mut events, &k, &p);
                                if l.pods.get(&k) != Some(&p.pod) {
                                    upserted.push(p.pod.clone());
                                    l.pods.insert(k, p.pod);
                                }
                            }
                            None => {
                                restarts.remove(&k);
                                if let Some(p) = l.pods.remove(&k) {
                                    removed.push(v1::PodRef { namespace: p.namespace, name: p.name });
                                }
                            }
                        }
                    }
                }
            }
            let facts_changed = l.facts.as_ref() != Some(&facts);
            if facts_changed {
                l.facts = Some(facts.clone());
            }
            (!upserted.is_empty() || !removed.is_empty() || facts_changed).then(|| v1::Delta {
                upserted_pods: upserted,
                removed_pods: removed,
                facts: facts_changed.then_some(facts),
            })
        };
        if let Some(d) = delta {
            telemetry.reports.with_label_values(&["delta"]).inc();
            reporter.report(Report::Delta(d));
        }
        if !events.is_empty() {
            telemetry.reports.with_label_values(&["events"]).inc();
            reporter.report(Report::Events(v1::Events { events }));
        }
    }
}

/// Remembers a pod's proxy restarts and queues an event when they grew for the same pod (uid).
fn saw(restarts: &mut HashMap<String, (String, u32)>, events: &mut Vec<v1::Event>, key: &str, p: &MeshedPod) {
    let before = restarts.insert(key.to_owned(), (p.uid.clone(), p.proxy_restarts));
    if before.is_some_and(|(uid, b)| uid == p.uid && p.proxy_restarts > b) {
        events.push(v1::Event {
            id: format!("{}/proxy-restart/{}", p.uid, p.proxy_restarts),
            at_unix_ms: crate::client::now_ms(),
            r#type: "ProxyRestart".into(),
            namespace: p.pod.namespace.clone(),
            object: format!("Pod/{}", p.pod.name),
            reason: "ProxyRestarted".into(),
            message: format!("the proxy container restarted ({} restarts)", p.proxy_restarts),
        });
    }
}

/// Kubernetes Warning events in meshed namespaces. Ids are the event's uid and count, so a
/// relist resends nothing new to the service (it stores each id once).
async fn warnings(client: Client, inventory: Arc<Inventory>, reporter: Reporter, telemetry: Telemetry) {
    let api: Api<KubeEvent> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default().fields("type=Warning")).default_backoff().boxed();
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(ev) = stream.next().await {
        telemetry.watch_event("events", ev.is_ok());
        let e = match ev {
            Ok(Event::Apply(e)) | Ok(Event::InitApply(e)) => e,
            _ => continue,
        };
        let ns = e.namespace().unwrap_or_default();
        if !inventory.is_meshed_namespace(&ns) {
            continue;
        }
        let id = format!("{}/{}", e.uid().unwrap_or_default(), e.count.unwrap_or(1));
        if seen.len() > 10_000 {
            seen.clear(); // bounded; the service dedups by id anyway
        }
        if !seen.insert(id.clone()) {
            continue;
        }
        let at = e
            .last_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond())
            .or_else(|| e.event_time.as_ref().map(|t| t.0.as_millisecond()))
            .unwrap_or_else(crate::client::now_ms);
        let object = format!("{}/{}", e.involved_object.kind.clone().unwrap_or_default(), e.involved_object.name.clone().unwrap_or_default());
        let event = v1::Event {
            id,
            at_unix_ms: at,
            r#type: "Warning".into(),
            namespace: ns,
            object,
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
        };
        telemetry.reports.with_label_values(&["events"]).inc();
        reporter.report(Report::Events(v1::Events { events: vec![event] }));
    }
}

async fn scrape(config: AgentConfig, inventory: Arc<Inventory>, reporter: Reporter, telemetry: Telemetry) {
    let mut scraper = Scraper::new(config.scrape_timeout, config.scrape_concurrency);
    let mut tick = tokio::time::interval(config.scrape_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut start = crate::client::now_ms();
    loop {
        tick.tick().await;
        let end = crate::client::now_ms();
        let pods = inventory.pods().into_values().collect();
        let round = scraper.round(pods, start, end).await;
        telemetry.scrapes.with_label_values(&["ok"]).inc_by(round.ok);
        telemetry.scrapes.with_label_values(&["error"]).inc_by(round.failed);
        start = end;
        // Changed identities reach the service in the pump's next Delta.
        inventory.set_proxy_identities(round.identities);
        super::release_freed_memory();
        if !round.metrics.workloads.is_empty() {
            telemetry.reports.with_label_values(&["metrics"]).inc();
            reporter.report(Report::Metrics(round.metrics));
        }
    }
}

/// Writes a renewed certificate back to the identity Secret, so a restart after a renewal
/// starts with the newest identity (the old certificate stays valid for its last third anyway).
/// A read-modify-update carrying the resourceVersion: a concurrent change of the Secret (409)
/// is re-read and the write retried, and other keys of the Secret are kept.
pub async fn save_identity(client: &Client, namespace: &str, identity: &Identity) -> Result<(), ::kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let json = identity.to_json();
    let (api, json) = (&api, &json);
    super::conflict::retry_on_conflict("identity Secret", || async move {
        let mut secret = api.get(IDENTITY_SECRET).await?;
        secret.data.get_or_insert_with(BTreeMap::new).insert(IDENTITY_KEY.to_owned(), ByteString(json.clone()));
        api.replace(IDENTITY_SECRET, &PostParams::default(), &secret).await.map(|_| ())
    })
    .await
}
