//! The mesh's certificates, run by the service: the `issuer-rotation` job signs each cluster's
//! issuer again before it expires. It asks the cluster's agent (a rotate-issuer command); the
//! agent makes the key and gets it signed through the gateway (`gateway::issuer`).

use crate::app::AppState;
use crate::domain::audit::AuditEntry;
use crate::domain::trust::issuer_due_at;
use crate::jobs::{Job, Scope};
use crate::store::{self, commands::Command, inventory::Facts};

/// How long an agent has to rotate its issuer before the command expires (and the job asks
/// again, once the agent is back).
const ROTATE_DEADLINE_MS: i64 = 10 * 60 * 1000;

pub fn issuer_rotation_job(state: &AppState) -> Job {
    Job::new("issuer-rotation", state.config.issuer_rotation_check, Scope::Leased, rotate_due_issuers)
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
