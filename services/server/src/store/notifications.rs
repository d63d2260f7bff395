//! The notification outbox and its delivery log. A notification is queued in the transaction
//! of the change that causes it, claimed by one replica at a time (PostgreSQL: `FOR UPDATE
//! SKIP LOCKED`; SQLite has one writer), and kept until delivered or out of retries.

use sqlx::Row;

use super::alert_channels::Channel;
use super::{parse_col, rows_per_statement, values_clause, Conn};
use crate::alerting::channels;
use crate::domain::alerting::AlertEvent;
use crate::domain::{ChannelId, OrgId};

/// A fresh message id: `msg_` + a UUIDv7 (32 hex digits), unique per (event, channel).
pub fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// Queues `event` for every enabled channel of `org`, in the caller's transaction; returns
/// how many notifications were queued. Each gets its own message id (`msg_…`, the
/// `webhook-id`, also the `id` inside its body, so `event.id` itself is not sent) and its body
/// rendered now: every attempt sends the same bytes.
#[tracing::instrument(target = "meshfleet_traces", name = "store.notifications.enqueue", skip_all)]
pub async fn enqueue(conn: &mut Conn, org: OrgId, event: &AlertEvent, now: i64) -> Result<usize, sqlx::Error> {
    let targets = super::alert_channels::list_enabled(&mut *conn, org).await?;
    let mut outbox = Outbox::new(now);
    for channel in &targets {
        outbox.push_event(channel, event);
    }
    outbox.insert(conn).await?;
    Ok(targets.len())
}

/// Queues `event` for one channel; returns the message id.
#[tracing::instrument(target = "meshfleet_traces", name = "store.notifications.enqueue_for", skip_all)]
pub async fn enqueue_for(conn: &mut Conn, channel: &Channel, event: &AlertEvent, now: i64) -> Result<String, sqlx::Error> {
    let mut outbox = Outbox::new(now);
    let id = outbox.push_event(channel, event);
    outbox.insert(conn).await?;
    Ok(id)
}

/// Notifications to queue together, written by multi-row INSERTs (`values_clause`), so an
/// event for a hundred channels costs a few round trips, not a hundred.
pub struct Outbox {
    now: i64,
    /// (message id, organization, channel, event type, body)
    rows: Vec<(String, String, String, &'static str, String)>,
}

impl Outbox {
    pub fn new(now: i64) -> Outbox {
        Outbox { now, rows: Vec::new() }
    }

    /// Adds `event` for `channel`, its body rendered by the channel's kind; returns the message id.
    pub fn push_event(&mut self, channel: &Channel, event: &AlertEvent) -> String {
        self.push(channel, event.event_type.as_str(), |id| channels::render(channel.kind, &channel.name, event, id))
    }

    /// Adds the body `render` makes for the new message id; returns the id.
    pub fn push(&mut self, channel: &Channel, event_type: &'static str, render: impl FnOnce(&str) -> String) -> String {
        let id = new_message_id();
        let body = render(&id);
        self.rows.push((id.clone(), channel.org_id.to_string(), channel.id.to_string(), event_type, body));
        id
    }

    /// Writes every added notification, due now, in the caller's transaction.
    pub async fn insert(self, conn: &mut Conn) -> Result<(), sqlx::Error> {
        const COLS: usize = 10;
        for chunk in self.rows.chunks(rows_per_statement(conn, COLS)) {
            let sql = format!(
                "INSERT INTO notifications (id, org_id, channel_id, event_type, body, created_at, status, attempts, next_attempt_at, claimed_until) VALUES {}",
                values_clause(chunk.len(), COLS)
            );
            let mut q = sqlx::query(&sql);
            for (id, org, channel, event_type, body) in chunk {
                q = q.bind(id).bind(org).bind(channel).bind(*event_type).bind(body).bind(self.now).bind("pending").bind(0_i64).bind(self.now).bind(0_i64);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }
}

/// A notification claimed for sending.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub org_id: OrgId,
    pub channel_id: ChannelId,
    pub body: String,
    pub attempts: u32,
}

/// Claims up to `limit` due notifications of enabled channels until `claim_until`, at most
/// `per_channel` of each channel (the oldest due), skipping the channels in `busy` (at their
/// concurrency limit on this replica). The cap keeps one channel's backlog from filling a
/// claim that other channels' messages are waiting for. A claim that is not settled by then
/// (the replica died) makes the notification due again.
#[tracing::instrument(target = "meshfleet_traces", name = "store.notifications.claim", skip_all)]
pub async fn claim(conn: &mut Conn, now: i64, claim_until: i64, busy: &[ChannelId], per_channel: usize, limit: u32) -> Result<Vec<Claimed>, sqlx::Error> {
    let busy_list: Vec<String> = (0..busy.len()).map(|i| format!("${}", i + 3)).collect();
    let not_busy = if busy.is_empty() { String::new() } else { format!("AND c.id NOT IN ({})", busy_list.join(", ")) };
    // Each enabled channel's oldest due messages. PostgreSQL: one index scan per channel
    // (LATERAL ... LIMIT) over `notifications_pending`. A plain index scan marks the entries of
    // messages settled since as dead while it passes them; a scan of every pending entry at
    // once (a bitmap scan) visits each settled message's old row version again on every claim
    // until vacuum runs, which at 1,000 deliveries a second took a claim from milliseconds to
    // over a second within a minute. SQLite keeps no old versions and has no LATERAL: it ranks
    // the due messages with a window. (PostgreSQL locks outside the ranking: FOR UPDATE may not
    // share a level with a window or a LIMIT.)
    let due = "n.status = 'pending' AND n.next_attempt_at <= $1 AND n.claimed_until <= $1";
    let (candidates, skip_locked) = if conn.backend_name() == "SQLite" {
        let ranked = format!(
            "SELECT n.id, n.next_attempt_at, ROW_NUMBER() OVER (PARTITION BY n.channel_id ORDER BY n.next_attempt_at, n.id) AS rank
             FROM notifications n JOIN alert_channels c ON c.id = n.channel_id AND c.org_id = n.org_id
             WHERE {due} AND c.enabled = 1 {not_busy}"
        );
        (format!("SELECT id FROM ({ranked}) ranked WHERE rank <= {per_channel} ORDER BY next_attempt_at LIMIT {limit}"), "")
    } else {
        let oldest = format!("SELECT n.id, n.next_attempt_at FROM notifications n WHERE n.channel_id = c.id AND n.org_id = c.org_id AND {due} ORDER BY n.next_attempt_at, n.id LIMIT {per_channel}");
        (
            format!(
                "SELECT o.id FROM alert_channels c CROSS JOIN LATERAL ({oldest}) o WHERE c.enabled = 1 {not_busy} ORDER BY o.next_attempt_at LIMIT {limit}"
            ),
            "FOR UPDATE SKIP LOCKED",
        )
    };
    let sql = format!(
        "UPDATE notifications SET claimed_until = $2 WHERE id IN (
             SELECT id FROM notifications WHERE id IN ({candidates}) AND claimed_until <= $1 {skip_locked})
         RETURNING id, org_id, channel_id, body, attempts"
    );
    let mut q = sqlx::query(&sql).bind(now).bind(claim_until);
    for c in busy {
        q = q.bind(c.to_string());
    }
    let rows = q.fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get("id")?,
                org_id: parse_col(&r.try_get::<String, _>("org_id")?, "notifications.org_id")?,
                channel_id: parse_col(&r.try_get::<String, _>("channel_id")?, "notifications.channel_id")?,
                body: r.try_get("body")?,
                attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

/// What became of a notification after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Delivered,
    RetryAt(i64),
    /// Out of retries, or its channel is gone for good.
    Failed,
}

/// One attempt, for the delivery log.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: uuid::Uuid,
    pub message_id: String,
    pub at: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub response_excerpt: String,
}

/// Logs each attempt and settles its notification (releasing its claim): the attempts in
/// multi-row INSERTs, in the caller's transaction.
#[tracing::instrument(target = "meshfleet_traces", name = "store.notifications.settle", skip_all)]
pub async fn settle(conn: &mut Conn, settled: &[(&Claimed, &Attempt, Next)]) -> Result<(), sqlx::Error> {
    const COLS: usize = 9;
    for chunk in settled.chunks(rows_per_statement(conn, COLS)) {
        let sql = format!(
            "INSERT INTO delivery_attempts (id, org_id, channel_id, message_id, at, status_code, error, latency_ms, response_excerpt) VALUES {}",
            values_clause(chunk.len(), COLS)
        );
        let mut q = sqlx::query(&sql);
        for (n, attempt, _) in chunk {
            q = q
                .bind(attempt.id.to_string())
                .bind(n.org_id.to_string())
                .bind(n.channel_id.to_string())
                .bind(&n.id)
                .bind(attempt.at)
                .bind(attempt.status_code.map(i64::from))
                .bind(attempt.error.clone())
                .bind(attempt.latency_ms)
                .bind(&attempt.response_excerpt);
        }
        q.execute(&mut *conn).await?;
    }
    for (n, attempt, next) in settled {
        let (status, next_at) = match next {
            Next::Delivered => ("delivered", attempt.at),
            Next::RetryAt(at) => ("pending", *at),
            Next::Failed => ("failed", attempt.at),
        };
        sqlx::query("UPDATE notifications SET status = $2, next_attempt_at = $3, attempts = attempts + 1, claimed_until = 0 WHERE id = $1")
            .bind(&n.id)
            .bind(status)
            .bind(next_at)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The channel's attempts, newest first; `before` is the last attempt id of the previous page.
#[tracing::instrument(target = "meshfleet_traces", name = "store.notifications.attempts", skip_all)]
pub async fn attempts(conn: &mut Conn, org: OrgId, channel: ChannelId, before: Option<uuid::Uuid>, limit: u32) -> Result<Vec<Attempt>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT id, message_id, at, status_code, error, latency_ms, response_excerpt FROM delivery_attempts
         WHERE org_id = $1 AND channel_id = $2 AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT {limit}"
    ))
    .bind(org.to_string())
    .bind(channel.to_string())
    .bind(before.map(|b| b.to_string()).unwrap_or_default())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Attempt {
                id: parse_col(&r.try_get::<String, _>("id")?, "delivery_attempts.id")?,
                message_id: r.try_get("message_id")?,
                at: r.try_get("at")?,
                status_code: r.try_get::<Option<i64>, _>("status_code")?.and_then(|s| u16::try_from(s).ok()),
                error: r.try_get("error")?,
                latency_ms: r.try_get("latency_ms")?,
                response_excerpt: r.try_get("response_excerpt")?,
            })
        })
        .collect()
}

/// Sends a message again, from the start of the retry schedule, with the same id and body.
#[tracing::instrument(target = "meshfleet_traces", name = "store.notifications.redeliver", skip_all)]
pub async fn redeliver(conn: &mut Conn, org: OrgId, channel: ChannelId, message_id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE notifications SET status = 'pending', attempts = 0, next_attempt_at = $4, claimed_until = 0
         WHERE org_id = $1 AND channel_id = $2 AND id = $3",
    )
    .bind(org.to_string())
    .bind(channel.to_string())
    .bind(message_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives claimed notifications back at once (this replica will not send them now).
#[tracing::instrument(target = "meshfleet_traces", name = "store.notifications.release", skip_all)]
pub async fn release(conn: &mut Conn, ids: &[String]) -> Result<(), sqlx::Error> {
    for chunk in ids.chunks(100) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!("UPDATE notifications SET claimed_until = 0 WHERE id IN ({})", list.join(", "));
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Deletes notifications created before `cutoff` that are no longer pending (delivered, or
/// failed after the whole schedule), with their delivery log; returns how many.
#[tracing::instrument(target = "meshfleet_traces", name = "store.notifications.delete_settled_before", skip_all)]
pub async fn delete_settled_before(conn: &mut Conn, cutoff: i64) -> Result<u64, sqlx::Error> {
    const SETTLED: &str = "SELECT id FROM notifications WHERE status <> 'pending' AND created_at < $1";
    sqlx::query(&format!("DELETE FROM delivery_attempts WHERE message_id IN ({SETTLED})")).bind(cutoff).execute(&mut *conn).await?;
    let done = sqlx::query(&format!("DELETE FROM notifications WHERE id IN ({SETTLED})")).bind(cutoff).execute(conn).await?;
    Ok(done.rows_affected())
}
