//! Per-cluster limits on what an agent may send: a message rate and a connection rate (token
//! buckets keyed by cluster id, not by stream, so a reconnect refills nothing) and the events
//! accepted per minute. Held in this replica's memory: an agent holds one stream to one
//! replica at a time, so these are per cluster in practice; the series quota needs the
//! database and is checked by the ingest writer (`store::metric_series`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::domain::ClusterId;

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, at: now }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        self.tokens = (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

struct PerCluster {
    messages: Bucket,
    connects: Bucket,
    /// Start of the current one-minute window of events, and how many it accepted.
    events_since: Instant,
    events: u32,
    used: Instant,
}

pub struct Limits {
    rate: f64,
    burst: f64,
    connects_per_sec: f64,
    connects_burst: f64,
    events_per_min: u32,
    clusters: Mutex<HashMap<ClusterId, PerCluster>>,
}

/// Beyond this many tracked clusters, those idle long enough to have refilled are forgotten,
/// so memory stays bounded (forgetting a full bucket changes nothing).
const SWEEP_AT: usize = 50_000;
const IDLE: Duration = Duration::from_secs(600);

impl Limits {
    pub fn new(config: &Config) -> Limits {
        Limits {
            rate: config.gateway_rate_per_sec,
            burst: config.gateway_rate_burst,
            connects_per_sec: config.gateway_connects_per_min / 60.0,
            connects_burst: config.gateway_connects_burst,
            events_per_min: config.quota_events_per_min,
            clusters: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, cluster: ClusterId, f: impl FnOnce(&mut PerCluster, Instant) -> T) -> T {
        let now = Instant::now();
        let mut map = self.clusters.lock().expect("limits lock poisoned");
        if map.len() >= SWEEP_AT {
            map.retain(|_, c| now.saturating_duration_since(c.used) < IDLE);
        }
        let c = map.entry(cluster).or_insert_with(|| PerCluster {
            messages: Bucket::full(self.burst, now),
            connects: Bucket::full(self.connects_burst, now),
            events_since: now,
            events: 0,
            used: now,
        });
        c.used = now;
        f(c, now)
    }

    /// One message of the cluster's agent (whichever stream it comes on): false when over rate.
    pub fn message(&self, cluster: ClusterId) -> bool {
        self.with(cluster, |c, now| c.messages.take(self.rate, self.burst, now).is_ok())
    }

    /// One connection of the cluster's agent: Err(how long to wait) when it reconnects too often.
    pub fn connect(&self, cluster: ClusterId) -> Result<(), Duration> {
        self.with(cluster, |c, now| c.connects.take(self.connects_per_sec, self.connects_burst, now))
    }

    /// Of `n` events, how many fit in the cluster's allowance for the current minute (they are
    /// counted as accepted).
    pub fn events(&self, cluster: ClusterId, n: usize) -> usize {
        self.with(cluster, |c, now| {
            if now.saturating_duration_since(c.events_since) >= Duration::from_secs(60) {
                (c.events_since, c.events) = (now, 0);
            }
            let room = self.events_per_min.saturating_sub(c.events) as usize;
            let taken = n.min(room);
            c.events += taken as u32;
            taken
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(tweak: impl FnOnce(&mut Config)) -> Limits {
        let mut c = Config::default();
        tweak(&mut c);
        Limits::new(&c)
    }

    #[test]
    fn buckets_belong_to_the_cluster_and_refill_at_the_rate() {
        let l = limits(|c| (c.gateway_rate_per_sec, c.gateway_rate_burst) = (1.0, 3.0));
        let (a, b) = (ClusterId::new(), ClusterId::new());
        assert!((0..3).all(|_| l.message(a)));
        assert!(!l.message(a), "the burst is spent");
        assert!(l.message(b), "another cluster has its own bucket");
        let mut bucket = Bucket::full(1.0, Instant::now());
        let t = Instant::now();
        assert!(bucket.take(2.0, 1.0, t).is_ok());
        assert_eq!(bucket.take(2.0, 1.0, t), Err(Duration::from_millis(500)));
        assert!(bucket.take(2.0, 1.0, t + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn events_are_admitted_up_to_the_allowance_of_the_minute() {
        let l = limits(|c| c.quota_events_per_min = 10);
        let a = ClusterId::new();
        assert_eq!(l.events(a, 6), 6);
        assert_eq!(l.events(a, 6), 4);
        assert_eq!(l.events(a, 1), 0);
        assert_eq!(l.events(ClusterId::new(), 10), 10);
    }
}
