//! Leases of background jobs (`jobs`): one holder per job at a time, taken, renewed and
//! released by single statements, so two replicas racing for a lease never both win.

use sqlx::Row;

use super::Conn;

/// Takes the job's lease for `holder` until `expires_at`, or renews it if `holder` has it.
/// Succeeds (true) when the lease was free, expired before `now`, or already `holder`'s.
#[tracing::instrument(target = "meshfleet_traces", name = "store.leases.take", skip_all)]
pub async fn take(conn: &mut Conn, job: &str, holder: &str, now: i64, expires_at: i64) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO job_leases (job, holder, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
         WHERE job_leases.holder = excluded.holder OR job_leases.expires_at < $4 \
         RETURNING holder",
    )
    .bind(job)
    .bind(holder)
    .bind(expires_at)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(row) => row.try_get::<String, _>("holder")? == holder,
        None => false,
    })
}

/// Gives the lease up (if `holder` still has it), so another replica takes over at once.
#[tracing::instrument(target = "meshfleet_traces", name = "store.leases.release", skip_all)]
pub async fn release(conn: &mut Conn, job: &str, holder: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM job_leases WHERE job = $1 AND holder = $2").bind(job).bind(holder).execute(&mut *conn).await?;
    Ok(())
}

/// The job's current holder, expired or not.
#[tracing::instrument(target = "meshfleet_traces", name = "store.leases.holder", skip_all)]
pub async fn holder(conn: &mut Conn, job: &str) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query("SELECT holder FROM job_leases WHERE job = $1").bind(job).fetch_optional(&mut *conn).await?;
    row.map(|r| r.try_get("holder")).transpose()
}
