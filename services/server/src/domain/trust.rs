//! The mesh's PKI as the service runs it: an organization's trust anchors and their states, and
//! when a cluster's issuer is due to be signed again. The X.509 work itself is `meshfleet_pki`'s.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where an anchor stands in its organization's trust. Every cluster's bundle holds the active,
/// next and retiring anchors; issuers are signed by the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnchorState {
    /// Signs issuers.
    Active,
    /// Distributed ahead of a rotation, signs nothing yet.
    Next,
    /// Replaced by a rotation, still trusted until every leaf chains to the new anchor.
    Retiring,
    /// Out of every bundle; kept for the audit trail.
    Inactive,
}

impl AnchorState {
    pub fn as_str(self) -> &'static str {
        match self {
            AnchorState::Active => "active",
            AnchorState::Next => "next",
            AnchorState::Retiring => "retiring",
            AnchorState::Inactive => "inactive",
        }
    }

    /// In the clusters' trust bundles.
    pub fn trusted(self) -> bool {
        self != AnchorState::Inactive
    }
}

/// How an anchor came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnchorSource {
    Generated,
    Uploaded,
}

impl AnchorSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AnchorSource::Generated => "generated",
            AnchorSource::Uploaded => "uploaded",
        }
    }
}

/// One trust anchor of an organization; its private key is sealed in the store and never
/// leaves it but to sign.
#[derive(Debug, Clone, PartialEq)]
pub struct Anchor {
    pub id: uuid::Uuid,
    pub org_id: super::OrgId,
    pub fingerprint: String,
    pub subject: String,
    pub cert_pem: String,
    pub not_before: i64,
    pub not_after: i64,
    pub state: AnchorState,
    pub source: AnchorSource,
    pub created_by: String,
    pub created_at: i64,
}

/// The issuer the service last signed for a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedIssuer {
    pub cluster_id: super::ClusterId,
    pub org_id: super::OrgId,
    pub command_id: super::CommandId,
    pub fingerprint: String,
    pub anchor_fingerprint: String,
    pub cert_pem: String,
    pub not_before: i64,
    pub not_after: i64,
    pub signed_at: i64,
}

/// When an issuer valid from `not_before` to `not_after` (ms) is due to be signed again: once
/// no more than `renew_fraction` of its lifetime is left. With one half, a service outage of up
/// to half the issuer lifetime never lets a cluster's issuer expire.
pub fn issuer_due_at(not_before: i64, not_after: i64, renew_fraction: f64) -> i64 {
    let lifetime = (not_after - not_before).max(0) as f64;
    not_after - (lifetime * renew_fraction.clamp(0.0, 1.0)) as i64
}

/// Where a trust-anchor rotation stands. Forward: every cluster's bundle gains the new anchor
/// (`distribute`), its issuer is signed by the new anchor (`reissue`), the old anchor leaves its
/// bundle (`retire`). Aborted, it walks back the way it came, from wherever it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationPhase {
    Distribute,
    Reissue,
    Retire,
    Done,
    /// Aborted during `retire`: the old anchor returns to every bundle.
    RollbackRetire,
    /// Aborted during `reissue` (or after `rollback_retire`): issuers are signed by the old
    /// anchor again.
    RollbackReissue,
    /// Aborted: the new anchor leaves every bundle.
    RollbackDistribute,
    Aborted,
}

/// What each cluster must do in a phase, and what shows it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// set-trust-bundle with both anchors; done when every pod's proxy trusts both.
    Distribute,
    /// rotate-issuer; done when every pod's leaf chains to `anchor`.
    Reissue { to_new: bool },
    /// set-trust-bundle with one anchor; done when every pod's proxy trusts exactly it.
    Narrow { to_new: bool },
}

impl RotationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RotationPhase::Distribute => "distribute",
            RotationPhase::Reissue => "reissue",
            RotationPhase::Retire => "retire",
            RotationPhase::Done => "done",
            RotationPhase::RollbackRetire => "rollback_retire",
            RotationPhase::RollbackReissue => "rollback_reissue",
            RotationPhase::RollbackDistribute => "rollback_distribute",
            RotationPhase::Aborted => "aborted",
        }
    }

    pub fn finished(self) -> bool {
        matches!(self, RotationPhase::Done | RotationPhase::Aborted)
    }

    /// The step each cluster takes in this phase (none once finished).
    pub fn step(self) -> Option<Step> {
        match self {
            RotationPhase::Distribute => Some(Step::Distribute),
            RotationPhase::Reissue => Some(Step::Reissue { to_new: true }),
            RotationPhase::Retire => Some(Step::Narrow { to_new: true }),
            RotationPhase::RollbackRetire => Some(Step::Distribute),
            RotationPhase::RollbackReissue => Some(Step::Reissue { to_new: false }),
            RotationPhase::RollbackDistribute => Some(Step::Narrow { to_new: false }),
            RotationPhase::Done | RotationPhase::Aborted => None,
        }
    }

    /// The phase after every cluster has done this one's step, and the anchor states it
    /// starts with: (old, new).
    pub fn next(self) -> (RotationPhase, Option<(AnchorState, AnchorState)>) {
        match self {
            RotationPhase::Distribute => (RotationPhase::Reissue, Some((AnchorState::Retiring, AnchorState::Active))),
            RotationPhase::Reissue => (RotationPhase::Retire, None),
            RotationPhase::Retire => (RotationPhase::Done, Some((AnchorState::Inactive, AnchorState::Active))),
            RotationPhase::RollbackRetire => (RotationPhase::RollbackReissue, None),
            RotationPhase::RollbackReissue => (RotationPhase::RollbackDistribute, None),
            RotationPhase::RollbackDistribute => (RotationPhase::Aborted, Some((AnchorState::Active, AnchorState::Inactive))),
            done => (done, None),
        }
    }

    /// Where an abort leads, and the anchor states it starts with (the old anchor active
    /// again, so issuers are signed by it); `None`: finished, or already walking back.
    pub fn abort(self) -> Option<(RotationPhase, Option<(AnchorState, AnchorState)>)> {
        let back = Some((AnchorState::Active, AnchorState::Next));
        match self {
            RotationPhase::Distribute => Some((RotationPhase::RollbackDistribute, None)),
            RotationPhase::Reissue => Some((RotationPhase::RollbackReissue, back)),
            RotationPhase::Retire => Some((RotationPhase::RollbackRetire, back)),
            _ => None,
        }
    }
}

/// Where one cluster stands in a rotation's current phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProgressState {
    /// Its command is not sent yet, or not answered.
    #[default]
    WaitingForAgent,
    /// Its command succeeded; not every proxy has done its part yet.
    WaitingForProxies,
    Done,
    /// Its command failed or expired: resume retries it.
    Failed,
    Excluded,
}

impl ProgressState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProgressState::WaitingForAgent => "waiting_for_agent",
            ProgressState::WaitingForProxies => "waiting_for_proxies",
            ProgressState::Done => "done",
            ProgressState::Failed => "failed",
            ProgressState::Excluded => "excluded",
        }
    }

    /// Nothing more is asked of the cluster in this phase.
    pub fn settled(self) -> bool {
        matches!(self, ProgressState::Done | ProgressState::Excluded)
    }
}

/// One cluster's part in a rotation's current phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterProgress {
    /// The phase this progress is for; a cluster behind the rotation's phase starts it afresh.
    pub phase: Option<RotationPhase>,
    /// The command sent for this phase.
    pub command_id: Option<super::CommandId>,
    pub state: ProgressState,
    pub message: String,
    /// Pods whose proxies have done this phase's part, of all the cluster's meshed pods.
    pub pods_done: u32,
    pub pods_total: u32,
}

/// A trust-anchor rotation of one organization, from `old` to `new` (anchor ids).
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub id: uuid::Uuid,
    pub org_id: super::OrgId,
    pub old_anchor: uuid::Uuid,
    pub new_anchor: uuid::Uuid,
    pub phase: RotationPhase,
    pub paused: bool,
    /// Clusters an admin took out of the rotation (their agent is gone for good, say).
    pub excluded: Vec<super::ClusterId>,
    /// Each cluster's progress, by cluster id.
    pub clusters: std::collections::BTreeMap<super::ClusterId, ClusterProgress>,
    pub started_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_walks_forward_or_back_the_way_it_came() {
        let mut phase = RotationPhase::Distribute;
        let mut seen = vec![phase];
        while !phase.finished() {
            phase = phase.next().0;
            seen.push(phase);
        }
        assert_eq!(seen, [RotationPhase::Distribute, RotationPhase::Reissue, RotationPhase::Retire, RotationPhase::Done]);
        let (mut phase, _) = RotationPhase::Reissue.abort().unwrap();
        let mut back = vec![phase];
        while !phase.finished() {
            phase = phase.next().0;
            back.push(phase);
        }
        assert_eq!(back, [RotationPhase::RollbackReissue, RotationPhase::RollbackDistribute, RotationPhase::Aborted]);
        // From retire the old anchor first returns to every bundle, then the rest as above.
        let (phase, states) = RotationPhase::Retire.abort().unwrap();
        assert_eq!((phase, states), (RotationPhase::RollbackRetire, Some((AnchorState::Active, AnchorState::Next))));
        assert_eq!((phase.step(), phase.next().0), (Some(Step::Distribute), RotationPhase::RollbackReissue));
        for p in [RotationPhase::Done, RotationPhase::RollbackRetire, RotationPhase::RollbackReissue, RotationPhase::RollbackDistribute, RotationPhase::Aborted]
        {
            assert!(p.abort().is_none(), "{p:?} is finished or already walking back");
        }
        // Every phase's anchor states leave exactly one active anchor.
        for (from, to) in [RotationPhase::Distribute.next().1, RotationPhase::Retire.next().1, RotationPhase::RollbackDistribute.next().1].into_iter().flatten()
        {
            assert!((from == AnchorState::Active) != (to == AnchorState::Active));
        }
    }

    #[test]
    fn an_issuer_is_due_with_the_configured_share_of_its_lifetime_left() {
        assert_eq!(issuer_due_at(0, 30_000, 0.5), 15_000);
        assert_eq!(issuer_due_at(1_000, 31_000, 1.0 / 3.0), 21_000);
        assert_eq!(issuer_due_at(10, 5, 0.5), 5, "a backwards validity is due at once");
    }

    #[test]
    fn states_are_stored_as_their_serde_words_and_only_inactive_anchors_leave_bundles() {
        for s in [AnchorState::Active, AnchorState::Next, AnchorState::Retiring, AnchorState::Inactive] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.trusted(), s != AnchorState::Inactive);
        }
        assert_eq!(serde_json::to_value(AnchorSource::Uploaded).unwrap(), AnchorSource::Uploaded.as_str());
    }
}
