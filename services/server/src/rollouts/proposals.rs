//! Automatic upgrades: every `upgrade_proposals` this leased job looks at each organization
//! with an automatic upgrade policy and proposes its clusters into rollouts when a newer
//! release they can reach is on their channel (added by the catalog file or the operator, or
//! there already when the policy became automatic). One rollout per policy and target, with
//! the default settings, started through the same `start` as people's; the rollouts job then
//! starts nothing outside a cluster's windows. It never proposes a cluster that is excluded,
//! in an unfinished rollout, or whose upgrade to that version was given up before (rolled back,
//! skipped or aborted, `store::upgrade_declines`): that one waits for a newer release or a person.

use std::collections::{BTreeMap, HashSet};

use super::start::{self, StartError, StartedBy};
use crate::app::AppState;
use crate::domain::labels::Selector;
use crate::domain::releases::{agent_blocks, parse_version};
use crate::domain::rollouts::{Settings, Waves};
use crate::domain::upgrade_policies::{self, Mode};
use crate::domain::{ClusterId, OrgId};
use crate::jobs::{Job, Scope};
use crate::store::{self, clusters::ListQuery};

pub fn job(state: &AppState) -> Job {
    Job::new("upgrade-proposals", state.config.upgrade_proposals, Scope::Leased, propose_all)
}

async fn propose_all(state: AppState) -> anyhow::Result<()> {
    let mut conn = state.db.pool.acquire().await?;
    let orgs = store::upgrade_policies::orgs_with_automatic(&mut conn).await?;
    drop(conn);
    for org in orgs {
        // One organization's trouble does not hold the others up.
        if let Err(e) = propose(&state, org).await {
            tracing::warn!(%org, error = %format!("{e:#}"), "automatic upgrade proposals failed; tried again on the next look");
        }
    }
    Ok(())
}

/// The newest release each automatic cluster can reach, grouped by its policy (by index into
/// the organization's policies) and that release.
async fn proposals(
    state: &AppState,
    org: OrgId,
) -> anyhow::Result<(Vec<upgrade_policies::UpgradePolicy>, BTreeMap<(usize, semver::Version), HashSet<ClusterId>>)> {
    let catalog = state.releases.get(&state.db, state.clock.now_ms()).await?;
    let mut conn = state.db.pool.acquire().await?;
    let policies = store::upgrade_policies::list(&mut conn, org).await?;
    let mut out: BTreeMap<(usize, semver::Version), HashSet<ClusterId>> = BTreeMap::new();
    if !policies.iter().any(|p| p.spec.mode == Mode::Automatic && !p.spec.excluded) {
        return Ok((policies, out));
    }
    let every = Selector::default();
    let clusters = store::clusters::list(&mut conn, org, &ListQuery { selector: &every, status: None, after_name: None, limit: 100_000 }).await?;
    let versions = store::inventory::control_plane_versions(&mut conn, org).await?;
    // The open rollouts before the declines: an abort saves both at once, so a rollout seen
    // open here keeps its clusters out, and one seen aborted has its declines read after it.
    let busy: HashSet<ClusterId> =
        store::rollouts::open(&mut conn, org).await?.iter().flat_map(|r| r.clusters.iter().filter(|c| !c.phase.settled()).map(|c| c.id)).collect();
    let declined = store::upgrade_declines::of_org(&mut conn, org).await?;
    drop(conn);
    for c in &clusters {
        let Some(p) = upgrade_policies::effective(&policies, &c.labels) else { continue };
        if p.spec.mode != Mode::Automatic || p.spec.excluded || busy.contains(&c.id) {
            continue;
        }
        let Some(from) = versions.get(&c.id).and_then(|v| parse_version(v).ok()) else { continue };
        let channel = p.spec.channel;
        // A pinned cluster is proposed its pin only; otherwise the newest release it can reach
        // (its agent new enough for every hop).
        let target = match &p.pinned {
            Some(pin) => (*pin > from && catalog.path(&from, pin, channel).is_ok()).then(|| pin.clone()),
            None => catalog
                .upgrades(&from, channel)
                .into_iter()
                .find(|(_, hops)| agent_blocks(hops, c.agent_version.as_deref()).is_none())
                .map(|(r, _)| r.version.clone()),
        };
        let Some(target) = target.filter(|t| !declined.contains(&(c.id, t.to_string()))) else { continue };
        let index = policies.iter().position(|q| q.id == p.id).expect("the effective policy is one of them");
        out.entry((index, target)).or_default().insert(c.id);
    }
    Ok((policies, out))
}

async fn propose(state: &AppState, org: OrgId) -> anyhow::Result<()> {
    let (policies, proposals) = proposals(state, org).await?;
    if proposals.is_empty() {
        return Ok(());
    }
    let catalog = state.releases.get(&state.db, state.clock.now_ms()).await?;
    let settings = Settings::default();
    let waves = Waves::new(settings.waves.clone()).map_err(|e| anyhow::anyhow!("the default wave settings are wrong: {e:?}"))?;
    for ((index, target), ids) in proposals {
        let policy = &policies[index];
        let selector: Selector = policy.spec.selector.parse().map_err(|e: crate::domain::labels::LabelError| anyhow::anyhow!("{}", e.message))?;
        let plan = start::plan(state, org, &catalog, &target, &selector, &waves, |id| ids.contains(&id)).await?;
        if plan.waves.is_empty() {
            continue;
        }
        match start::start(state, org, plan, policy.spec.selector.clone(), settings.clone(), StartedBy::Policy(&policy.spec.name)).await {
            Ok(r) => {
                tracing::info!(%org, rollout = %r.id, target = %target, policy = %policy.spec.name, clusters = r.clusters.len(), "automatic rollout started")
            }
            // A person started one over some of them meanwhile: the next look proposes the rest.
            Err(StartError::Busy(names)) => tracing::debug!(%org, ?names, "automatic rollout deferred"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
