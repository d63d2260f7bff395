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

/// Cuts every stream on this replica whose certificate is no longer valid, and remembers the
/// others as valid for another interval (the agents' calls beside their streams skip the
/// database then).
pub async fn recheck(state: AppState) -> anyhow::Result<()> {
    let open = state.agents.certificates();
    if open.is_empty() {
        return Ok(());
    }
    let now = state.clock.now_ms();
    let started = state.agents.check_started();
    let mut conn = state.db.pool.acquire().await?;
    let valid = store::agents::valid_certificates(&mut conn, &open, now).await.context("re-checking agent certificates")?;
    // The valid first: cutting a stream counts as a revocation, after which `started` no
    // longer lets anything be remembered.
    for ((_, cluster, serial), &not_after) in &valid {
        state.agents.remember_verified(*cluster, serial, trusted_until(now, not_after), started);
    }
    for (_, cluster, serial) in open.into_iter().filter(|key| !valid.contains_key(key)) {
        tracing::info!(cluster_id = %cluster, serial, "agent certificate no longer valid; ending its stream");
        state.agents.certificate_invalid(cluster, &serial);
    }
    Ok(())
}

/// How long a certificate found valid at `now` may be trusted without asking again.
pub fn trusted_until(now: i64, not_after: i64) -> i64 {
    (now + crate::domain::ms(RECHECK_EVERY)).min(not_after)
}
