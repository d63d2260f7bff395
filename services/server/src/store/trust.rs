//! The mesh's PKI as stored: organizations' trust domains and anchors (keys sealed), and the
//! issuer last signed for each cluster.

use sqlx::Row;

use super::{parse_col, word, Conn};
use crate::domain::trust::{Anchor, AnchorState, Rotation, RotationPhase, SignedIssuer};
use crate::domain::{ClusterId, OrgId};

const ANCHOR_COLUMNS: &str = "id, org_id, fingerprint, subject, cert_pem, not_before, not_after, state, source, created_by, created_at";

fn anchor(r: &sqlx::any::AnyRow) -> Result<Anchor, sqlx::Error> {
    Ok(Anchor {
        id: parse_col(&r.try_get::<String, _>("id")?, "trust_anchors.id")?,
        org_id: parse_col(&r.try_get::<String, _>("org_id")?, "trust_anchors.org_id")?,
        fingerprint: r.try_get("fingerprint")?,
        subject: r.try_get("subject")?,
        cert_pem: r.try_get("cert_pem")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        state: word(r.try_get("state")?, "trust_anchors.state")?,
        source: word(r.try_get("source")?, "trust_anchors.source")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
    })
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.set_trust_domain", skip_all)]
pub async fn set_trust_domain(conn: &mut Conn, org: OrgId, trust_domain: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE organizations SET trust_domain = $2 WHERE id = $1").bind(org.to_string()).bind(trust_domain).execute(conn).await?;
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.trust_domain", skip_all)]
pub async fn trust_domain(conn: &mut Conn, org: OrgId) -> Result<String, sqlx::Error> {
    sqlx::query("SELECT trust_domain FROM organizations WHERE id = $1").bind(org.to_string()).fetch_one(conn).await?.try_get("trust_domain")
}

/// The organization's anchors, oldest first.
#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.anchors", skip_all)]
pub async fn anchors(conn: &mut Conn, org: OrgId) -> Result<Vec<Anchor>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {ANCHOR_COLUMNS} FROM trust_anchors WHERE org_id = $1 ORDER BY created_at, id"))
        .bind(org.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(anchor).collect()
}

/// The anchor in `state` and its sealed key (at most one is active, one next).
#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.anchor_in", skip_all)]
pub async fn anchor_in(conn: &mut Conn, org: OrgId, state: AnchorState) -> Result<Option<(Anchor, String)>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {ANCHOR_COLUMNS}, key_sealed FROM trust_anchors WHERE org_id = $1 AND state = $2"))
        .bind(org.to_string())
        .bind(state.as_str())
        .fetch_optional(conn)
        .await?;
    row.map(|r| Ok((anchor(&r)?, r.try_get("key_sealed")?))).transpose()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.insert_anchor", skip_all)]
pub async fn insert_anchor(conn: &mut Conn, a: &Anchor, key_sealed: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO trust_anchors ({ANCHOR_COLUMNS}, key_sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"))
        .bind(a.id.to_string())
        .bind(a.org_id.to_string())
        .bind(&a.fingerprint)
        .bind(&a.subject)
        .bind(&a.cert_pem)
        .bind(a.not_before)
        .bind(a.not_after)
        .bind(a.state.as_str())
        .bind(a.source.as_str())
        .bind(&a.created_by)
        .bind(a.created_at)
        .bind(key_sealed)
        .execute(conn)
        .await?;
    Ok(())
}

const ISSUER_COLUMNS: &str = "cluster_id, org_id, command_id, fingerprint, anchor_fingerprint, cert_pem, not_before, not_after, signed_at";

/// Records the clusters' new issuers, each replacing its cluster's last one (of two for one
/// cluster, the later stands: a statement may not upsert a row twice), by multi-row upserts.
#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.record_issuers", skip_all)]
pub async fn record_issuers(conn: &mut Conn, issuers: &[&SignedIssuer]) -> Result<(), sqlx::Error> {
    const COLS: usize = 9;
    let mut latest: Vec<&SignedIssuer> = Vec::with_capacity(issuers.len());
    for i in issuers.iter().rev() {
        if !latest.iter().any(|l| l.cluster_id == i.cluster_id) {
            latest.push(i);
        }
    }
    for chunk in latest.chunks(super::rows_per_statement(conn, COLS)) {
        let sql = format!(
            "INSERT INTO cluster_issuers ({ISSUER_COLUMNS}) VALUES {} ON CONFLICT (cluster_id) DO UPDATE SET org_id = excluded.org_id,
             command_id = excluded.command_id, fingerprint = excluded.fingerprint, anchor_fingerprint = excluded.anchor_fingerprint,
             cert_pem = excluded.cert_pem, not_before = excluded.not_before, not_after = excluded.not_after, signed_at = excluded.signed_at",
            super::values_clause(chunk.len(), COLS)
        );
        let mut q = sqlx::query(&sql);
        for i in chunk {
            q = q
                .bind(i.cluster_id.to_string())
                .bind(i.org_id.to_string())
                .bind(i.command_id.to_string())
                .bind(&i.fingerprint)
                .bind(&i.anchor_fingerprint)
                .bind(&i.cert_pem)
                .bind(i.not_before)
                .bind(i.not_after)
                .bind(i.signed_at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.issuer", skip_all)]
pub async fn issuer(conn: &mut Conn, org: OrgId, cluster: ClusterId) -> Result<Option<SignedIssuer>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {ISSUER_COLUMNS} FROM cluster_issuers WHERE org_id = $1 AND cluster_id = $2"))
        .bind(org.to_string())
        .bind(cluster.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(SignedIssuer {
            cluster_id: parse_col(&r.try_get::<String, _>("cluster_id")?, "cluster_issuers.cluster_id")?,
            org_id: parse_col(&r.try_get::<String, _>("org_id")?, "cluster_issuers.org_id")?,
            command_id: parse_col(&r.try_get::<String, _>("command_id")?, "cluster_issuers.command_id")?,
            fingerprint: r.try_get("fingerprint")?,
            anchor_fingerprint: r.try_get("anchor_fingerprint")?,
            cert_pem: r.try_get("cert_pem")?,
            not_before: r.try_get("not_before")?,
            not_after: r.try_get("not_after")?,
            signed_at: r.try_get("signed_at")?,
        })
    })
    .transpose()
}

/// A connected cluster of an organization that has an active anchor, with no rotate-issuer
/// command open: what its agent last reported about its certificates, and the active anchor.
pub struct RotationCandidate {
    pub org_id: OrgId,
    pub cluster_id: ClusterId,
    pub facts_json: String,
    pub active_fingerprint: String,
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.rotation_candidates", skip_all)]
pub async fn rotation_candidates(conn: &mut Conn) -> Result<Vec<RotationCandidate>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT c.org_id AS org_id, c.id AS cluster_id, i.facts AS facts, a.fingerprint AS active
         FROM clusters c
         JOIN cluster_inventory i ON i.cluster_id = c.id
         JOIN trust_anchors a ON a.org_id = c.org_id AND a.state = 'active'
         WHERE c.status = 'connected'
           AND NOT EXISTS (SELECT 1 FROM commands m WHERE m.cluster_id = c.id AND m.kind = 'rotate-issuer' AND m.state IN {})",
        super::commands::OPEN_STATES
    ))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RotationCandidate {
                org_id: parse_col(&r.try_get::<String, _>("org_id")?, "clusters.org_id")?,
                cluster_id: parse_col(&r.try_get::<String, _>("cluster_id")?, "clusters.id")?,
                facts_json: r.try_get("facts")?,
                active_fingerprint: r.try_get("active")?,
            })
        })
        .collect()
}

/// Moves an anchor to `state`.
#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.set_anchor_state", skip_all)]
pub async fn set_anchor_state(conn: &mut Conn, org: OrgId, anchor: uuid::Uuid, state: AnchorState) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE trust_anchors SET state = $3 WHERE org_id = $1 AND id = $2")
        .bind(org.to_string())
        .bind(anchor.to_string())
        .bind(state.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

const ROTATION_COLUMNS: &str = "id, org_id, old_anchor, new_anchor, phase, paused, excluded, clusters, started_by, created_at, updated_at";

fn rotation_row(r: &sqlx::any::AnyRow) -> Result<Rotation, sqlx::Error> {
    Ok(Rotation {
        id: parse_col(&r.try_get::<String, _>("id")?, "anchor_rotations.id")?,
        org_id: parse_col(&r.try_get::<String, _>("org_id")?, "anchor_rotations.org_id")?,
        old_anchor: parse_col(&r.try_get::<String, _>("old_anchor")?, "anchor_rotations.old_anchor")?,
        new_anchor: parse_col(&r.try_get::<String, _>("new_anchor")?, "anchor_rotations.new_anchor")?,
        phase: word(r.try_get("phase")?, "anchor_rotations.phase")?,
        paused: r.try_get::<i64, _>("paused")? != 0,
        excluded: super::json_col(r, "excluded")?,
        clusters: super::json_col(r, "clusters")?,
        started_by: r.try_get("started_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.insert_rotation", skip_all)]
pub async fn insert_rotation(conn: &mut Conn, r: &Rotation) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO anchor_rotations ({ROTATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"))
        .bind(r.id.to_string())
        .bind(r.org_id.to_string())
        .bind(r.old_anchor.to_string())
        .bind(r.new_anchor.to_string())
        .bind(r.phase.as_str())
        .bind(i64::from(r.paused))
        .bind(serde_json::to_string(&r.excluded).unwrap_or_default())
        .bind(serde_json::to_string(&r.clusters).unwrap_or_default())
        .bind(&r.started_by)
        .bind(r.created_at)
        .bind(r.updated_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Saves a rotation's phase, pause, exclusions and progress, unless it changed since it was
/// read (`read`: its phase and `updated_at` then), by an admin or the job: false then, and
/// nothing is written, so neither overwrites what the other did.
#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.save_rotation", skip_all)]
pub async fn save_rotation(conn: &mut Conn, r: &Rotation, read: (RotationPhase, i64)) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE anchor_rotations SET phase = $3, paused = $4, excluded = $5, clusters = $6, updated_at = $7
         WHERE org_id = $1 AND id = $2 AND phase = $8 AND updated_at = $9",
    )
    .bind(r.org_id.to_string())
    .bind(r.id.to_string())
    .bind(r.phase.as_str())
    .bind(i64::from(r.paused))
    .bind(serde_json::to_string(&r.excluded).unwrap_or_default())
    .bind(serde_json::to_string(&r.clusters).unwrap_or_default())
    .bind(r.updated_at)
    .bind(read.0.as_str())
    .bind(read.1)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The organization's rotations, newest first.
#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.rotations", skip_all)]
pub async fn rotations(conn: &mut Conn, org: OrgId) -> Result<Vec<Rotation>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {ROTATION_COLUMNS} FROM anchor_rotations WHERE org_id = $1 ORDER BY created_at DESC, id DESC"))
        .bind(org.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(rotation_row).collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.rotation", skip_all)]
pub async fn rotation(conn: &mut Conn, org: OrgId, id: uuid::Uuid) -> Result<Option<Rotation>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {ROTATION_COLUMNS} FROM anchor_rotations WHERE org_id = $1 AND id = $2"))
        .bind(org.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(rotation_row).transpose()
}

/// Every organization's unfinished rotations that are not paused.
#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.running_rotations", skip_all)]
pub async fn running_rotations(conn: &mut Conn) -> Result<Vec<Rotation>, sqlx::Error> {
    let rows =
        sqlx::query(&format!("SELECT {ROTATION_COLUMNS} FROM anchor_rotations WHERE paused = 0 AND phase NOT IN ('done', 'aborted')")).fetch_all(conn).await?;
    rows.iter().map(rotation_row).collect()
}

/// The organization's clusters: id, status and when it was last seen.
#[tracing::instrument(target = "meshfleet_traces", name = "store.trust.org_clusters", skip_all)]
pub async fn org_clusters(conn: &mut Conn, org: OrgId) -> Result<Vec<(ClusterId, String, Option<i64>)>, sqlx::Error> {
    let rows = sqlx::query("SELECT id, status, last_seen_at FROM clusters WHERE org_id = $1 ORDER BY id").bind(org.to_string()).fetch_all(conn).await?;
    rows.iter().map(|r| Ok((parse_col(&r.try_get::<String, _>("id")?, "clusters.id")?, r.try_get("status")?, r.try_get("last_seen_at")?))).collect()
}
