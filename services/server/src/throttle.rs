//! Login throttling: failures are counted per account and per client address in a sliding
//! window; past the limit every attempt, even with the right password, waits for the window.
//! State is per process; behind several replicas each one enforces the limit on its own.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LoginThrottle {
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Beyond this many tracked keys, stale ones are swept so memory stays bounded.
const SWEEP_AT: usize = 100_000;

impl LoginThrottle {
    pub fn new(window: Duration) -> Self {
        LoginThrottle { window, failures: Mutex::new(HashMap::new()) }
    }

    /// Err(wait) when any key has reached its limit within the window.
    pub fn check(&self, keys: &[(&str, u32)], now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock().expect("throttle lock poisoned");
        let mut wait = Duration::ZERO;
        for (key, limit) in keys {
            if let Some(times) = map.get_mut(*key) {
                prune(times, now, self.window);
                if times.len() >= *limit as usize {
                    let oldest = times[times.len() - *limit as usize];
                    wait = wait.max((oldest + self.window).saturating_duration_since(now));
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait.max(Duration::from_secs(1)))
        }
    }

    pub fn record_failure(&self, keys: &[(&str, u32)], now: Instant) {
        let mut map = self.failures.lock().expect("throttle lock poisoned");
        if map.len() >= SWEEP_AT {
            let window = self.window;
            map.retain(|_, times| {
                prune(times, now, window);
                !times.is_empty()
            });
        }
        for (key, limit) in keys {
            let times = map.entry((*key).to_owned()).or_default();
            times.push_back(now);
            while times.len() > *limit as usize {
                times.pop_front();
            }
        }
    }

    pub fn reset(&self, key: &str) {
        self.failures.lock().expect("throttle lock poisoned").remove(key);
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times.front().is_some_and(|t| now.duration_since(*t) >= window) {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_then_wait_then_recover() {
        let t = LoginThrottle::new(Duration::from_secs(60));
        let start = Instant::now();
        let keys = [("acct:a", 3), ("addr:1", 10)];
        for i in 0..3 {
            assert!(t.check(&keys, start).is_ok(), "attempt {i}");
            t.record_failure(&keys, start);
        }
        let wait = t.check(&keys, start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(60));
        assert!(t.check(&keys, start + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn address_limit_applies_across_accounts() {
        let t = LoginThrottle::new(Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..4 {
            t.record_failure(&[(&format!("acct:{i}"), 5), ("addr:1", 4)], now);
        }
        assert!(t.check(&[("acct:new", 5), ("addr:1", 4)], now).is_err());
        assert!(t.check(&[("acct:new", 5), ("addr:2", 4)], now).is_ok());
    }
}
