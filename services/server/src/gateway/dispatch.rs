//! Reaching the other replicas: the one that holds an agent's stream, and every replica whose
//! caches a change makes stale. In-process first (the registry, the caches), then PostgreSQL
//! LISTEN/NOTIFY to every other replica, with a one-second polling fallback for commands in
//! case a notification is missed (or on SQLite, which has one replica). A missed cache notice
//! costs at most the caches' lifetime (`read_cache_ms`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, oneshot};

use crate::app::AppState;
use crate::db::{Db, Engine};
use crate::domain::{ClusterId, OrgId};
use crate::jobs::{Job, Scope};
use crate::store;

const CHANNEL: &str = "meshfleet_agents";
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How soon a broken LISTEN connection is opened again.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// How many clusters one wake-up notice names (a NOTIFY payload must stay under 8,000 bytes).
const WAKE_CHUNK: usize = 150;

/// A command was created for the cluster.
pub async fn command_created(state: &AppState, cluster: ClusterId) {
    state.agents.wake(cluster);
    publish(state, &format!("wake:{cluster}")).await;
}

/// Commands for these clusters are being created in the transaction on `conn` (a job's batch):
/// the other replicas are told when it commits (PostgreSQL), one notice per 150 clusters, with
/// no round trips after the commit; then call [`wake_here`].
pub async fn announce_commands(conn: &mut store::Conn, engine: Engine, clusters: &[ClusterId]) -> Result<(), sqlx::Error> {
    if engine != Engine::Postgres {
        return Ok(());
    }
    for chunk in clusters.chunks(WAKE_CHUNK) {
        let ids: Vec<String> = chunk.iter().map(ToString::to_string).collect();
        publish_in(conn, &format!("wake:{}", ids.join(","))).await?;
    }
    Ok(())
}

/// Wakes the streams on this replica of clusters whose commands were just committed.
pub fn wake_here(state: &AppState, clusters: &[ClusterId]) {
    clusters.iter().for_each(|c| state.agents.wake(*c));
}

/// The cluster was deleted or its agent revoked: cut its stream wherever it is.
pub async fn agent_revoked(state: &AppState, cluster: ClusterId) {
    state.agents.revoke(cluster);
    publish(state, &format!("revoke:{cluster}")).await;
}

/// A stream opened here: streams of the same cluster on other replicas are superseded.
pub fn session_opened(state: &AppState, cluster: ClusterId, session: &str) {
    publish_soon(state, format!("open:{cluster}:{session}"));
}

/// The organization's clusters were created, relabelled or deleted: listings and the fleet
/// overview are rebuilt, here and on every replica.
pub async fn clusters_changed(state: &AppState, org: OrgId) {
    forget_clusters(state, org);
    publish(state, &format!("clusters:{org}")).await;
}

/// An agent of the organization connected or disconnected: its listings are rebuilt, here and
/// on every replica. The fleet overview is not dropped: a storm of reconnections would make
/// every dashboard request recompute it; its own one-second refresh shows the change.
pub fn agent_status_changed(state: &AppState, org: OrgId) {
    state.read_cache.clusters_changed(org);
    publish_soon(state, format!("status:{org}"));
}

/// A session ended, or a token or membership was revoked or changed: every replica checks
/// bearer tokens afresh.
pub async fn access_changed(state: &AppState) {
    state.read_cache.access_changed();
    publish(state, "access").await;
}

fn forget_clusters(state: &AppState, org: OrgId) {
    state.read_cache.clusters_changed(org);
    state.fleet_cache.invalidate(org);
}

/// Notifies every replica with `payload` when the transaction on `conn` commits (PostgreSQL).
pub async fn publish_in(conn: &mut store::Conn, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(conn).await.map(drop)
}

/// Returns once the notice is sent (or failed: the polling fallback and stream revalidation
/// still deliver, only later).
async fn publish(state: &AppState, payload: &str) {
    if state.db.engine != Engine::Postgres {
        return;
    }
    state.notifier.send(payload.to_owned()).await;
}

/// Queues the notice without waiting for it to be sent: for those nothing here waits on (each
/// stream opening sends two, and 10,000 reconnecting agents queued behind them).
fn publish_soon(state: &AppState, payload: String) {
    if state.db.engine == Engine::Postgres {
        state.notifier.post(payload);
    }
}

/// Sends this replica's notices (PostgreSQL) from one task: those queued while a statement
/// runs go together in the next one, as lines of as few payloads as fit. A replica restarted
/// under 10,000 agents had them make two notifying commits each as they came back, and
/// PostgreSQL serializes those commits.
#[derive(Clone)]
pub struct Notifier(mpsc::UnboundedSender<(String, oneshot::Sender<()>)>);

/// A NOTIFY payload must stay under 8,000 bytes.
const PAYLOAD_MAX: usize = 7_900;

impl Notifier {
    pub fn start(db: Db) -> Notifier {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, oneshot::Sender<()>)>();
        tokio::spawn(async move {
            let mut queued = Vec::new();
            while rx.recv_many(&mut queued, 4096).await > 0 {
                let (notices, senders): (Vec<String>, Vec<_>) = queued.drain(..).unzip();
                let payloads = pack(&notices);
                let sent = async {
                    let calls: Vec<String> = (2..payloads.len() + 2).map(|n| format!("pg_notify($1, ${n})")).collect();
                    let sql = format!("SELECT {}", calls.join(", "));
                    let query = payloads.iter().fold(sqlx::query(&sql).bind(CHANNEL), |q, p| q.bind(p));
                    query.execute(&mut *db.pool.acquire().await?).await
                };
                if let Err(e) = sent.await {
                    tracing::warn!(error = %e, notices = notices.len(), "pg_notify failed");
                }
                for done in senders {
                    let _ = done.send(());
                }
            }
        });
        Notifier(tx)
    }

    async fn send(&self, notice: String) {
        let (done, sent) = oneshot::channel();
        if self.0.send((notice, done)).is_ok() {
            let _ = sent.await;
        }
    }

    fn post(&self, notice: String) {
        let _ = self.0.send((notice, oneshot::channel().0));
    }
}

/// The notices, each once and in order, as newline-separated payloads of at most `PAYLOAD_MAX`
/// bytes (a longer notice goes alone).
fn pack(notices: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut payloads: Vec<String> = Vec::new();
    for notice in notices.iter().filter(|n| seen.insert(n.as_str())) {
        match payloads.last_mut() {
            Some(last) if last.len() + 1 + notice.len() <= PAYLOAD_MAX => {
                last.push('\n');
                last.push_str(notice);
            }
            _ => payloads.push(notice.clone()),
        }
    }
    payloads
}

fn apply(state: &AppState, payload: &str) {
    payload.lines().for_each(|notice| apply_one(state, notice));
}

fn apply_one(state: &AppState, payload: &str) {
    let mut parts = payload.splitn(3, ':');
    let (kind, id, rest) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
    if kind == "access" {
        return state.read_cache.access_changed();
    }
    if kind == "clusters" || kind == "status" {
        let Some(org) = id.and_then(|org| org.parse().ok()) else { return };
        return if kind == "clusters" { forget_clusters(state, org) } else { state.read_cache.clusters_changed(org) };
    }
    if kind == "wake" {
        return id.unwrap_or_default().split(',').filter_map(|c| c.parse().ok()).for_each(|c| state.agents.wake(c));
    }
    let Some(cluster) = id.and_then(|c| c.parse().ok()) else {
        return;
    };
    match (kind, rest) {
        ("revoke", _) => state.agents.revoke(cluster),
        ("open", Some(session)) => state.agents.superseded_elsewhere(cluster, session),
        _ => {}
    }
}

/// The notification listener (PostgreSQL, on every replica: each keeps caches) and, with the
/// gateway role, the command poller.
pub fn jobs(state: &AppState) -> Vec<Job> {
    let mut jobs = Vec::new();
    if state.db.engine == Engine::Postgres {
        if let Some(url) = state.config.database_url.as_ref().map(|u| u.expose_secret().to_owned()) {
            let url = Arc::new(url);
            jobs.push(Job::new("notifications", LISTEN_RETRY, Scope::EveryReplica, move |state| listen(state, url.clone())));
        }
    }
    if state.config.roles.gateway {
        jobs.push(Job::new("command-poll", POLL_EVERY, Scope::EveryReplica, poll));
    }
    jobs
}

/// Applies notifications until the connection fails (the runner reconnects after `LISTEN_RETRY`).
async fn listen(state: AppState, url: Arc<String>) -> anyhow::Result<()> {
    let mut listener = sqlx::postgres::PgListener::connect(&url).await.context("LISTEN connection failed; commands fall back to polling")?;
    listener.listen(CHANNEL).await.context("LISTEN failed")?;
    loop {
        let n = listener.recv().await.context("the LISTEN connection broke")?;
        apply(&state, n.payload());
    }
}

/// Wakes the streams on this replica whose clusters have pending commands.
async fn poll(state: AppState) -> anyhow::Result<()> {
    if state.agents.is_empty() {
        return Ok(());
    }
    let mut conn = state.db.pool.acquire().await?;
    let clusters = store::commands::clusters_with_pending(&mut conn, state.clock.now_ms()).await.context("polling for commands")?;
    clusters.into_iter().for_each(|c| state.agents.wake(c));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_packed_once_each_in_order_within_the_payload_limit() {
        let long = "w".repeat(PAYLOAD_MAX - 3);
        let notices: Vec<String> = ["status:o1", "open:c1:s1", "status:o1", "open:c1:s2", &long, "access"].map(String::from).to_vec();
        let payloads = pack(&notices);
        assert_eq!(payloads, vec!["status:o1\nopen:c1:s1\nopen:c1:s2".to_owned(), long.clone(), "access".to_owned()]);
        assert!(payloads.iter().all(|p| p.len() <= PAYLOAD_MAX));
    }
}
