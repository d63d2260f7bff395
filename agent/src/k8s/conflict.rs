//! Optimistic concurrency for the agent's writes: a 409 Conflict (the object changed since it
//! was read, e.g. a stale resourceVersion) is answered by reading again and retrying a few times
//! with a short backoff. It never forces a write past a conflict.

use std::future::Future;
use std::time::Duration;

/// Attempts before the conflict is returned to the caller.
pub const ATTEMPTS: u32 = 5;

/// Runs `attempt` (which must re-read what it writes) until it does not end in 409.
pub async fn retry_on_conflict<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, ::kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ::kube::Error>>,
{
    let mut delay = Duration::from_millis(20);
    let mut n = 1;
    loop {
        match attempt().await {
            Err(::kube::Error::Api(e)) if e.code == 409 && n < ATTEMPTS => {
                tracing::debug!(what, attempt = n, reason = %e.message, "write conflict; reading again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
                n += 1;
            }
            other => return other,
        }
    }
}

/// The error is a 409 Conflict.
pub fn is_conflict(e: &::kube::Error) -> bool {
    matches!(e, ::kube::Error::Api(a) if a.code == 409)
}
