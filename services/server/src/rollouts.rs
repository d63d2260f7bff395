//! Rollouts run by the service: the leased `rollouts` job looks at each running rollout twice a
//! second, and at once when this replica's gateway stores a command's final result (so a
//! finished step is followed without waiting for the tick), and moves each cluster of its current wave along (`domain::rollouts::Phase`): the
//! control plane to the hop's version (set-control-plane-version), then its workloads
//! restarted so the injector gives them the new proxy (restart-workloads), then
//! `verify_seconds` of watching before its gates are judged against its own baseline. A failed
//! gate rolls that cluster back (the control plane to the version it ran, its workloads
//! restarted again) and pauses the rollout with the measured values. A wave is followed by
//! `soak_seconds` before the next (the last by none). Each step is saved with its command in one transaction,
//! written only if the rollout did not change meanwhile, so a restarted or newly leasing
//! replica continues from the saved step and never sends a step's command twice.

pub mod proposals;
pub mod start;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::audit::AuditEntry;
use crate::domain::health::Health;
use crate::domain::rollouts::{judge, ClusterRun, Counted, Measured, NeedsAttention, Phase, Rollout, RolloutState};
use crate::domain::upgrade_policies;
use crate::domain::{ClusterId, CommandId, OrgId};
use crate::jobs::{Job, Scope};
use crate::store::{self, commands::Command, fleet::Golden, rollups::Event};

const TICK: Duration = Duration::from_millis(500);
/// How long an agent has for one step before its command expires (the step then fails).
const STEP_DEADLINE_MS: i64 = 30 * 60 * 1000;
const BY: &str = "rollouts";

pub fn job() -> Job {
    Job::new("rollouts", TICK, Scope::Leased, advance_all)
}

async fn advance_all(state: AppState) -> anyhow::Result<()> {
    let mut conn = state.db.pool.acquire().await?;
    let unfinished = store::rollouts::unfinished(&mut conn).await?;
    drop(conn);
    for r in unfinished {
        // One rollout that cannot move (its data unreadable, say) does not hold the others up.
        let (org, id) = (r.org_id, r.id);
        if let Err(e) = advance(&state, r).await {
            tracing::warn!(%org, rollout = %id, error = %format!("{e:#}"), "rollout step failed; retried on the next look");
        }
    }
    Ok(())
}

fn measured(g: &Golden) -> Measured {
    Measured { requests: g.requests, success_rate: g.success_rate(), p99_ms: (g.requests > 0).then_some(g.p99_ms) }
}

fn minute(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}

/// The health checks failing on a cluster now (`check/object: message`), as the fleet view
/// assessed them. Version skew is expected while it upgrades and not held against it; the
/// success rate is judged by the rollout's own gate, against the cluster's baseline, rather
/// than by the fleet's fixed thresholds.
fn failing(snapshot: &crate::fleet::Snapshot, cluster: ClusterId, now: i64) -> Vec<String> {
    let Some(row) = snapshot.rows.iter().find(|r| r.cluster.id == cluster) else { return Vec::new() };
    row.findings
        .iter()
        .filter(|(f, _)| matches!(f.health(), Some(Health::Critical | Health::Degraded)) && !matches!(f.check(), "version_skew" | "success_rate"))
        .map(|(f, _)| format!("{}/{}: {}", f.check(), f.object(), f.message(now)))
        .collect()
}

/// The command that moves `c` on from its phase, or none when it waits or is settled.
fn command_for(c: &ClusterRun, restart_batch: u32) -> Option<(&'static str, serde_json::Value)> {
    match c.phase {
        Phase::ControlPlane => Some(("set-control-plane-version", serde_json::json!({ "version": c.hops[c.hop as usize] }))),
        Phase::RollingBack => Some(("set-control-plane-version", serde_json::json!({ "version": c.from }))),
        Phase::DataPlane | Phase::RestoringWorkloads => Some(("restart-workloads", serde_json::json!({ "batch_size": restart_batch }))),
        _ => None,
    }
}

/// Enters `phase`; its command (if any) is queued in `sent`.
fn enter(r: &Rollout, c: &mut ClusterRun, phase: Phase, now: i64, message: String, sent: &mut Vec<Command>) {
    c.phase = phase;
    c.since = to_rfc3339(now);
    c.message = message;
    c.command_id = None;
    if let Some((kind, params)) = command_for(c, r.settings.restart_batch) {
        let command = Command::pending(r.org_id, c.id, kind.into(), params, format!("service:rollout:{}", r.id), now, STEP_DEADLINE_MS);
        c.command_id = Some(command.id);
        sent.push(command);
    }
}

/// The golden metrics a look judges clusters on, up to its `now`: read for all the wave's
/// unsettled clusters at once per window start, since clusters that move together (a wave
/// started in one look) ask for the same windows; one query, not one per cluster.
struct Windows {
    org: OrgId,
    to: i64,
    clusters: Vec<ClusterId>,
    /// By window start (ms).
    read: HashMap<i64, HashMap<ClusterId, Golden>>,
}

impl Windows {
    async fn golden(&mut self, conn: &mut store::Conn, cluster: ClusterId, from: i64) -> Result<Golden, sqlx::Error> {
        if !self.read.contains_key(&from) {
            let read = store::fleet::golden_between_of(conn, self.org, &self.clusters, from, self.to).await?;
            self.read.insert(from, read);
        }
        Ok(self.read[&from].get(&cluster).copied().unwrap_or_default())
    }
}

/// One look at a rollout.
async fn advance(state: &AppState, mut r: Rollout) -> anyhow::Result<()> {
    let read = r.updated_at.timestamp_millis();
    let original = r.clone();
    // Strictly later than what it read, so a change saved in the same millisecond still shows.
    let now = state.clock.now_ms().max(read + 1);
    let live = state.liveness();
    let snapshot = crate::fleet::FleetCache::snapshot(state, r.org_id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut conn = state.db.pool.acquire().await?;
    let policies = store::upgrade_policies::list(&mut conn, r.org_id).await?;
    let mut sent: Vec<Command> = Vec::new();
    let mut steps: Vec<(ClusterId, Phase, Phase, String)> = Vec::new();
    let wave = r.wave;
    let busy = r.clusters.iter().filter(|c| c.wave == wave && c.phase.in_progress()).count() as u32;
    let mut slots = r.settings.max_concurrent.saturating_sub(busy);
    let verify_ms = i64::from(r.settings.verify_seconds) * 1000;
    let mut pause: Option<String> = None;
    let mut clusters = std::mem::take(&mut r.clusters);
    let paused = r.state == RolloutState::Paused;
    // Every command this look waits on, in one query rather than one per cluster.
    let waited: Vec<CommandId> = clusters.iter().filter(|c| c.wave == wave && c.phase.in_progress()).filter_map(|c| c.command_id).collect();
    let mut commands = if waited.is_empty() { Default::default() } else { store::commands::get_many(&mut conn, r.org_id, &waited).await? };
    // The clusters that may start in this look, in one query.
    let waiting: Vec<ClusterId> = clusters.iter().filter(|c| c.wave == wave && c.phase == Phase::Pending).map(|c| c.id).collect();
    let starting = if slots == 0 || waiting.is_empty() || paused { HashMap::new() } else { store::clusters::get_many(&mut conn, r.org_id, &waiting).await? };
    let mut windows = Windows {
        org: r.org_id,
        to: now,
        clusters: clusters.iter().filter(|c| c.wave == wave && !c.phase.settled()).map(|c| c.id).collect(),
        read: HashMap::new(),
    };
    for c in clusters.iter_mut().filter(|c| c.wave == wave && !c.phase.settled()) {
        // Paused, only a rollback under way goes on.
        if paused && !matches!(c.phase, Phase::RollingBack | Phase::RestoringWorkloads) {
            continue;
        }
        let before = c.phase;
        match c.phase {
            Phase::Pending => {
                if slots == 0 {
                    continue;
                }
                let Some(cluster) = starting.get(&c.id) else {
                    enter(&r, c, Phase::Skipped, now, "the cluster was deleted".into(), &mut sent);
                    steps.push((c.id, before, c.phase, c.message.clone()));
                    continue;
                };
                let status = cluster.effective_status(&live);
                if status != "connected" {
                    c.message = format!("waiting for its agent ({status})");
                    continue;
                }
                // Nothing starts outside the cluster's maintenance windows.
                if let Some(p) = upgrade_policies::effective(&policies, &cluster.labels).filter(|p| !p.open_at(now)) {
                    let next = p.next_opening(now).map_or_else(|| "none in the next week".to_owned(), |t| to_rfc3339(t).to_rfc3339());
                    c.message = format!("waiting for a maintenance window of policy {:?} (next: {next})", p.spec.name);
                    continue;
                }
                slots -= 1;
                let base = windows.golden(&mut conn, c.id, minute(now - verify_ms)).await?;
                c.baseline = Some(measured(&base));
                c.baseline_findings = failing(&snapshot, c.id, now);
                let hop = &c.hops[c.hop as usize];
                enter(&r, c, Phase::ControlPlane, now, format!("control plane to {hop}"), &mut sent);
            }
            Phase::ControlPlane | Phase::DataPlane | Phase::RollingBack | Phase::RestoringWorkloads => {
                let Some(id) = c.command_id else { continue };
                let Some(command) = commands.remove(&id).filter(|command| command.cluster_id == c.id) else { continue };
                match (command.state.as_str(), c.phase) {
                    ("succeeded", Phase::ControlPlane) => enter(&r, c, Phase::DataPlane, now, "restarting workloads".into(), &mut sent),
                    ("succeeded", Phase::DataPlane) => {
                        c.needs_attention = NeedsAttention::from_restart_output(command.output.as_ref());
                        let so_far = windows.golden(&mut conn, c.id, minute(now)).await?;
                        c.counted_before = Counted { requests: so_far.requests, failures: so_far.failures };
                        enter(&r, c, Phase::Verifying, now, format!("watching for {} s", r.settings.verify_seconds), &mut sent);
                    }
                    ("succeeded", Phase::RollingBack) => {
                        enter(&r, c, Phase::RestoringWorkloads, now, "restarting workloads on the old proxy".into(), &mut sent)
                    }
                    ("succeeded", _) => enter(&r, c, Phase::RolledBack, now, format!("back at {}", c.from), &mut sent),
                    ("failed" | "expired", Phase::ControlPlane | Phase::DataPlane) => {
                        let why = format!("{} {}: {}", command.kind, command.state, command.message);
                        pause.get_or_insert_with(|| format!("{}: {why}; rolled back", c.name));
                        enter(&r, c, Phase::RollingBack, now, why, &mut sent);
                    }
                    ("failed" | "expired", _) => {
                        c.message = format!("rollback {} {}: {} (retry the cluster, or act on it by hand)", command.kind, command.state, command.message);
                        pause.get_or_insert_with(|| format!("{}: {}", c.name, c.message));
                    }
                    (other, _) => c.message = format!("{} {other}", command.kind),
                }
            }
            Phase::Verifying => {
                let since = c.since.timestamp_millis();
                if now - since < verify_ms {
                    continue;
                }
                let g = windows.golden(&mut conn, c.id, minute(since)).await?;
                let after = Golden { requests: g.requests - c.counted_before.requests, failures: g.failures - c.counted_before.failures, ..g };
                let after = measured(&after);
                c.measured = Some(after);
                let known: HashSet<&String> = c.baseline_findings.iter().collect();
                let new: Vec<String> = failing(&snapshot, c.id, now).into_iter().filter(|f| !known.contains(f)).collect();
                match judge(&r.settings.gates, &c.baseline.unwrap_or_default(), &after, &new) {
                    Some(why) => {
                        pause.get_or_insert_with(|| format!("{}: gate failed: {why}; rolled back", c.name));
                        enter(&r, c, Phase::RollingBack, now, format!("gate failed: {why}"), &mut sent);
                    }
                    None if (c.hop as usize) + 1 < c.hops.len() => {
                        c.hop += 1;
                        let hop = c.hops[c.hop as usize].clone();
                        enter(&r, c, Phase::ControlPlane, now, format!("gates passed; control plane to {hop}"), &mut sent);
                    }
                    None => enter(&r, c, Phase::Done, now, format!("at {}; gates passed", r.target_version), &mut sent),
                }
            }
            Phase::Done | Phase::RolledBack | Phase::Skipped => {}
        }
        if c.phase != before {
            steps.push((c.id, before, c.phase, c.message.clone()));
        }
    }
    r.clusters = clusters;
    if let Some(reason) = pause {
        r.state = RolloutState::Paused;
        r.reason = Some(reason);
    } else if !paused && r.clusters.iter().filter(|c| c.wave == wave).all(|c| c.phase.settled()) {
        // The soak guards the next wave; after the last there is none to guard.
        let soaked = |done: chrono::DateTime<chrono::Utc>| now - done.timestamp_millis() >= i64::from(r.settings.soak_seconds) * 1000;
        match r.wave_done_at {
            _ if r.wave + 1 >= r.waves => {
                r.wave = r.waves;
                r.wave_done_at = None;
                r.state = RolloutState::Completed;
            }
            None => r.wave_done_at = Some(to_rfc3339(now)),
            Some(done) if soaked(done) => {
                r.wave += 1;
                r.wave_done_at = None;
            }
            Some(_) => {}
        }
    }
    // Nothing moved (a step still waits): nothing to write.
    if r == original {
        return Ok(());
    }
    drop(conn);
    r.updated_at = to_rfc3339(now);
    let mut tx = state.db.begin().await?;
    store::commands::insert_many(&mut tx, &sent).await?;
    let woken: Vec<ClusterId> = sent.iter().map(|c| c.cluster_id).collect();
    crate::gateway::dispatch::announce_commands(&mut tx, state.db.engine, &woken).await?;
    let mut events = Vec::with_capacity(steps.len());
    let mut entries = Vec::with_capacity(steps.len() + 1);
    for (cluster, from, to, message) in &steps {
        let details = serde_json::json!({ "cluster": cluster, "from": from, "to": to, "message": message, "target_version": r.target_version });
        entries.push(AuditEntry::by_service(r.org_id, now, BY, "rollout.step", ("rollout", r.id.to_string()), details));
        let mut message = message.clone();
        // A cluster rolled back is not proposed this version again by its automatic policy.
        if *to == Phase::RollingBack {
            store::upgrade_declines::record(&mut tx, r.org_id, *cluster, &r.target_version, r.id, &message, now).await?;
            message.push_str(&not_again(&r.target_version));
        }
        events.push((r.org_id, *cluster, step_event(&r, *from, *to, &message, now)));
    }
    store::rollups::add_events(&mut tx, &events).await?;
    if r.state != RolloutState::Running || r.wave != wave {
        let details = serde_json::json!({ "state": r.state, "wave": r.wave, "reason": r.reason });
        entries.push(AuditEntry::by_service(r.org_id, now, BY, "rollout.progress", ("rollout", r.id.to_string()), details));
    }
    store::audit::insert_many(&mut tx, &entries).await?;
    if !store::rollouts::save(&mut tx, &r, read).await? {
        // An admin paused, aborted or skipped meanwhile: nothing of this look stands (not even
        // its commands, in this transaction); the next look starts from theirs.
        return Ok(());
    }
    tx.commit().await?;
    crate::gateway::dispatch::wake_here(state, &woken);
    // A step's command, if it sent one, named on the step's span.
    let kinds: HashMap<ClusterId, &str> = sent.iter().map(|c| (c.cluster_id, c.kind.as_str())).collect();
    for (cluster, from, to, _) in &steps {
        let span = tracing::info_span!(target: crate::telemetry::TRACES, "rollout step", rollout_id = %r.id, cluster_id = %cluster, from = ?from, to = ?to, command = tracing::field::Empty);
        if let Some(kind) = kinds.get(cluster) {
            span.record("command", kind);
            tracing::info!(parent: &span, org = %r.org_id, rollout = %r.id, cluster = %cluster, kind = %kind, "rollout step sent");
        }
    }
    Ok(())
}

/// A step of a rollout as an event of the cluster it moved (shown with the cluster's own).
fn step_event(r: &Rollout, from: Phase, to: Phase, message: &str, now: i64) -> Event {
    event(r, Phase::step_reason(from, to), message, now)
}

/// What a cluster's events say when an upgrade is declined (`store::upgrade_declines`).
pub fn not_again(version: &str) -> String {
    format!("; {version} will not be proposed to it again automatically")
}

/// An event of a cluster in rollout `r`: its type (`Normal`, `Warning`) and reason, and what
/// happened.
pub fn event(r: &Rollout, (kind, reason): (&str, &str), message: &str, now: i64) -> Event {
    Event {
        id: uuid::Uuid::now_v7().to_string(),
        at: now,
        kind: kind.into(),
        namespace: String::new(),
        object: format!("rollout/{}", r.id),
        reason: reason.into(),
        message: format!("{message} (rollout to {})", r.target_version),
    }
}

/// The clusters these rollouts are upgrading now (a step under way, a rollback included):
/// their version-skew alerts are muted meanwhile, as proxies and control plane part for a while.
pub fn upgrading(rollouts: &[Rollout]) -> HashSet<ClusterId> {
    rollouts
        .iter()
        .filter(|r| matches!(r.state, RolloutState::Running | RolloutState::Paused))
        .flat_map(|r| r.clusters.iter().filter(|c| c.phase.in_progress()).map(|c| c.id))
        .collect()
}
