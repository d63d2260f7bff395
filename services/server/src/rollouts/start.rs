//! Starting a rollout, by a person (`POST /api/v1/rollouts`) or by an automatic upgrade policy
//! (`super::proposals`): one planner over the organization's clusters and one check that no
//! cluster is in two unfinished rollouts, so both ways start the same rollout.

use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::audit::{Actor, AuditEntry};
use crate::domain::labels::Selector;
use crate::domain::releases::Catalog;
use crate::domain::rollouts::{self, Candidate, Plan, Rollout, Settings, Waves};
use crate::domain::{ClusterId, OrgId, RolloutId};
use crate::store::{self, clusters::ListQuery};

/// Who starts a rollout, as the audit log and the rollout name them.
pub enum StartedBy<'a> {
    Person(&'a Actor),
    /// The automatic upgrade policy of this name.
    Policy(&'a str),
}

/// The audit log's actor for rollouts an automatic policy starts.
pub const AUTOMATIC: &str = "automatic policy";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// These clusters (by name) are in an unfinished rollout already.
    #[error("already in an unfinished rollout: {}", .0.join(", "))]
    Busy(Vec<String>),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Plans `target` over the organization's clusters that `selector` matches and `keep` admits,
/// against the catalog, the policies and what the clusters reported now.
pub async fn plan(
    state: &AppState,
    org: OrgId,
    catalog: &Catalog,
    target: &semver::Version,
    selector: &Selector,
    waves: &Waves,
    keep: impl Fn(ClusterId) -> bool,
) -> Result<Plan, sqlx::Error> {
    let mut conn = state.db.pool.acquire().await?;
    let clusters = store::clusters::list(&mut conn, org, &ListQuery { selector, status: None, after_name: None, limit: 100_000 }).await?;
    let versions = store::inventory::control_plane_versions(&mut conn, org).await?;
    let policies = store::upgrade_policies::list(&mut conn, org).await?;
    drop(conn);
    let candidates: Vec<Candidate> = clusters
        .iter()
        .filter(|c| keep(c.id))
        .map(|c| Candidate {
            id: c.id,
            name: &c.name,
            labels: &c.labels,
            control_plane: versions.get(&c.id).map(String::as_str).unwrap_or_default(),
            agent_version: c.agent_version.as_deref(),
        })
        .collect();
    Ok(rollouts::plan(catalog, target, &candidates, &policies, waves))
}

/// Starts a rollout of `plan` and audits it, in one transaction; refused when one of its
/// clusters is in a running or paused rollout.
pub async fn start(state: &AppState, org: OrgId, plan: Plan, selector: String, settings: Settings, by: StartedBy<'_>) -> Result<Rollout, StartError> {
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let open = store::rollouts::open(&mut tx, org).await?;
    let busy: Vec<String> = plan
        .waves
        .iter()
        .flat_map(|w| &w.clusters)
        .filter(|c| open.iter().any(|r| r.clusters.iter().any(|o| o.id == c.id && !o.phase.settled())))
        .map(|c| c.name.clone())
        .collect();
    if !busy.is_empty() {
        return Err(StartError::Busy(busy));
    }
    let created_by = match by {
        StartedBy::Person(actor) => actor.id(),
        StartedBy::Policy(_) => AUTOMATIC.to_owned(),
    };
    let rollout = Rollout::start(RolloutId::new(), org, plan, selector, settings, created_by, to_rfc3339(now));
    store::rollouts::insert(&mut tx, &rollout).await?;
    let mut details = serde_json::json!({ "target_version": rollout.target_version, "selector": rollout.selector, "clusters": rollout.clusters.len(), "waves": rollout.waves });
    let target = ("rollout", rollout.id.to_string());
    match by {
        StartedBy::Person(actor) => store::audit::record(&mut tx, org, now, actor, "rollout.start", target, details).await?,
        StartedBy::Policy(name) => {
            details["policy"] = name.into();
            store::audit::insert(&mut tx, &AuditEntry::by_service(org, now, AUTOMATIC, "rollout.start", target, details)).await?
        }
    }
    tx.commit().await?;
    Ok(rollout)
}
