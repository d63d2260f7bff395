//! The fallback re-check of the certificates of the streams open on this replica. Revocations
//! reach streams at once, in-process and through NOTIFY; this catches a missed notification
//! and certificates that expired while connected, with one query per ~200 streams.

use std::time::Duration;

use anyhow::Context;

use crate::app::AppState;
use crate::jobs::{Job, Scope};
use crate::store;

/// Kept rare: it bounds how long a missed revocation goes unnoticed, nothing more.
pub const RECHECK_EVERY: Duration = Duration::from_secs(30);

pub fn job() -> Job {
    Job::new("certificate-recheck", RECHECK_EVERY, Scope::EveryReplica, recheck)
}

/// Cuts every stream on this replica whose certificate is no longer valid.
pub async fn recheck(state: AppState) -> anyhow::Result<()> {
    let open = state.agents.certificates();
    if open.is_empty() {
        return Ok(());
    }
    let mut conn = state.db.pool.acquire().await?;
    let invalid = store::agents::invalid_certificates(&mut conn, &open, state.clock.now_ms()).await.context("re-checking agent certificates")?;
    for (cluster, serial) in invalid {
        tracing::info!(cluster_id = %cluster, serial, "agent certificate no longer valid; ending its stream");
        state.agents.certificate_invalid(cluster, &serial);
    }
    Ok(())
}
