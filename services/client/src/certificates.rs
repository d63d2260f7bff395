//! What the organization trusts and what expires when: its trust anchors, a cluster's
//! certificates (bundle, issuer, proxies' leaves), and the next expiry anywhere.

use serde::Deserialize;

use super::{Client, Reply, Result};

/// A trust anchor (never its key).
#[derive(Debug, Clone, Deserialize)]
pub struct Anchor {
    pub fingerprint: String,
    pub subject: String,
    pub not_after: String,
    /// active, next, retiring or inactive.
    pub state: String,
    /// generated or uploaded.
    pub source: String,
}

/// The organization's trust domain and anchors (`GET /api/v1/trust-anchors`).
#[derive(Debug, Clone, Deserialize)]
pub struct Trust {
    pub trust_domain: String,
    pub anchors: Vec<Anchor>,
}

/// A certificate a cluster holds, as its agent reported it.
#[derive(Debug, Clone, Deserialize)]
pub struct HeldCertificate {
    pub fingerprint: String,
    pub subject: String,
    pub not_after: String,
    pub anchor_state: Option<String>,
}

/// The issuer the service last signed for a cluster.
#[derive(Debug, Clone, Deserialize)]
pub struct SignedIssuer {
    pub fingerprint: String,
    pub anchor_fingerprint: String,
    pub not_after: String,
    pub rotation_due_at: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProxyLeaves {
    pub pods: u32,
    pub reporting: u32,
    pub earliest_expiry: Option<String>,
    pub leaf_not_on_active_anchor: u32,
}

/// A cluster's certificates (`GET /api/v1/clusters/{id}/certificates`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterCertificates {
    pub bundle: Vec<HeldCertificate>,
    pub issuer: Option<HeldCertificate>,
    pub signed_by_service: Option<SignedIssuer>,
    pub proxies: ProxyLeaves,
}

/// The next certificate to expire anywhere in the organization.
#[derive(Debug, Clone, Deserialize)]
pub struct NextExpiry {
    /// trust-anchor, issuer or proxy-leaf.
    pub kind: String,
    pub cluster_id: Option<String>,
    pub fingerprint: Option<String>,
    pub not_after: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NextExpiryView {
    pub next: Option<NextExpiry>,
}

impl Client {
    pub async fn trust(&self) -> Result<Reply<Trust>> {
        self.get_reply("trust anchors", "/api/v1/trust-anchors", &[]).await
    }

    pub async fn cluster_certificates(&self, cluster_id: &str) -> Result<Reply<ClusterCertificates>> {
        self.get_reply("cluster certificates", &format!("/api/v1/clusters/{cluster_id}/certificates"), &[]).await
    }

    /// What expires next (`GET /api/v1/certificates/next-expiry`).
    pub async fn next_expiry(&self) -> Result<Reply<NextExpiryView>> {
        self.get_reply("next certificate expiry", "/api/v1/certificates/next-expiry", &[]).await
    }
}
