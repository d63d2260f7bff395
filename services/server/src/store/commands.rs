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
#[derive(Clone, Copy)]
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

/// A result reported by the agent of the command's cluster.
#[derive(Clone, Copy)]
pub struct Reported<'a> {
    pub cluster: ClusterId,
    pub id: CommandId,
    pub outcome: Outcome<'a>,
}

/// Applies results from the commands' own agents, in the order given, as multi-row statements:
/// a final state is never overwritten, so a resent result is a no-op. Results of one command
/// are folded first (up to its first final one), as if applied one by one.
#[tracing::instrument(target = "meshfleet_traces", name = "store.commands.record_results", skip_all)]
pub async fn record_results(conn: &mut Conn, results: &[Reported<'_>], now: i64) -> Result<(), sqlx::Error> {
    let folded = fold(results);
    for chunk in folded.chunks(super::rows_per_statement(conn, 7)) {
        // VALUES columns are column1, column2, ... on both engines; a NULL's type is stated.
        let sql = format!(
            "UPDATE commands SET state = v.column3, progress = v.column4, message = v.column5,
             output = COALESCE(CAST(v.column6 AS TEXT), commands.output),
             completed_at = CASE WHEN v.column7 = 1 THEN ${} ELSE commands.completed_at END
             FROM (VALUES {}) AS v
             WHERE commands.id = v.column1 AND commands.cluster_id = v.column2 AND commands.state IN {OPEN_STATES}",
            chunk.len() * 7 + 1,
            super::values_clause(chunk.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            let Outcome { state, progress, message, output } = r.outcome;
            q = q
                .bind(r.id.to_string())
                .bind(r.cluster.to_string())
                .bind(state)
                .bind(progress)
                .bind(message)
                .bind(output.map(|o| o.to_string()))
                .bind(i64::from(is_final(state)));
        }
        q.bind(now).execute(&mut *conn).await?;
    }
    Ok(())
}

/// One result per command (and cluster): what applying them in order would leave.
fn fold<'a>(results: &[Reported<'a>]) -> Vec<Reported<'a>> {
    let mut folded: Vec<Reported<'a>> = Vec::with_capacity(results.len());
    let mut at = std::collections::HashMap::new();
    for r in results {
        match at.get(&(r.cluster, r.id)) {
            None => {
                at.insert((r.cluster, r.id), folded.len());
                folded.push(*r);
            }
            Some(&i) if !is_final(folded[i].outcome.state) => {
                let output = r.outcome.output.or(folded[i].outcome.output);
                folded[i].outcome = Outcome { output, ..r.outcome };
            }
            Some(_) => {}
        }
    }
    folded
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(cluster: ClusterId, id: CommandId, state: &'static str, output: Option<&'static serde_json::Value>) -> Reported<'static> {
        Reported { cluster, id, outcome: Outcome { state, progress: 0, message: state, output } }
    }

    #[test]
    fn a_commands_results_fold_as_if_applied_one_by_one() {
        static OUT: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| serde_json::json!({"restarted": 3}));
        let (a, b) = (ClusterId::new(), ClusterId::new());
        let (x, y) = (CommandId::new(), CommandId::new());
        let folded = fold(&[
            reported(a, x, "running", Some(&OUT)),
            reported(a, y, "running", None),
            reported(a, x, "succeeded", None),
            reported(a, x, "running", None),
            // The same id from another cluster's agent is its own row (and matches nothing).
            reported(b, x, "failed", None),
        ]);
        let seen: Vec<_> = folded.iter().map(|r| (r.cluster, r.id, r.outcome.state, r.outcome.output.is_some())).collect();
        // A later result without output keeps the earlier one's, as COALESCE did per statement;
        // nothing after a final state counts.
        assert_eq!(seen, vec![(a, x, "succeeded", true), (a, y, "running", false), (b, x, "failed", false)]);
    }
}
