//! Alert channels of an organization. URLs and signing secrets are stored sealed; only
//! `delivery` and an admin's explicit reveal open them.

use sqlx::Row;

use super::{parse_col, Conn};
use crate::alerting::channels::ChannelKind;
use crate::domain::{ChannelId, OrgId};

#[derive(Debug, Clone)]
pub struct Channel {
    pub id: ChannelId,
    pub org_id: OrgId,
    pub name: String,
    pub kind: ChannelKind,
    pub url_sealed: String,
    pub url_display: String,
    pub secret_sealed: String,
    pub routing_key_sealed: Option<String>,
    pub previous_secret_sealed: Option<String>,
    pub previous_secret_until: Option<i64>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<i64>,
    pub created_at: i64,
}

const COLUMNS: &str = "id, org_id, name, kind, url_sealed, url_display, secret_sealed, routing_key_sealed, previous_secret_sealed, previous_secret_until, enabled, disabled_reason, failing_since, created_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Channel, sqlx::Error> {
    Ok(Channel {
        id: parse_col(&r.try_get::<String, _>("id")?, "alert_channels.id")?,
        org_id: parse_col(&r.try_get::<String, _>("org_id")?, "alert_channels.org_id")?,
        name: r.try_get("name")?,
        kind: parse_col(&r.try_get::<String, _>("kind")?, "alert_channels.kind")?,
        url_sealed: r.try_get("url_sealed")?,
        url_display: r.try_get("url_display")?,
        secret_sealed: r.try_get("secret_sealed")?,
        routing_key_sealed: r.try_get("routing_key_sealed")?,
        previous_secret_sealed: r.try_get("previous_secret_sealed")?,
        previous_secret_until: r.try_get("previous_secret_until")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        disabled_reason: r.try_get("disabled_reason")?,
        failing_since: r.try_get("failing_since")?,
        created_at: r.try_get("created_at")?,
    })
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.alert_channels.insert", skip_all)]
pub async fn insert(conn: &mut Conn, c: &Channel) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO alert_channels ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"))
        .bind(c.id.to_string())
        .bind(c.org_id.to_string())
        .bind(&c.name)
        .bind(c.kind.as_str())
        .bind(&c.url_sealed)
        .bind(&c.url_display)
        .bind(&c.secret_sealed)
        .bind(c.routing_key_sealed.clone())
        .bind(c.previous_secret_sealed.clone())
        .bind(c.previous_secret_until)
        .bind(i64::from(c.enabled))
        .bind(c.disabled_reason.clone())
        .bind(c.failing_since)
        .bind(c.created_at)
        .execute(conn)
        .await?;
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.alert_channels.list", skip_all)]
pub async fn list(conn: &mut Conn, org: OrgId) -> Result<Vec<Channel>, sqlx::Error> {
    let rows =
        sqlx::query(&format!("SELECT {COLUMNS} FROM alert_channels WHERE org_id = $1 ORDER BY created_at, id")).bind(org.to_string()).fetch_all(conn).await?;
    rows.iter().map(from_row).collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.alert_channels.list_enabled", skip_all)]
pub async fn list_enabled(conn: &mut Conn, org: OrgId) -> Result<Vec<Channel>, sqlx::Error> {
    Ok(list(conn, org).await?.into_iter().filter(|c| c.enabled).collect())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.alert_channels.get", skip_all)]
pub async fn get(conn: &mut Conn, org: OrgId, id: ChannelId) -> Result<Option<Channel>, sqlx::Error> {
    super::one_of_org(conn, "alert_channels", COLUMNS, org, id, from_row).await
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.alert_channels.delete", skip_all)]
pub async fn delete(conn: &mut Conn, org: OrgId, id: ChannelId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM alert_channels WHERE org_id = $1 AND id = $2").bind(org.to_string()).bind(id.to_string()).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Makes `secret_sealed` the signing secret; the current one keeps signing until `until`.
#[tracing::instrument(target = "meshfleet_traces", name = "store.alert_channels.rotate_secret", skip_all)]
pub async fn rotate_secret(conn: &mut Conn, org: OrgId, id: ChannelId, secret_sealed: &str, until: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE alert_channels SET previous_secret_sealed = secret_sealed, previous_secret_until = $3, secret_sealed = $4 WHERE org_id = $1 AND id = $2",
    )
    .bind(org.to_string())
    .bind(id.to_string())
    .bind(until)
    .bind(secret_sealed)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the outcome of a delivery for the channel's health: a success clears the run of
/// failures; a failure starts one (if none is running).
/// What a channel's deliveries settled together came to, in order: the last one succeeded, or
/// the last ones failed, the first of those failures at `since` (`after_success`: a success
/// settled in the same group came before them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failing { since: i64, after_success: bool },
}

impl Outcome {
    /// The outcome after `self` followed by one more delivery's.
    pub fn then(self, ok: bool, at: i64) -> Outcome {
        match (self, ok) {
            (_, true) => Outcome::Succeeded,
            (Outcome::Succeeded, false) => Outcome::Failing { since: at, after_success: true },
            (failing, false) => failing,
        }
    }

    /// The outcome of one delivery alone.
    pub fn of(ok: bool, at: i64) -> Outcome {
        match ok {
            true => Outcome::Succeeded,
            false => Outcome::Failing { since: at, after_success: false },
        }
    }
}

/// Records when the channel started failing (kept through further failures, cleared by a
/// success). Writes only when that changes: a healthy channel's row is not rewritten (nor
/// locked) by every delivery.
#[tracing::instrument(target = "meshfleet_traces", name = "store.alert_channels.record_outcome", skip_all)]
pub async fn record_outcome(conn: &mut Conn, org: OrgId, id: ChannelId, outcome: Outcome) -> Result<(), sqlx::Error> {
    let q = match outcome {
        Outcome::Succeeded => sqlx::query("UPDATE alert_channels SET failing_since = NULL WHERE org_id = $1 AND id = $2 AND failing_since IS NOT NULL"),
        Outcome::Failing { after_success: true, .. } => sqlx::query("UPDATE alert_channels SET failing_since = $3 WHERE org_id = $1 AND id = $2"),
        Outcome::Failing { after_success: false, .. } => {
            sqlx::query("UPDATE alert_channels SET failing_since = $3 WHERE org_id = $1 AND id = $2 AND failing_since IS NULL")
        }
    };
    let q = q.bind(org.to_string()).bind(id.to_string());
    match outcome {
        Outcome::Succeeded => q.execute(conn).await?,
        Outcome::Failing { since, .. } => q.bind(since).execute(conn).await?,
    };
    Ok(())
}

/// Writes what an admin can change of a channel: its name, receiver and whether it is enabled.
#[tracing::instrument(target = "meshfleet_traces", name = "store.alert_channels.update", skip_all)]
pub async fn update(conn: &mut Conn, c: &Channel) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE alert_channels SET name = $3, url_sealed = $4, url_display = $5, routing_key_sealed = $6, enabled = $7, disabled_reason = $8, \
         failing_since = $9 WHERE org_id = $1 AND id = $2",
    )
    .bind(c.org_id.to_string())
    .bind(c.id.to_string())
    .bind(&c.name)
    .bind(&c.url_sealed)
    .bind(&c.url_display)
    .bind(c.routing_key_sealed.clone())
    .bind(i64::from(c.enabled))
    .bind(c.disabled_reason.clone())
    .bind(c.failing_since)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Stops deliveries to the channel, saying why (shown in the API).
#[tracing::instrument(target = "meshfleet_traces", name = "store.alert_channels.disable", skip_all)]
pub async fn disable(conn: &mut Conn, org: OrgId, id: ChannelId, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE alert_channels SET enabled = 0, disabled_reason = $3 WHERE org_id = $1 AND id = $2")
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// The channels of (organization, channel) pairs, for the delivery job's claims, which span
/// organizations; each is found only within its own organization.
#[tracing::instrument(target = "meshfleet_traces", name = "store.alert_channels.get_many", skip_all)]
pub async fn get_many(conn: &mut Conn, ids: &[(OrgId, ChannelId)]) -> Result<std::collections::HashMap<ChannelId, Channel>, sqlx::Error> {
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(super::rows_per_statement(conn, 2)) {
        let pairs: Vec<String> = (0..chunk.len()).map(|i| format!("(org_id = ${} AND id = ${})", 2 * i + 1, 2 * i + 2)).collect();
        let sql = format!("SELECT {COLUMNS} FROM alert_channels WHERE {}", pairs.join(" OR "));
        let mut q = sqlx::query(&sql);
        for (org, id) in chunk {
            q = q.bind(org.to_string()).bind(id.to_string());
        }
        for row in q.fetch_all(&mut *conn).await? {
            let c = from_row(&row)?;
            out.insert(c.id, c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    /// A group of deliveries comes to what they would have written one by one: a success
    /// clears, the first failure after it is when the channel started failing.
    #[test]
    fn a_group_of_outcomes_comes_to_the_last_success_or_the_first_failure_after_it() {
        let fold = |seq: &[(bool, i64)]| seq[1..].iter().fold(Outcome::of(seq[0].0, seq[0].1), |o, &(ok, at)| o.then(ok, at));
        assert_eq!(fold(&[(false, 1), (false, 2)]), Outcome::Failing { since: 1, after_success: false });
        assert_eq!(fold(&[(false, 1), (true, 2)]), Outcome::Succeeded);
        assert_eq!(fold(&[(false, 1), (true, 2), (false, 3), (false, 4)]), Outcome::Failing { since: 3, after_success: true });
        assert_eq!(fold(&[(true, 1)]), Outcome::Succeeded);
    }
}
