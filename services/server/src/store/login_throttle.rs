//! Log-in attempt counters, one row per subject (an account or a client address), in a fixed
//! window that starts at the subject's first attempt. Each statement is atomic on its own, so
//! concurrent attempts on any number of replicas are all counted.

use sqlx::Row;

use super::Conn;

/// Counts one attempt for `subject` and returns (attempts in its window, window start). A
/// window that ended at or before `now - window_ms` starts afresh with this attempt.
#[tracing::instrument(target = "meshfleet_traces", name = "store.login_throttle.count_attempt", skip_all)]
pub async fn count_attempt(conn: &mut Conn, subject: &str, now: i64, window_ms: i64) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO login_throttle (subject, window_start, attempts) VALUES ($1, $2, 1)
         ON CONFLICT (subject) DO UPDATE SET
             attempts = CASE WHEN login_throttle.window_start <= $2 - $3 THEN 1 ELSE login_throttle.attempts + 1 END,
             window_start = CASE WHEN login_throttle.window_start <= $2 - $3 THEN $2 ELSE login_throttle.window_start END
         RETURNING attempts, window_start",
    )
    .bind(subject)
    .bind(now)
    .bind(window_ms)
    .fetch_one(conn)
    .await?;
    Ok((row.try_get("attempts")?, row.try_get("window_start")?))
}

/// Takes back one attempt counted in the window that started at `window_start` (a later
/// window is left alone).
#[tracing::instrument(target = "meshfleet_traces", name = "store.login_throttle.uncount_attempt", skip_all)]
pub async fn uncount_attempt(conn: &mut Conn, subject: &str, window_start: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE login_throttle SET attempts = attempts - 1 WHERE subject = $1 AND window_start = $2 AND attempts > 0")
        .bind(subject)
        .bind(window_start)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes the rows of windows that ended, so the table holds only recent subjects.
#[tracing::instrument(target = "meshfleet_traces", name = "store.login_throttle.forget_ended", skip_all)]
pub async fn forget_ended(conn: &mut Conn, now: i64, window_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM login_throttle WHERE window_start <= $1").bind(now - window_ms).execute(conn).await?;
    Ok(done.rows_affected())
}
