//! Background maintenance, as jobs of `jobs`: commands past their deadline expire, metrics
//! and events, resolved alerts, sent notifications and expired silences past their retention
//! periods are deleted, and pending metrics reports are rolled up. Each runs on one replica at a time under its lease; all are idempotent, so the short
//! overlap a lease handover may allow is harmless.

use std::time::Duration;

use anyhow::Context;

use crate::app::AppState;
use crate::jobs::{Job, Scope};
use crate::store;

const EXPIRE_EVERY: Duration = Duration::from_secs(10);
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// Readers roll up their own scope first, so this only bounds the pending table (and the
/// work a reader may find): it is not how fresh the metrics API is. Short and frequent: on
/// SQLite a pass holds the write lock, so ingest commits wait for it.
const ROLLUP_EVERY: Duration = Duration::from_millis(250);
/// Reports per rollup transaction: a pass stays short, and a backlog takes several.
const ROLLUP_BATCH: u32 = 2_000;

pub fn jobs() -> Vec<Job> {
    vec![
        Job::new("rollups", ROLLUP_EVERY, Scope::Leased, roll_up),
        Job::new("command-expiry", EXPIRE_EVERY, Scope::Leased, expire_commands),
        Job::new("retention", RETENTION_EVERY, Scope::Leased, retention),
    ]
}

async fn expire_commands(state: AppState) -> anyhow::Result<()> {
    let mut conn = state.db.pool.acquire().await?;
    store::commands::expire_overdue(&mut conn, state.clock.now_ms()).await.context("expiring commands")?;
    Ok(())
}

/// One pass of the `retention` job.
pub async fn retention(state: AppState) -> anyhow::Result<()> {
    let mut conn = state.db.pool.acquire().await?;
    let cutoff = state.clock.now_ms() - crate::config::ms(state.config.metric_retention);
    match store::rollups::delete_older_than(&mut conn, cutoff).await.context("deleting metrics and events past retention")? {
        0 => {}
        n => tracing::info!(rows = n, "deleted metrics and events past retention"),
    }
    let cutoff = state.clock.now_ms() - crate::config::ms(state.config.alert_retention);
    let alerts = store::alerts::delete_resolved_before(&mut conn, cutoff).await.context("deleting resolved alerts past retention")?;
    let sent = store::notifications::delete_settled_before(&mut conn, cutoff).await.context("deleting sent notifications past retention")?;
    let silences = store::silences::delete_ended_before(&mut conn, cutoff).await.context("deleting expired silences past retention")?;
    if alerts + sent + silences > 0 {
        tracing::info!(alerts, notifications = sent, silences, "deleted alerting history past retention");
    }
    // Ended log-in windows count for nothing (a new attempt restarts its window): drop them here,
    // off the log-in path.
    let window_ms = crate::config::ms(state.config.login_failure_window);
    store::login_throttle::forget_ended(&mut conn, state.clock.now_ms(), window_ms).await.context("forgetting ended log-in windows")?;
    Ok(())
}

/// Rolls up pending reports, batch after batch until the backlog is gone.
async fn roll_up(state: AppState) -> anyhow::Result<()> {
    let mut conn = state.db.pool.acquire().await?;
    loop {
        let n = store::metric_reports::roll_up(&mut conn, store::metric_reports::Scope::Oldest(ROLLUP_BATCH)).await.context("rolling up metrics reports")?;
        if n < ROLLUP_BATCH as usize {
            return Ok(());
        }
    }
}
