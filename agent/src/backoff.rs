//! Reconnect delays: exponential with full jitter, so a fleet that lost the service at the same
//! moment does not come back in lockstep.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff { initial, max: max.max(initial), attempt: 0 }
    }

    /// The ceiling of the next delay: initial * 2^attempt, capped at max.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }

    /// A uniformly random delay in [0, ceiling] ("full jitter"), then the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
    }

    /// Jump straight to the maximum, e.g. when the service refuses this agent's certificate
    /// and retrying fast would only add load.
    pub fn at_max(&mut self) {
        self.attempt = 32;
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_full_jitter_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<u128> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d <= c, "{d:?} above ceiling {c:?}");
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        b.at_max();
        assert_eq!(b.ceiling(), Duration::from_secs(2));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let delays: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 10, "full jitter should rarely repeat: {delays:?}");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }
}
