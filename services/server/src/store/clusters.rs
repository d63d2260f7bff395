//! Clusters, their labels (a JSON copy for reading, one row per label for selectors) and
//! their bootstrap tokens.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::value::RawValue;
use sqlx::Row;

use super::{parse_col, Conn};
use crate::domain::labels::{Labels, Op, Selector};
use crate::domain::liveness::Liveness;
use crate::domain::{ClusterId, ClusterName, OrgId};

#[derive(Debug, Clone)]
pub struct Cluster {
    pub id: ClusterId,
    pub org_id: OrgId,
    pub name: String,
    pub labels: Labels,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_seen_at: Option<i64>,
    pub agent_version: Option<String>,
    pub kubernetes_version: Option<String>,
}

// Aliased: SQLite does not promise the name of an unaliased `c.x` column.
const COLUMNS: &str = "c.id AS id, c.org_id AS org_id, c.name AS name, c.labels AS labels, c.status AS status, c.created_at AS created_at, c.updated_at AS updated_at, c.last_seen_at AS last_seen_at, c.agent_version AS agent_version, c.kubernetes_version AS kubernetes_version";

impl Cluster {
    /// The status users see: a `connected` agent that stopped reporting (its replica died,
    /// say) turns stale, then disconnected.
    pub fn effective_status(&self, live: &Liveness) -> &str {
        live.status(&self.status, self.last_seen_at)
    }
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<Cluster, sqlx::Error> {
    let labels: String = r.try_get("labels")?;
    Ok(Cluster {
        id: parse_col(&r.try_get::<String, _>("id")?, "clusters.id")?,
        org_id: parse_col(&r.try_get::<String, _>("org_id")?, "clusters.org_id")?,
        name: r.try_get("name")?,
        labels: serde_json::from_str(&labels).map_err(|e| sqlx::Error::Decode(e.into()))?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
        agent_version: r.try_get("agent_version")?,
        kubernetes_version: r.try_get("kubernetes_version")?,
    })
}

/// Fails with a unique violation when the name is taken in the organization.
#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.insert", skip_all)]
pub async fn insert(conn: &mut Conn, cluster: &Cluster) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO clusters (id, org_id, name, labels, status, created_at, updated_at, last_seen_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(cluster.id.to_string())
    .bind(cluster.org_id.to_string())
    .bind(&cluster.name)
    .bind(labels_json(&cluster.labels))
    .bind(&cluster.status)
    .bind(cluster.created_at)
    .bind(cluster.updated_at)
    .bind(cluster.last_seen_at)
    .execute(&mut *conn)
    .await?;
    insert_label_rows(conn, cluster.org_id, cluster.id, &cluster.labels).await
}

fn labels_json(labels: &Labels) -> String {
    serde_json::to_string(labels).expect("a string map always serializes")
}

async fn insert_label_rows(conn: &mut Conn, org: OrgId, id: ClusterId, labels: &Labels) -> Result<(), sqlx::Error> {
    for (key, value) in labels {
        sqlx::query("INSERT INTO cluster_labels (cluster_id, org_id, key, value) VALUES ($1, $2, $3, $4)")
            .bind(id.to_string())
            .bind(org.to_string())
            .bind(key)
            .bind(value)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.get", skip_all)]
pub async fn get(conn: &mut Conn, org: OrgId, id: ClusterId) -> Result<Option<Cluster>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM clusters c WHERE c.org_id = $1 AND c.id = $2"))
        .bind(org.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The clusters of `org` among `ids` (those that still exist), by id, a query per
/// `rows_per_statement` ids.
#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.get_many", skip_all)]
pub async fn get_many(conn: &mut Conn, org: OrgId, ids: &[ClusterId]) -> Result<HashMap<ClusterId, Cluster>, sqlx::Error> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(super::rows_per_statement(conn, 1)) {
        let params: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!("SELECT {COLUMNS} FROM clusters c WHERE c.org_id = $1 AND c.id IN ({})", params.join(", "));
        let mut q = sqlx::query(&sql).bind(org.to_string());
        for id in chunk {
            q = q.bind(id.to_string());
        }
        for row in q.fetch_all(&mut *conn).await? {
            let cluster = from_row(&row)?;
            out.insert(cluster.id, cluster);
        }
    }
    Ok(out)
}

pub struct ListQuery<'a> {
    pub selector: &'a Selector,
    /// pending, connected, stale or disconnected, as `Cluster::effective_status` tells them.
    pub status: Option<(&'a str, Liveness)>,
    /// Keyset pagination: names strictly after this one.
    pub after_name: Option<&'a str>,
    pub limit: u32,
}

/// A page of clusters ordered by name, filtered by label selector and status.
#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.list", skip_all)]
pub async fn list(conn: &mut Conn, org: OrgId, q: &ListQuery<'_>) -> Result<Vec<Cluster>, sqlx::Error> {
    let page = page(conn, org, q).await?;
    let decode = |e: serde_json::Error| sqlx::Error::Decode(e.into());
    page.rows()?
        .into_iter()
        .map(|r| {
            Ok(Cluster {
                id: r.id,
                org_id: org,
                name: r.name.into_owned(),
                labels: serde_json::from_str(r.labels.get()).map_err(decode)?,
                status: r.status.into_owned(),
                created_at: r.created_at,
                updated_at: r.updated_at,
                last_seen_at: r.last_seen_at,
                agent_version: r.agent_version.map(Cow::into_owned),
                kubernetes_version: r.kubernetes_version.map(Cow::into_owned),
            })
        })
        .collect()
}

/// A page of clusters as the database wrote it: one JSON array, one element per cluster,
/// rather than a row per cluster. sqlx copies every value of every row, across a thread on
/// SQLite, and that was most of an uncached list request's cost; read through `rows`, the page
/// is borrowed, not copied again (BENCHMARKS.md, "Uncached list").
pub struct Page(String);

/// One cluster of a `Page`, borrowing its text. The database writes it as an array, in this
/// order (a derived `Deserialize` reads a struct from an array field by field).
#[derive(serde::Deserialize)]
pub struct PageRow<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    pub id: ClusterId,
    /// The JSON object of the labels, as stored.
    #[serde(borrow)]
    pub labels: &'a RawValue,
    #[serde(borrow)]
    pub status: Cow<'a, str>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_seen_at: Option<i64>,
    #[serde(borrow)]
    pub agent_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub kubernetes_version: Option<Cow<'a, str>>,
}

impl Page {
    /// The clusters in name order.
    pub fn rows(&self) -> Result<Vec<PageRow<'_>>, sqlx::Error> {
        let mut rows: Vec<PageRow<'_>> = serde_json::from_str(&self.0).map_err(|e| sqlx::Error::Decode(e.into()))?;
        // Sorted here: neither engine promises an aggregate the subquery's order, and an ORDER BY
        // inside the aggregate costs the database a sort of the rendered rows.
        rows.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.page", skip_all)]
pub async fn page(conn: &mut Conn, org: OrgId, q: &ListQuery<'_>) -> Result<Page, sqlx::Error> {
    let mut sql = format!("SELECT {COLUMNS} FROM clusters c WHERE c.org_id = $1");
    let mut binds: Vec<String> = vec![org.to_string()];
    let bind = |value: &str, binds: &mut Vec<String>| {
        binds.push(value.to_owned());
        format!("${}", binds.len())
    };
    for req in &q.selector.requirements {
        let key = bind(&req.key, &mut binds);
        let label = |cond: &str| format!("EXISTS (SELECT 1 FROM cluster_labels l WHERE l.cluster_id = c.id AND l.key = {key}{cond})");
        let clause = match &req.op {
            Op::Exists => label(""),
            Op::DoesNotExist => format!("NOT {}", label("")),
            Op::Equals(v) => label(&format!(" AND l.value = {}", bind(v, &mut binds))),
            Op::NotEquals(v) => format!("NOT {}", label(&format!(" AND l.value = {}", bind(v, &mut binds)))),
            Op::In(vs) | Op::NotIn(vs) => {
                let list: Vec<String> = vs.iter().map(|v| bind(v, &mut binds)).collect();
                let exists = label(&format!(" AND l.value IN ({})", list.join(", ")));
                if matches!(req.op, Op::In(_)) {
                    exists
                } else {
                    format!("NOT {exists}")
                }
            }
        };
        sql.push_str(" AND ");
        sql.push_str(&clause);
    }
    if let Some((status, live)) = q.status {
        let wanted = bind(status, &mut binds);
        sql.push_str(&format!(" AND {} = {wanted}", live.status_sql("c.status", "c.last_seen_at")));
    }
    if let Some(after) = q.after_name {
        sql.push_str(&format!(" AND c.name > {}", bind(after, &mut binds)));
    }
    // The limit is a validated integer, not user text, so it is safe to inline.
    sql.push_str(&format!(" ORDER BY c.name LIMIT {}", q.limit));
    // The labels column holds a JSON object's text; on SQLite, `json()` would parse and print it
    // again, so the element is put together as text instead (every other value is quoted by
    // `json_quote` or is a number).
    let sql = if conn.backend_name() == "SQLite" {
        format!(
            "SELECT '[' || COALESCE(group_concat('[' || json_quote(c.name) || ',' || json_quote(c.id) || ',' || c.labels || ',' || json_quote(c.status) || ',' \
             || c.created_at || ',' || c.updated_at || ',' || json_quote(c.last_seen_at) || ',' || json_quote(c.agent_version) || ',' \
             || json_quote(c.kubernetes_version) || ']', ','), '') || ']' FROM ({sql}) c"
        )
    } else {
        format!(
            "SELECT COALESCE(json_agg(json_build_array(c.name, c.id, c.labels::json, c.status, c.created_at, c.updated_at, c.last_seen_at, c.agent_version, \
             c.kubernetes_version)), '[]')::text FROM ({sql}) c"
        )
    };
    let mut query = sqlx::query(&sql);
    for b in &binds {
        query = query.bind(b.as_str());
    }
    Ok(Page(query.fetch_one(conn).await?.try_get(0)?))
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.update_labels", skip_all)]
pub async fn update_labels(conn: &mut Conn, org: OrgId, id: ClusterId, labels: &Labels, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE clusters SET labels = $3, updated_at = $4 WHERE org_id = $1 AND id = $2")
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(labels_json(labels))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM cluster_labels WHERE org_id = $1 AND cluster_id = $2").bind(org.to_string()).bind(id.to_string()).execute(&mut *conn).await?;
    insert_label_rows(conn, org, id, labels).await?;
    Ok(true)
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.delete", skip_all)]
pub async fn delete(conn: &mut Conn, org: OrgId, id: ClusterId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM clusters WHERE org_id = $1 AND id = $2").bind(org.to_string()).bind(id.to_string()).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.name_taken", skip_all)]
pub async fn name_taken(conn: &mut Conn, org: OrgId, name: &ClusterName) -> Result<bool, sqlx::Error> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM clusters WHERE org_id = $1 AND name = $2").bind(org.to_string()).bind(name.as_str()).fetch_one(conn).await?;
    Ok(n > 0)
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.insert_bootstrap_token", skip_all)]
pub async fn insert_bootstrap_token(conn: &mut Conn, token_hash: &str, org: OrgId, cluster: ClusterId, now: i64, expires_at: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO bootstrap_tokens (token_hash, org_id, cluster_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(token_hash)
        .bind(org.to_string())
        .bind(cluster.to_string())
        .bind(now)
        .bind(expires_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Re-issuing a token retires the cluster's earlier unused ones.
#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.expire_bootstrap_tokens", skip_all)]
pub async fn expire_bootstrap_tokens(conn: &mut Conn, org: OrgId, cluster: ClusterId, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE bootstrap_tokens SET expires_at = $3 WHERE org_id = $1 AND cluster_id = $2 AND used_at IS NULL AND expires_at > $3")
        .bind(org.to_string())
        .bind(cluster.to_string())
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Spends a bootstrap token: returns its cluster once, and never again; None when the token
/// is unknown, expired or already used.
#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.consume_bootstrap_token", skip_all)]
pub async fn consume_bootstrap_token(conn: &mut Conn, token_hash: &str, now: i64) -> Result<Option<(OrgId, ClusterId)>, sqlx::Error> {
    let done = sqlx::query("UPDATE bootstrap_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2")
        .bind(token_hash)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    let row = sqlx::query("SELECT org_id, cluster_id FROM bootstrap_tokens WHERE token_hash = $1").bind(token_hash).fetch_one(conn).await?;
    Ok(Some((
        parse_col(&row.try_get::<String, _>("org_id")?, "bootstrap_tokens.org_id")?,
        parse_col(&row.try_get::<String, _>("cluster_id")?, "bootstrap_tokens.cluster_id")?,
    )))
}

pub enum TokenState {
    Unknown,
    Used,
    Expired,
    Valid,
}

/// What became of a bootstrap token, so a refused agent is told why.
#[tracing::instrument(target = "meshfleet_traces", name = "store.clusters.bootstrap_token_state", skip_all)]
pub async fn bootstrap_token_state(conn: &mut Conn, token_hash: &str, now: i64) -> Result<TokenState, sqlx::Error> {
    let row = sqlx::query("SELECT used_at, expires_at FROM bootstrap_tokens WHERE token_hash = $1").bind(token_hash).fetch_optional(conn).await?;
    Ok(match row {
        None => TokenState::Unknown,
        Some(r) if r.try_get::<Option<i64>, _>("used_at")?.is_some() => TokenState::Used,
        Some(r) if r.try_get::<i64, _>("expires_at")? <= now => TokenState::Expired,
        Some(_) => TokenState::Valid,
    })
}
