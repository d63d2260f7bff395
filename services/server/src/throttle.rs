//! Login throttling: attempts are counted per account and per client address in a window
//! that starts at a subject's first attempt; past the limit every attempt, even with the
//! right password, waits for the window to end. An attempt is counted before its password is
//! checked and taken back once the password proved right, so a burst of parallel guesses is
//! limited exactly like a sequence of them. The counters are rows in the database, shared by
//! every replica; this module must never keep a count of its own.

use std::time::Duration;

use crate::db::Db;
use crate::http::error::ApiError;
use crate::store::{login_throttle, Conn};

/// Attempts counted for one login, to be taken back if its password is right.
#[must_use = "a reservation is released on success or kept as a failure"]
pub struct Reservation {
    counted: Vec<(String, i64)>,
}

/// Counts an attempt against every `(subject, limit)`. Err(TooManyRequests) when any subject
/// is past its limit; that attempt is then not counted (it checks no password).
pub async fn reserve(db: &Db, subjects: &[(&str, u32)], window: Duration, now: i64) -> Result<Reservation, ApiError> {
    let window_ms = crate::config::ms(window);
    let mut conn = db.pool.acquire().await?;
    let mut reservation = Reservation { counted: Vec::with_capacity(subjects.len()) };
    let mut wait_ms = 0;
    for (subject, limit) in subjects {
        let (attempts, window_start) = login_throttle::count_attempt(&mut conn, subject, now, window_ms).await?;
        reservation.counted.push(((*subject).to_owned(), window_start));
        if attempts > i64::from(*limit) {
            // A concurrent attempt (on another replica) may have started the window a moment
            // after this attempt's `now`: the wait is never longer than a window.
            wait_ms = wait_ms.max((window_start.saturating_add(window_ms) - now).min(window_ms));
        }
    }
    if wait_ms > 0 {
        reservation.release(&mut conn).await?;
        let secs = u64::try_from(wait_ms).unwrap_or(0).div_ceil(1000).max(1);
        return Err(ApiError::TooManyRequests { retry_after_secs: secs });
    }
    Ok(reservation)
}

impl Reservation {
    /// The password was right (or the attempt was refused): it does not count as a failure.
    pub async fn release(self, conn: &mut Conn) -> Result<(), ApiError> {
        for (subject, window_start) in &self.counted {
            login_throttle::uncount_attempt(conn, subject, *window_start).await?;
        }
        Ok(())
    }
}
