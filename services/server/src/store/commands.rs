//! Commands for agents: created through the API, delivered at least once by the gateway,
//! their results stored once they are final.

use sqlx::Row;

use super::{parse_col, Conn};
use crate::domain::{ClusterId, CommandId, OrgId};

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: CommandId,
    pub org_id: OrgId,
    pub cluster_id: ClusterId,
    pub kind: String,
    pub params: serde_json::Value,
    /// pending, delivered, running, succeeded, failed or expired.
    pub state: String,
    pub created_by: String,
    pub created_at: i64,
    pub deadline: i64,
    pub attempts: i64,
    pub delivered_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub progress: i64,
    pub message: String,
    pub output: Option<serde_json::Value>,
}

impl Command {
    /// A new command waiting for its agent, due within `deadline_ms`.
    pub fn pending(org_id: OrgId, cluster_id: ClusterId, kind: String, params: serde_json::Value, created_by: String, now: i64, deadline_ms: i64) -> Command {
        Command {
            id: CommandId::new(),
            org_id,
            cluster_id,
            kind,
            params,
            state: "pending".into(),
            created_by,
            created_at: now,
            deadline: now + deadline_ms,
            attempts: 0,
            delivered_at: None,
            completed_at: None,
            progress: 0,
            message: String::new(),
            output: None,
        }
    }
}

/// States in which a command still waits for its agent.
pub const OPEN_STATES: &str = "('pending', 'delivered', 'running')";

impl Command {
    /// Still waiting for its agent at `now` (ms): in an open state and before its deadline, as
    /// `open_for_cluster` selects them.
    pub fn is_open(&self, now: i64) -> bool {
        OPEN_STATES.contains(&format!("'{}'", self.state)) && self.deadline > now
    }
}

const COLUMNS: &str =
    "id, org_id, cluster_id, kind, params, state, created_by, created_at, deadline, attempts, delivered_at, completed_at, progress, message, output";

fn json_col(text: Option<String>) -> Result<Option<serde_json::Value>, sqlx::Error> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| sqlx::Error::Decode(e.into()))).transpose()
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<Command, sqlx::Error> {
    Ok(Command {
        id: parse_col(&r.try_get::<String, _>("id")?, "commands.id")?,
        org_id: parse_col(&r.try_get::<String, _>("org_id")?, "commands.org_id")?,
        cluster_id: parse_col(&r.try_get::<String, _>("cluster_id")?, "commands.cluster_id")?,
        kind: r.try_get("kind")?,
        params: json_col(Some(r.try_get("params")?))?.unwrap_or_default(),
        state: r.try_get("state")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        deadline: r.try_get("deadline")?,
        attempts: r.try_get("attempts")?,
        delivered_at: r.try_get("delivered_at")?,
        completed_at: r.try_get("completed_at")?,
        progress: r.try_get("progress")?,
        message: r.try_get("message")?,
        output: json_col(r.try_get("output")?)?,
    })
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.commands.insert", skip_all)]
pub async fn insert(conn: &mut Conn, c: &Command) -> Result<(), sqlx::Error> {
    insert_many(conn, std::slice::from_ref(c)).await
}

/// Inserts commands by multi-row statements (a rollout's look may send a thousand).
#[tracing::instrument(target = "meshfleet_traces", name = "store.commands.insert_many", skip_all)]
pub async fn insert_many(conn: &mut Conn, commands: &[Command]) -> Result<(), sqlx::Error> {
    const COLS: usize = 15;
    for chunk in commands.chunks(super::rows_per_statement(conn, COLS)) {
        let sql = format!("INSERT INTO commands ({COLUMNS}) VALUES {}", super::values_clause(chunk.len(), COLS));
        let mut q = sqlx::query(&sql);
        for c in chunk {
            q = q
                .bind(c.id.to_string())
                .bind(c.org_id.to_string())
                .bind(c.cluster_id.to_string())
                .bind(&c.kind)
                .bind(c.params.to_string())
                .bind(&c.state)
                .bind(&c.created_by)
                .bind(c.created_at)
                .bind(c.deadline)
                .bind(c.attempts)
                .bind(c.delivered_at)
                .bind(c.completed_at)
                .bind(c.progress)
                .bind(&c.message)
                .bind(c.output.as_ref().map(|o| o.to_string()));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.commands.get", skip_all)]
pub async fn get(conn: &mut Conn, org: OrgId, cluster: ClusterId, id: CommandId) -> Result<Option<Command>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM commands WHERE org_id = $1 AND cluster_id = $2 AND id = $3"))
        .bind(org.to_string())
        .bind(cluster.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The organization's commands with these ids, in as few queries as the engine allows (one
/// for up to 500): what the rollouts job reads of every cluster it moves along in one look.
#[tracing::instrument(target = "meshfleet_traces", name = "store.commands.get_many", skip_all)]
pub async fn get_many(conn: &mut Conn, org: OrgId, ids: &[CommandId]) -> Result<std::collections::HashMap<CommandId, Command>, sqlx::Error> {
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!("SELECT {COLUMNS} FROM commands WHERE org_id = $1 AND id IN ({})", marks.join(", "));
        let mut q = sqlx::query(&sql).bind(org.to_string());
        for id in chunk {
            q = q.bind(id.to_string());
        }
        for row in q.fetch_all(&mut *conn).await? {
            let c = from_row(&row)?;
            out.insert(c.id, c);
        }
    }
    Ok(out)
}

/// Newest first; `before` is the last id of the previous page.
#[tracing::instrument(target = "meshfleet_traces", name = "store.commands.list", skip_all)]
pub async fn list(conn: &mut Conn, org: OrgId, cluster: ClusterId, before: Option<CommandId>, limit: u32) -> Result<Vec<Command>, sqlx::Error> {
    let rows =
        sqlx::query(&format!("SELECT {COLUMNS} FROM commands WHERE org_id = $1 AND cluster_id = $2 AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT {limit}"))
            .bind(org.to_string())
            .bind(cluster.to_string())
            .bind(before.map(|b| b.to_string()).unwrap_or_default())
            .fetch_all(conn)
            .await?;
    rows.iter().map(from_row).collect()
}

/// Commands the agent has not finished, oldest first: what a (re)connected agent is sent.
#[tracing::instrument(target = "meshfleet_traces", name = "store.commands.open_for_cluster", skip_all)]
pub async fn open_for_cluster(conn: &mut Conn, cluster: ClusterId, now: i64) -> Result<Vec<Command>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM commands WHERE cluster_id = $1 AND state IN {OPEN_STATES} AND deadline > $2 ORDER BY id"))
        .bind(cluster.to_string())
        .bind(now)
        .fetch_all(conn)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Clusters with commands never delivered: the polling fallback for cross-replica routing.
#[tracing::instrument(target = "meshfleet_traces", name = "store.commands.clusters_with_pending", skip_all)]
pub async fn clusters_with_pending(conn: &mut Conn, now: i64) -> Result<Vec<ClusterId>, sqlx::Error> {
    let rows = sqlx::query("SELECT DISTINCT cluster_id FROM commands WHERE state = 'pending' AND deadline > $1").bind(now).fetch_all(conn).await?;
    rows.iter().map(|r| parse_col(&r.try_get::<String, _>("cluster_id")?, "commands.cluster_id")).collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.commands.mark_delivered", skip_all)]
pub async fn mark_delivered(conn: &mut Conn, id: CommandId, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE commands SET attempts = attempts + 1, delivered_at = $2,
         state = CASE WHEN state = 'pending' THEN 'delivered' ELSE state END WHERE id = $1",
    )
    .bind(id.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// What an agent reports about a command it runs.
pub struct Outcome<'a> {
    pub state: &'a str,
    pub progress: i64,
    pub message: &'a str,
    pub output: Option<&'a serde_json::Value>,
}

/// Whether an agent's result in this state ends its command.
pub fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed")
}

/// Applies a result from the cluster's own agent; a final state is never overwritten, so a
/// resent result is a no-op.
#[tracing::instrument(target = "meshfleet_traces", name = "store.commands.record_result", skip_all)]
pub async fn record_result(conn: &mut Conn, cluster: ClusterId, id: CommandId, outcome: &Outcome<'_>, now: i64) -> Result<bool, sqlx::Error> {
    let Outcome { state, progress, message, output } = *outcome;
    let final_state = is_final(state);
    let done = sqlx::query(&format!(
        "UPDATE commands SET state = $3, progress = $4, message = $5, output = COALESCE($6, output),
         completed_at = CASE WHEN $7 = 1 THEN $8 ELSE completed_at END
         WHERE id = $1 AND cluster_id = $2 AND state IN {OPEN_STATES}"
    ))
    .bind(id.to_string())
    .bind(cluster.to_string())
    .bind(state)
    .bind(progress)
    .bind(message)
    .bind(output.map(|o| o.to_string()))
    .bind(i64::from(final_state))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.commands.expire_overdue", skip_all)]
pub async fn expire_overdue(conn: &mut Conn, now: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(&format!(
        "UPDATE commands SET state = 'expired', completed_at = $1, message = 'the agent did not finish before the deadline'
         WHERE state IN {OPEN_STATES} AND deadline <= $1"
    ))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
