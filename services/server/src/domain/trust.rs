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

#[cfg(test)]
mod tests {
    use super::*;

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
