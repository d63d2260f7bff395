//! The mesh's certificates, run by the service: the `issuer-rotation` job signs each cluster's
//! issuer again before it expires, and the `anchor-rotation` job walks each trust-anchor
//! rotation through its phases (`domain::trust::RotationPhase`). Both act through the clusters'
//! agents (rotate-issuer and set-trust-bundle commands); an issuer's key is made by the agent
//! and signed through the gateway (`gateway::issuer`).

use crate::app::AppState;
use crate::domain::audit::AuditEntry;
use crate::domain::trust::{issuer_due_at, Anchor, ClusterProgress, ProgressState, Rotation, Step};
use crate::domain::ClusterId;
use crate::jobs::{Job, Scope};
use crate::store::{self, commands::Command, inventory::Facts};

/// How long an agent has to rotate its issuer before the command expires (and the job asks
/// again, once the agent is back).
const ROTATE_DEADLINE_MS: i64 = 10 * 60 * 1000;

pub fn issuer_rotation_job(state: &AppState) -> Job {
    Job::new("issuer-rotation", state.config.issuer_rotation_check, Scope::Leased, rotate_due_issuers)
}

/// How often running anchor rotations are looked at: each look sends what is due and reads
/// what came back, so a phase takes seconds, not minutes.
const ROTATION_TICK: std::time::Duration = std::time::Duration::from_millis(500);

pub fn anchor_rotation_job() -> Job {
    Job::new("anchor-rotation", ROTATION_TICK, Scope::Leased, advance_rotations)
}

/// Whether a cluster's issuer, as its agent last reported it, is due: the cluster already
/// trusts the organization's active anchor (it is managed by the service; adopting one that is
/// not is an explicit rotate-issuer, or an anchor rotation) and its issuer has no more than
/// `renew_fraction` of its lifetime left.
pub fn issuer_due(facts: &Facts, active_anchor: &str, now: i64, renew_fraction: f64) -> bool {
    let trusts_active = facts.certificates.iter().any(|c| c.role == "trust-anchor" && c.sha256_fingerprint == active_anchor);
    let issuer = facts.certificates.iter().find(|c| c.role == "issuer");
    trusts_active && issuer.is_some_and(|i| now >= issuer_due_at(i.not_before, i.not_after, renew_fraction))
}

async fn rotate_due_issuers(state: AppState) -> anyhow::Result<()> {
    let now = state.clock.now_ms();
    let mut conn = state.db.pool.acquire().await?;
    let candidates = store::trust::rotation_candidates(&mut conn).await?;
    drop(conn);
    for c in candidates {
        let Ok(facts) = serde_json::from_str::<Facts>(&c.facts_json) else { continue };
        if !issuer_due(&facts, &c.active_fingerprint, now, state.config.issuer_renew_fraction) {
            continue;
        }
        let command =
            Command::pending(c.org_id, c.cluster_id, "rotate-issuer".into(), serde_json::json!({}), "service:issuer-rotation".into(), now, ROTATE_DEADLINE_MS);
        let mut tx = state.db.begin().await?;
        store::commands::insert(&mut tx, &command).await?;
        let details = serde_json::json!({ "cluster": c.cluster_id, "kind": command.kind });
        store::audit::insert(
            &mut tx,
            &AuditEntry::by_service(c.org_id, now, "issuer-rotation", "command.create", ("command", command.id.to_string()), details),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(org = %c.org_id, cluster = %c.cluster_id, command = %command.id, "cluster issuer due: rotation requested");
        crate::gateway::dispatch::command_created(&state, c.cluster_id).await;
    }
    Ok(())
}

async fn advance_rotations(state: AppState) -> anyhow::Result<()> {
    let mut conn = state.db.pool.acquire().await?;
    let rotations = store::trust::running_rotations(&mut conn).await?;
    drop(conn);
    for r in rotations {
        advance(&state, r).await?;
    }
    Ok(())
}

/// What one step asks of a cluster's agent: a command kind and its parameters.
fn command_for(step: Step, old: &Anchor, new: &Anchor) -> (&'static str, serde_json::Value) {
    match step {
        Step::Distribute => ("set-trust-bundle", serde_json::json!({ "bundle_pem": format!("{}{}", old.cert_pem, new.cert_pem) })),
        Step::Reissue { .. } => ("rotate-issuer", serde_json::json!({})),
        Step::Narrow { to_new } => ("set-trust-bundle", serde_json::json!({ "bundle_pem": if to_new { &new.cert_pem } else { &old.cert_pem } })),
    }
}

/// Whether a pod's proxy has done its part of the step, from what its agent reported.
fn pod_done(step: Step, pod: &store::inventory::Pod, old: &Anchor, new: &Anchor) -> bool {
    let target = |to_new: bool| if to_new { &new.fingerprint } else { &old.fingerprint };
    match step {
        Step::Distribute => pod.bundle_fingerprints.contains(&new.fingerprint) && pod.bundle_fingerprints.contains(&old.fingerprint),
        Step::Reissue { to_new } => pod.leaf_anchor_fingerprint.as_ref() == Some(target(to_new)),
        Step::Narrow { to_new } => pod.bundle_fingerprints == [target(to_new).clone()],
    }
}

/// One look at a rotation: for each cluster, send this phase's command if it has none, and
/// read how far it got; once every cluster (but the excluded) is done, the next phase.
async fn advance(state: &AppState, mut r: Rotation) -> anyhow::Result<()> {
    let Some(step) = r.phase.step() else { return Ok(()) };
    let read = (r.phase, r.updated_at);
    // Strictly later than what it read, so a change saved in the same millisecond still shows.
    let now = state.clock.now_ms().max(r.updated_at + 1);
    let live = state.liveness();
    let mut conn = state.db.pool.acquire().await?;
    let anchors = store::trust::anchors(&mut conn, r.org_id).await?;
    let (Some(old), Some(new)) = (anchors.iter().find(|a| a.id == r.old_anchor), anchors.iter().find(|a| a.id == r.new_anchor)) else {
        anyhow::bail!("rotation {} names an anchor that is gone", r.id);
    };
    let clusters = store::trust::org_clusters(&mut conn, r.org_id).await?;
    let mut sent: Vec<(ClusterId, Command)> = Vec::new();
    for (cluster, status, last_seen) in &clusters {
        let progress = r.clusters.entry(*cluster).or_default();
        if r.excluded.contains(cluster) {
            *progress = ClusterProgress { phase: Some(r.phase), state: ProgressState::Excluded, message: "excluded by an admin".into(), ..Default::default() };
            continue;
        }
        if progress.phase != Some(r.phase) {
            *progress = ClusterProgress { phase: Some(r.phase), ..Default::default() };
        }
        if progress.state == ProgressState::Done {
            continue;
        }
        let Some(command_id) = progress.command_id else {
            if live.status(status, *last_seen) != "connected" {
                progress.state = ProgressState::WaitingForAgent;
                progress.message = format!("the agent is {}: this phase waits for it (or exclude the cluster)", live.status(status, *last_seen));
                continue;
            }
            let (kind, params) = command_for(step, old, new);
            let command = Command::pending(r.org_id, *cluster, kind.into(), params, "service:anchor-rotation".into(), now, ROTATE_DEADLINE_MS);
            progress.command_id = Some(command.id);
            progress.state = ProgressState::WaitingForAgent;
            progress.message = format!("{kind} sent");
            sent.push((*cluster, command));
            continue;
        };
        let Some(command) = store::commands::get(&mut conn, r.org_id, *cluster, command_id).await? else { continue };
        match command.state.as_str() {
            "succeeded" => {
                let pods = store::inventory::pods(&mut conn, r.org_id, *cluster).await?;
                let done = pods.iter().filter(|p| pod_done(step, p, old, new)).count();
                (progress.pods_done, progress.pods_total) = (done as u32, pods.len() as u32);
                if done == pods.len() {
                    progress.state = ProgressState::Done;
                    progress.message = format!("every proxy ({done}) has done its part");
                } else {
                    progress.state = ProgressState::WaitingForProxies;
                    progress.message = format!("{done} of {} proxies have done their part", pods.len());
                }
            }
            "failed" | "expired" => {
                progress.state = ProgressState::Failed;
                progress.message = format!("{} {}: {} (resume to retry, or exclude the cluster)", command.kind, command.state, command.message);
            }
            other => {
                progress.state = ProgressState::WaitingForAgent;
                progress.message = format!("{} {other}", command.kind);
            }
        }
    }
    // Deleted clusters have no say; progress is kept for the record.
    let moving = clusters.iter().all(|(id, ..)| r.clusters.get(id).is_some_and(|p| p.state.settled()));
    let mut tx = state.db.begin().await?;
    if moving {
        let (next, states) = r.phase.next();
        if let Some((old_state, new_state)) = states {
            store::trust::set_anchor_state(&mut tx, r.org_id, old.id, old_state).await?;
            store::trust::set_anchor_state(&mut tx, r.org_id, new.id, new_state).await?;
        }
        let details = serde_json::json!({ "from": r.phase, "to": next, "old": old.fingerprint, "new": new.fingerprint });
        store::audit::insert(
            &mut tx,
            &AuditEntry::by_service(r.org_id, now, "anchor-rotation", "trust_anchor.rotation.phase", ("anchor_rotation", r.id.to_string()), details),
        )
        .await?;
        tracing::info!(org = %r.org_id, rotation = %r.id, from = r.phase.as_str(), to = next.as_str(), "trust-anchor rotation moves on");
        r.phase = next;
    }
    r.updated_at = now;
    for (_, command) in &sent {
        store::commands::insert(&mut tx, command).await?;
    }
    let clusters: Vec<ClusterId> = sent.iter().map(|(cluster, _)| *cluster).collect();
    crate::gateway::dispatch::announce_commands(&mut tx, state.db.engine, &clusters).await?;
    if !store::trust::save_rotation(&mut tx, &r, read).await? {
        // An admin paused, aborted or excluded meanwhile: nothing of this look stands (not
        // even its commands, in this transaction); the next look starts from theirs.
        return Ok(());
    }
    tx.commit().await?;
    crate::gateway::dispatch::wake_here(state, &clusters);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::inventory::CertificateInfo;

    fn cert(role: &str, fp: &str, not_before: i64, not_after: i64) -> CertificateInfo {
        CertificateInfo { role: role.into(), sha256_fingerprint: fp.into(), not_before, not_after, ..Default::default() }
    }

    #[test]
    fn only_managed_clusters_past_the_renewal_point_are_due() {
        let facts = Facts { certificates: vec![cert("trust-anchor", "a1", 0, 1_000_000), cert("issuer", "i1", 0, 100)], ..Default::default() };
        assert!(!issuer_due(&facts, "a1", 49, 0.5));
        assert!(issuer_due(&facts, "a1", 50, 0.5));
        assert!(!issuer_due(&facts, "other", 99, 0.5), "a cluster that does not trust the active anchor is not rotated by itself");
        let no_issuer = Facts { certificates: vec![cert("trust-anchor", "a1", 0, 10)], ..Default::default() };
        assert!(!issuer_due(&no_issuer, "a1", 99, 0.5));
    }
}
