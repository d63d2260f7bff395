//! Background maintenance: commands past their deadline expire, and metrics and events past
//! the retention period are deleted. Both are idempotent, so replicas may run them at once.

use std::time::Duration;

use crate::app::AppState;
use crate::store;

const EVERY: Duration = Duration::from_secs(10);
const RETENTION_EVERY_TICKS: u64 = 60;

pub async fn run(state: AppState) {
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
