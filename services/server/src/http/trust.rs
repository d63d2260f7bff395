//! The organization's trust anchors: the roots every cluster's mesh trusts and the service signs
//! cluster issuers with. Admins generate or upload one; no route ever returns a private key.
//! The issuer the service last signed for a cluster is in the cluster's certificates
//! (`http::certificates`).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use meshfleet_pki::anchor::check_upload;
use meshfleet_pki::mint::{self, CaMaterial, CaProfile};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::ApiError;
use super::extract::ApiJson;
use super::problems::{Conflict, Forbidden, Internal, Invalid, JsonBody, Unauthenticated};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::trust::{self, Anchor, AnchorSource, AnchorState, SignedIssuer};
use crate::domain::{CommandId, Role};
use crate::store::{self, audit};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_anchors, generate_anchor)).routes(routes!(upload_anchor)).routes(routes!(set_trust_domain))
}

/// A trust anchor: its certificate (public) and where it stands; never its key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AnchorView {
    pub id: uuid::Uuid,
    /// SHA-256 of the certificate's DER, hex: how bundles, issuers and proxies name it.
    pub fingerprint: String,
    pub subject: String,
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub state: AnchorState,
    pub source: AnchorSource,
    pub certificate_pem: String,
    pub created_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<Anchor> for AnchorView {
    fn from(a: Anchor) -> Self {
        AnchorView {
            id: a.id,
            fingerprint: a.fingerprint,
            subject: a.subject,
            not_before: to_rfc3339(a.not_before),
            not_after: to_rfc3339(a.not_after),
            state: a.state,
            source: a.source,
            certificate_pem: a.cert_pem,
            created_by: a.created_by,
            created_at: to_rfc3339(a.created_at),
        }
    }
}

/// The organization's trust: its SPIFFE trust domain and its anchors, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrustView {
    pub trust_domain: String,
    pub anchors: Vec<AnchorView>,
}

/// A new anchor made by the service: an ECDSA P-256 key, sealed at rest.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateAnchorRequest {
    /// The certificate's common name, 1 to 64 printable characters; default
    /// `meshfleet trust anchor <trust domain>`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[\\x20-\\x7e]+$")]
    pub common_name: Option<String>,
    /// 1 to 3650; default the `anchor_lifetime_secs` setting (1 year).
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    pub lifetime_days: Option<i64>,
}

/// An anchor the organization brings: a self-signed CA certificate that may sign certificates,
/// currently valid, with its private key (ECDSA P-256/P-384 or Ed25519; PEM, PKCS#8 or SEC1).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadAnchorRequest {
    #[schema(min_length = 1, max_length = 16384)]
    pub certificate_pem: String,
    #[schema(min_length = 1, max_length = 16384)]
    pub private_key_pem: String,
}

/// The organization's trust domain and anchors.
#[utoipa::path(get, path = "/api/v1/trust-anchors", tag = "certificates",
    responses((status = 200, body = TrustView), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_anchors(State(state): State<AppState>, auth: Principal) -> Result<Json<TrustView>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let trust_domain = store::trust::trust_domain(&mut conn, auth.org_id).await?;
    let anchors = store::trust::anchors(&mut conn, auth.org_id).await?.into_iter().map(Into::into).collect();
    Ok(Json(TrustView { trust_domain, anchors }))
}

/// The organization's SPIFFE trust domain: the one its clusters' controllers use.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustDomain {
    /// 1 to 253 lowercase letters, digits, `-` and `.`.
    #[schema(min_length = 1, max_length = 253, pattern = "^[a-z0-9.-]+$")]
    pub trust_domain: String,
}

/// Sets the organization's trust domain (admins; default `cluster.local`), before its first
/// trust anchor: anchors and issuers are made for it, so once one exists it is fixed (409
/// `anchors-exist`).
#[utoipa::path(put, path = "/api/v1/trust-domain", tag = "certificates", request_body = TrustDomain,
    responses((status = 200, body = TrustDomain), JsonBody, Unauthenticated, Forbidden, Conflict, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn set_trust_domain(State(state): State<AppState>, auth: Principal, ApiJson(req): ApiJson<TrustDomain>) -> Result<Json<TrustDomain>, ApiError> {
    auth.require(Role::Admin)?;
    if !meshfleet_pki::spiffe::valid_name(&req.trust_domain) {
        return Err(ApiError::field("trust_domain", "must be 1 to 253 lowercase letters, digits, '-' and '.'"));
    }
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    if !store::trust::anchors(&mut tx, auth.org_id).await?.is_empty() {
        let detail = "the organization has trust anchors, made for its current trust domain".to_owned();
        return Err(ApiError::Conflict { kind: "anchors-exist", detail, field: Some("trust_domain".into()) });
    }
    let before = store::trust::trust_domain(&mut tx, auth.org_id).await?;
    store::trust::set_trust_domain(&mut tx, auth.org_id, &req.trust_domain).await?;
    let details = serde_json::json!({ "from": before, "to": req.trust_domain });
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "trust_domain.update", ("organization", auth.org_id.to_string()), details).await?;
    tx.commit().await?;
    Ok(Json(req))
}

/// Generates the organization's trust anchor (admins). An organization has one active anchor;
/// replacing it is a trust-anchor rotation (409 `anchor-exists`).
#[utoipa::path(post, path = "/api/v1/trust-anchors", tag = "certificates", request_body = GenerateAnchorRequest,
    responses((status = 201, body = AnchorView), JsonBody, Unauthenticated, Forbidden, Conflict, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn generate_anchor(
    State(state): State<AppState>,
    auth: Principal,
    ApiJson(req): ApiJson<GenerateAnchorRequest>,
) -> Result<(StatusCode, Json<AnchorView>), ApiError> {
    auth.require(Role::Admin)?;
    let material = generated(&state, &auth, &req).await?;
    keep(&state, &auth, material, AnchorSource::Generated).await
}

/// A new anchor as the request asks, with the service's defaults.
pub(super) async fn generated(state: &AppState, auth: &Principal, req: &GenerateAnchorRequest) -> Result<CaMaterial, ApiError> {
    let lifetime = match req.lifetime_days {
        None => state.config.anchor_lifetime,
        Some(d) if (1..=3650).contains(&d) => Duration::from_secs(d as u64 * 86_400),
        Some(_) => return Err(ApiError::field("lifetime_days", "must be from 1 to 3650")),
    };
    if let Some(cn) = &req.common_name {
        if cn.is_empty() || cn.len() > 64 || !cn.chars().all(|c| (' '..='~').contains(&c)) {
            return Err(ApiError::field("common_name", "must be 1 to 64 printable ASCII characters"));
        }
    }
    let mut conn = state.db.pool.acquire().await?;
    let trust_domain = store::trust::trust_domain(&mut conn, auth.org_id).await?;
    drop(conn);
    let default_cn = format!("meshfleet trust anchor {trust_domain}");
    let mut profile = CaProfile::new(req.common_name.as_deref().unwrap_or(&default_cn), lifetime);
    profile.not_before = state.clock.now_system() - mint::BACKDATE;
    profile.not_after = profile.not_before + mint::BACKDATE + lifetime;
    mint::new_anchor(&profile).map_err(|e| ApiError::Internal(e.into()))
}

/// The most characters a PEM input may have: one certificate or key, with room to spare.
const MAX_PEM_CHARS: usize = 16_384;

/// An uploaded anchor, once it passes every check.
pub(super) fn uploaded(state: &AppState, req: &UploadAnchorRequest) -> Result<CaMaterial, ApiError> {
    let too_long = |v: &str| v.is_empty() || v.chars().count() > MAX_PEM_CHARS;
    for (field, value) in [("certificate_pem", &req.certificate_pem), ("private_key_pem", &req.private_key_pem)] {
        if too_long(value) {
            return Err(ApiError::field(field, format!("must be 1 to {MAX_PEM_CHARS} characters")));
        }
    }
    check_upload(&req.certificate_pem, &req.private_key_pem, state.clock.now_system()).map_err(|e| ApiError::Refused {
        kind: e.reason(),
        detail: e.to_string(),
        field: e.field(),
    })
}

/// Uploads the organization's trust anchor (admins), checked first: each refusal is a 422
/// whose type names the reason (`not-a-ca`, `no-key-cert-sign`, `not-self-signed`, `expired`,
/// `not-yet-valid`, `unsupported-algorithm`, `key-mismatch`, `malformed-certificate`,
/// `malformed-key`) and whose field is the input at fault. Replacing an active anchor is a
/// trust-anchor rotation (409 `anchor-exists`).
#[utoipa::path(post, path = "/api/v1/trust-anchors/upload", tag = "certificates", request_body = UploadAnchorRequest,
    responses((status = 201, body = AnchorView), JsonBody, Unauthenticated, Forbidden, Conflict, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn upload_anchor(
    State(state): State<AppState>,
    auth: Principal,
    ApiJson(req): ApiJson<UploadAnchorRequest>,
) -> Result<(StatusCode, Json<AnchorView>), ApiError> {
    auth.require(Role::Admin)?;
    let material = uploaded(&state, &req)?;
    keep(&state, &auth, material, AnchorSource::Uploaded).await
}

/// Stores a new anchor as the organization's active one, its key sealed, with an audit entry.
async fn keep(state: &AppState, auth: &Principal, material: CaMaterial, source: AnchorSource) -> Result<(StatusCode, Json<AnchorView>), ApiError> {
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    if store::trust::anchors(&mut tx, auth.org_id).await?.iter().any(|a| a.state.trusted()) {
        let detail = "the organization has a trust anchor; replacing it is a trust-anchor rotation".to_owned();
        return Err(ApiError::Conflict { kind: "anchor-exists", detail, field: None });
    }
    let view = insert(state, &mut tx, auth, material, source, AnchorState::Active, now).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Inserts a new anchor in `anchor_state`, its key sealed, with an audit entry.
pub(super) async fn insert(
    state: &AppState,
    conn: &mut store::Conn,
    auth: &Principal,
    material: CaMaterial,
    source: AnchorSource,
    anchor_state: AnchorState,
    now: i64,
) -> Result<AnchorView, ApiError> {
    let info = meshfleet_pki::inspect::inspect(&material.cert_der).map_err(|e| ApiError::Internal(e.into()))?;
    let anchor = Anchor {
        id: uuid::Uuid::now_v7(),
        org_id: auth.org_id,
        fingerprint: meshfleet_pki::pem::fingerprint(&material.cert_der),
        subject: info.subject,
        cert_pem: meshfleet_pki::pem::cert_to_pem(&material.cert_der),
        not_before: info.not_before_unix * 1000,
        not_after: info.not_after_unix * 1000,
        state: anchor_state,
        source,
        created_by: format!("{}:{}", auth.actor.kind(), auth.actor.id()),
        created_at: now,
    };
    store::trust::insert_anchor(conn, &anchor, &state.sealer.seal(material.key_pem.as_bytes())).await?;
    let view = AnchorView::from(anchor);
    let details = serde_json::json!({ "fingerprint": view.fingerprint, "subject": view.subject, "not_after": view.not_after, "state": view.state });
    audit::record(conn, auth.org_id, now, &auth.actor, &format!("trust_anchor.{}", source.as_str()), ("trust_anchor", view.id.to_string()), details).await?;
    Ok(view)
}

/// The issuer the service last signed for a cluster (its key never left the cluster), and when
/// the `issuer-rotation` job signs the next one.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuerView {
    pub fingerprint: String,
    /// The anchor that signed it.
    pub anchor_fingerprint: String,
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub rotation_due_at: chrono::DateTime<chrono::Utc>,
    pub signed_at: chrono::DateTime<chrono::Utc>,
    /// The rotate-issuer command it was signed for.
    pub command_id: CommandId,
    pub certificate_pem: String,
}

impl IssuerView {
    pub(super) fn new(i: SignedIssuer, renew_fraction: f64) -> Self {
        IssuerView {
            rotation_due_at: to_rfc3339(trust::issuer_due_at(i.not_before, i.not_after, renew_fraction)),
            fingerprint: i.fingerprint,
            anchor_fingerprint: i.anchor_fingerprint,
            not_before: to_rfc3339(i.not_before),
            not_after: to_rfc3339(i.not_after),
            signed_at: to_rfc3339(i.signed_at),
            command_id: i.command_id,
            certificate_pem: i.cert_pem,
        }
    }
}
