//! The latest inventory each agent reported: cluster-wide facts (one JSON document) and the
//! meshed pods (one row each, so a delta touches only what changed).

use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use super::Conn;
use crate::domain::{ClusterId, OrgId};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Facts {
    pub kubernetes_version: String,
    pub node_count: u32,
    pub control_plane: ControlPlane,
    pub namespaces: Vec<String>,
    pub certificates: Vec<CertificateInfo>,
    /// Injection coverage: the namespaces with injection on whose pods run without the proxy.
    #[serde(default)]
    pub pods_without_proxy: Vec<UninjectedPods>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UninjectedPods {
    pub namespace: String,
    /// How many pods run without the proxy.
    pub pods: u32,
    /// Some of their names (at most 10).
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ControlPlane {
    pub version: String,
    pub replicas: u32,
    pub ready_replicas: u32,
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Component {
    pub name: String,
    pub version: String,
    pub ready: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CertificateInfo {
    /// `issuer` or `trust-anchor`.
    pub role: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub sha256_fingerprint: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub workload: String,
    pub proxy_version: String,
    pub ready: bool,
    pub restarts: u32,
    pub phase: String,
    /// What the pod's proxy trusts: SHA-256 fingerprints of its bundle's anchors (empty until
    /// its agent has read them).
    #[serde(default)]
    pub bundle_fingerprints: Vec<String>,
    /// The anchor the proxy's leaf certificate chains to, and when the leaf expires (ms).
    #[serde(default)]
    pub leaf_anchor_fingerprint: Option<String>,
    #[serde(default)]
    pub leaf_not_after: Option<i64>,
}

/// Replaces the cluster's whole inventory.
#[tracing::instrument(target = "meshfleet_traces", name = "store.inventory.replace", skip_all)]
pub async fn replace(conn: &mut Conn, org: OrgId, cluster: ClusterId, facts: &Facts, pods: &[Pod], now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM cluster_pods WHERE cluster_id = $1").bind(cluster.to_string()).execute(&mut *conn).await?;
    set_facts(conn, org, cluster, facts, now).await?;
    upsert_pods(conn, org, cluster, pods, now).await
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.inventory.set_facts", skip_all)]
pub async fn set_facts(conn: &mut Conn, org: OrgId, cluster: ClusterId, facts: &Facts, now: i64) -> Result<(), sqlx::Error> {
    let json = serde_json::to_string(facts).expect("facts always serialize");
    sqlx::query(
        "INSERT INTO cluster_inventory (cluster_id, org_id, facts, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (cluster_id) DO UPDATE SET facts = excluded.facts, updated_at = excluded.updated_at",
    )
    .bind(cluster.to_string())
    .bind(org.to_string())
    .bind(json)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if !facts.kubernetes_version.is_empty() {
        // Only when it changed: an unchanged row is not locked, so ingest transactions do not
        // queue behind each other (and the last-seen flush) on the `clusters` rows.
        sqlx::query("UPDATE clusters SET kubernetes_version = $2 WHERE id = $1 AND (kubernetes_version IS NULL OR kubernetes_version <> $2)")
            .bind(cluster.to_string())
            .bind(&facts.kubernetes_version)
            .execute(conn)
            .await?;
    }
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.inventory.upsert_pods", skip_all)]
pub async fn upsert_pods(conn: &mut Conn, org: OrgId, cluster: ClusterId, pods: &[Pod], now: i64) -> Result<(), sqlx::Error> {
    for chunk in pods.chunks(super::rows_per_statement(conn, 13)) {
        let sql = format!(
            "INSERT INTO cluster_pods (cluster_id, org_id, namespace, name, workload, proxy_version, ready, restarts, phase, updated_at,
             bundle_fingerprints, leaf_anchor, leaf_not_after)
             VALUES {} ON CONFLICT (cluster_id, namespace, name) DO UPDATE SET workload = excluded.workload,
             proxy_version = excluded.proxy_version, ready = excluded.ready, restarts = excluded.restarts,
             phase = excluded.phase, updated_at = excluded.updated_at, bundle_fingerprints = excluded.bundle_fingerprints,
             leaf_anchor = excluded.leaf_anchor, leaf_not_after = excluded.leaf_not_after",
            super::values_clause(chunk.len(), 13)
        );
        let mut q = sqlx::query(&sql);
        for p in chunk {
            q = q
                .bind(cluster.to_string())
                .bind(org.to_string())
                .bind(&p.namespace)
                .bind(&p.name)
                .bind(&p.workload)
                .bind(&p.proxy_version)
                .bind(i64::from(p.ready))
                .bind(i64::from(p.restarts))
                .bind(&p.phase)
                .bind(now)
                .bind(p.bundle_fingerprints.join(","))
                .bind(p.leaf_anchor_fingerprint.clone())
                .bind(p.leaf_not_after);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.inventory.remove_pods", skip_all)]
pub async fn remove_pods(conn: &mut Conn, cluster: ClusterId, pods: &[(String, String)]) -> Result<(), sqlx::Error> {
    for (namespace, name) in pods {
        sqlx::query("DELETE FROM cluster_pods WHERE cluster_id = $1 AND namespace = $2 AND name = $3")
            .bind(cluster.to_string())
            .bind(namespace)
            .bind(name)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.inventory.facts", skip_all)]
pub async fn facts(conn: &mut Conn, org: OrgId, cluster: ClusterId) -> Result<Option<(Facts, i64)>, sqlx::Error> {
    let row = sqlx::query("SELECT facts, updated_at FROM cluster_inventory WHERE org_id = $1 AND cluster_id = $2")
        .bind(org.to_string())
        .bind(cluster.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        let json: String = r.try_get("facts")?;
        Ok((serde_json::from_str(&json).map_err(|e| sqlx::Error::Decode(e.into()))?, r.try_get("updated_at")?))
    })
    .transpose()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.inventory.pods", skip_all)]
pub async fn pods(conn: &mut Conn, org: OrgId, cluster: ClusterId) -> Result<Vec<Pod>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT namespace, name, workload, proxy_version, ready, restarts, phase, bundle_fingerprints, leaf_anchor, leaf_not_after FROM cluster_pods
         WHERE org_id = $1 AND cluster_id = $2 ORDER BY namespace, name",
    )
    .bind(org.to_string())
    .bind(cluster.to_string())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Pod {
                namespace: r.try_get("namespace")?,
                name: r.try_get("name")?,
                workload: r.try_get("workload")?,
                proxy_version: r.try_get("proxy_version")?,
                ready: r.try_get::<i64, _>("ready")? != 0,
                restarts: r.try_get::<i64, _>("restarts")?.try_into().unwrap_or(u32::MAX),
                phase: r.try_get("phase")?,
                bundle_fingerprints: r.try_get::<String, _>("bundle_fingerprints")?.split(',').filter(|f| !f.is_empty()).map(str::to_owned).collect(),
                leaf_anchor_fingerprint: r.try_get("leaf_anchor")?,
                leaf_not_after: r.try_get("leaf_not_after")?,
            })
        })
        .collect()
}

/// Every cluster's facts in the organization.
#[tracing::instrument(target = "meshfleet_traces", name = "store.inventory.org_facts", skip_all)]
pub async fn org_facts(conn: &mut Conn, org: OrgId) -> Result<Vec<(ClusterId, Facts)>, sqlx::Error> {
    let rows = sqlx::query("SELECT cluster_id, facts FROM cluster_inventory WHERE org_id = $1").bind(org.to_string()).fetch_all(conn).await?;
    rows.iter().map(|r| Ok((super::parse_col(&r.try_get::<String, _>("cluster_id")?, "cluster_inventory.cluster_id")?, super::json_col(r, "facts")?))).collect()
}

/// Per cluster of the organization, the earliest expiry of a proxy leaf its pods report (ms).
#[tracing::instrument(target = "meshfleet_traces", name = "store.inventory.earliest_leaves", skip_all)]
pub async fn earliest_leaves(conn: &mut Conn, org: OrgId) -> Result<Vec<(ClusterId, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT cluster_id, MIN(leaf_not_after) AS earliest FROM cluster_pods WHERE org_id = $1 AND leaf_not_after IS NOT NULL GROUP BY cluster_id",
    )
    .bind(org.to_string())
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| Ok((super::parse_col(&r.try_get::<String, _>("cluster_id")?, "cluster_pods.cluster_id")?, r.try_get("earliest")?))).collect()
}

/// Each cluster's control-plane version as its agent last reported it (reported ones only),
/// read out of the facts by the database rather than by parsing every document here.
#[tracing::instrument(target = "meshfleet_traces", name = "store.inventory.control_plane_versions", skip_all)]
pub async fn control_plane_versions(conn: &mut Conn, org: OrgId) -> Result<std::collections::HashMap<ClusterId, String>, sqlx::Error> {
    let version = if conn.backend_name() == "SQLite" { "json_extract(facts, '$.control_plane.version')" } else { "(facts::json)->'control_plane'->>'version'" };
    let rows =
        sqlx::query(&format!("SELECT cluster_id, {version} AS version FROM cluster_inventory WHERE org_id = $1")).bind(org.to_string()).fetch_all(conn).await?;
    let mut out = std::collections::HashMap::with_capacity(rows.len());
    for r in &rows {
        if let Some(v) = r.try_get::<Option<String>, _>("version")?.filter(|v| !v.is_empty()) {
            out.insert(super::parse_col(&r.try_get::<String, _>("cluster_id")?, "cluster_inventory.cluster_id")?, v);
        }
    }
    Ok(out)
}
