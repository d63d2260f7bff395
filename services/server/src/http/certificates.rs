//! What expires when: per cluster, the anchors its bundle holds, its issuer (and which anchor
//! signed it), and its proxies' leaves (earliest and latest expiry, how many are not yet on the
//! organization's active anchor); per organization, the next thing to expire anywhere.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::ApiError;
use super::extract::ApiPath;
use super::problems::{BadRequest, Internal, NotFound, Unauthenticated};
use super::trust::IssuerView;
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::trust::AnchorState;
use crate::domain::ClusterId;
use crate::store::{self, inventory::CertificateInfo};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(cluster_certificates)).routes(routes!(next_expiry))
}

/// A certificate the cluster holds, as its agent reported it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeldCertificate {
    pub fingerprint: String,
    pub subject: String,
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
    /// The organization anchor's state, when this is (or is signed by) one of its anchors.
    pub anchor_state: Option<AnchorState>,
}

/// The cluster's proxies' leaf certificates, from what each reported.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProxyLeaves {
    pub pods: u32,
    /// Pods whose proxy reported its leaf.
    pub reporting: u32,
    pub earliest_expiry: Option<chrono::DateTime<chrono::Utc>>,
    pub latest_expiry: Option<chrono::DateTime<chrono::Utc>>,
    /// Reporting pods whose bundle lacks the organization's active anchor.
    pub bundle_without_active_anchor: u32,
    /// Reporting pods whose leaf does not chain to the organization's active anchor.
    pub leaf_not_on_active_anchor: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterCertificatesView {
    /// The trust anchors in the cluster's bundle.
    pub bundle: Vec<HeldCertificate>,
    /// The issuer the controller signs with; `anchor_state` is that of the organization
    /// anchor that signed it, when the service signed it.
    pub issuer: Option<HeldCertificate>,
    /// The issuer the service last signed for the cluster, if any.
    pub signed_by_service: Option<IssuerView>,
    pub proxies: ProxyLeaves,
}

/// The cluster's certificates: bundle, issuer, and its proxies' leaves.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/certificates", tag = "certificates",
    params(("id" = ClusterId, Path, description = "Cluster id")),
    responses((status = 200, body = ClusterCertificatesView), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
async fn cluster_certificates(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<ClusterId>,
) -> Result<Json<ClusterCertificatesView>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    store::clusters::get(&mut conn, auth.org_id, id).await?.ok_or(ApiError::NotFound("cluster"))?;
    let anchors = store::trust::anchors(&mut conn, auth.org_id).await?;
    let signed = store::trust::issuer(&mut conn, auth.org_id, id).await?;
    let facts = store::inventory::facts(&mut conn, auth.org_id, id).await?.map(|(f, _)| f).unwrap_or_default();
    let pods = store::inventory::pods(&mut conn, auth.org_id, id).await?;
    let state_of = |fp: &str| anchors.iter().find(|a| a.fingerprint == fp).map(|a| a.state);
    let held = |c: &CertificateInfo, anchor_state: Option<AnchorState>| HeldCertificate {
        fingerprint: c.sha256_fingerprint.clone(),
        subject: c.subject.clone(),
        not_before: to_rfc3339(c.not_before),
        not_after: to_rfc3339(c.not_after),
        anchor_state,
    };
    let bundle = facts.certificates.iter().filter(|c| c.role == "trust-anchor").map(|c| held(c, state_of(&c.sha256_fingerprint))).collect();
    let issuer = facts.certificates.iter().find(|c| c.role == "issuer").map(|c| {
        let signer = signed.as_ref().filter(|s| s.fingerprint == c.sha256_fingerprint).and_then(|s| state_of(&s.anchor_fingerprint));
        held(c, signer)
    });
    let active = anchors.iter().find(|a| a.state == AnchorState::Active).map(|a| a.fingerprint.as_str());
    let reporting: Vec<_> = pods.iter().filter(|p| p.leaf_not_after.is_some()).collect();
    let expiries = || reporting.iter().filter_map(|p| p.leaf_not_after);
    let proxies = ProxyLeaves {
        pods: pods.len() as u32,
        reporting: reporting.len() as u32,
        earliest_expiry: expiries().min().map(to_rfc3339),
        latest_expiry: expiries().max().map(to_rfc3339),
        bundle_without_active_anchor: reporting.iter().filter(|p| active.is_some_and(|a| !p.bundle_fingerprints.iter().any(|f| f == a))).count() as u32,
        leaf_not_on_active_anchor: reporting.iter().filter(|p| active.is_some_and(|a| p.leaf_anchor_fingerprint.as_deref() != Some(a))).count() as u32,
    };
    let signed_by_service = signed.map(|s| IssuerView::new(s, state.config.issuer_renew_fraction));
    Ok(Json(ClusterCertificatesView { bundle, issuer, signed_by_service, proxies }))
}

/// The next certificate to expire anywhere in the organization.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NextExpiry {
    /// `trust-anchor`, `issuer` or `proxy-leaf`.
    pub kind: String,
    /// The cluster that holds it; none for an organization anchor.
    pub cluster_id: Option<ClusterId>,
    /// The certificate's fingerprint (none for the earliest of a cluster's proxy leaves).
    pub fingerprint: Option<String>,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NextExpiryView {
    /// Null when the organization has no certificate the service knows of.
    pub next: Option<NextExpiry>,
}

/// What expires next anywhere in the organization: its anchors, its clusters' issuers and
/// anchors as reported, and its proxies' leaves.
#[utoipa::path(get, path = "/api/v1/certificates/next-expiry", tag = "certificates",
    responses((status = 200, body = NextExpiryView), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn next_expiry(State(state): State<AppState>, auth: Principal) -> Result<Json<NextExpiryView>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let mut candidates: Vec<(i64, &'static str, Option<ClusterId>, Option<String>)> = Vec::new();
    for a in store::trust::anchors(&mut conn, auth.org_id).await?.into_iter().filter(|a| a.state.trusted()) {
        candidates.push((a.not_after, "trust-anchor", None, Some(a.fingerprint)));
    }
    for (cluster, facts) in store::inventory::org_facts(&mut conn, auth.org_id).await? {
        for c in facts.certificates {
            let kind = if c.role == "issuer" { "issuer" } else { "trust-anchor" };
            candidates.push((c.not_after, kind, Some(cluster), Some(c.sha256_fingerprint)));
        }
    }
    for (cluster, earliest) in store::inventory::earliest_leaves(&mut conn, auth.org_id).await? {
        candidates.push((earliest, "proxy-leaf", Some(cluster), None));
    }
    let next = candidates.into_iter().min_by_key(|c| c.0).map(|(not_after, kind, cluster_id, fingerprint)| NextExpiry {
        kind: kind.into(),
        cluster_id,
        fingerprint,
        not_after: to_rfc3339(not_after),
    });
    Ok(Json(NextExpiryView { next }))
}
