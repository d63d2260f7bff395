//! Background maintenance: commands past their deadline expire, metrics and events past the
//! retention period are deleted, and pending metrics reports are rolled up every second. All
//! are idempotent, so replicas may run them at once (rollup passes take turns under a lock).

use std::time::Duration;

use crate::app::AppState;
use crate::store;

const EVERY: Duration = Duration::from_secs(10);
const RETENTION_EVERY_TICKS: u64 = 60;
/// Readers roll up their own scope first, so this only bounds the pending table (and the
/// work a reader may find): it is not how fresh the metrics API is. Short and frequent: on
/// SQLite a pass holds the write lock, so ingest commits wait for it.
const ROLLUP_EVERY: Duration = Duration::from_millis(250);
/// Reports per rollup transaction: a pass stays short, and a backlog takes several.
const ROLLUP_BATCH: u32 = 2_000;

pub async fn run(state: AppState) {
    tokio::spawn(roll_up(state.clone()));
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        let now = state.clock.now_ms();
        let Ok(mut conn) = state.db.pool.acquire().await else { continue };
        if let Err(e) = store::commands::expire_overdue(&mut conn, now).await {
            tracing::warn!(error = %e, "expiring commands failed");
        }
        if n % RETENTION_EVERY_TICKS == 0 {
            let cutoff = now - state.config.metric_retention_hours * 3_600_000;
            match store::rollups::delete_older_than(&mut conn, cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "deleted metrics and events past retention"),
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
    }
}

async fn roll_up(state: AppState) {
    let mut tick = tokio::time::interval(ROLLUP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(mut conn) = state.db.pool.acquire().await else { continue };
        loop {
            match store::metric_reports::roll_up(&mut conn, store::metric_reports::Scope::Oldest(ROLLUP_BATCH)).await {
                Ok(n) if n == ROLLUP_BATCH as usize => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "rolling up metrics reports failed; retrying in a second");
                    break;
                }
            }
        }
    }
}
