//! Fleet health: how worrying a cluster is and why, from its agent status, golden metrics,
//! certificates and control plane; and the request rate over the time data actually covers.
//! Pure rules, no I/O and no wording: adapters remember state and render the findings.

/// How worrying a cluster is; the overview lists the worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Critical,
    Degraded,
    Expiring,
    Pending,
    Healthy,
}

impl Health {
    pub fn label(self) -> &'static str {
        match self {
            Health::Critical => "critical",
            Health::Degraded => "degraded",
            Health::Expiring => "expiring",
            Health::Pending => "pending",
            Health::Healthy => "healthy",
        }
    }
}

/// Why a cluster has its health.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// The agent is stale or disconnected (the status).
    AgentAway(String),
    NoAgentYet,
    /// A certificate expired at this time (ms).
    CertificateExpired(i64),
    /// The success rate (0..=1) is below the threshold of the health it gives.
    SuccessRate(f64),
    ControlPlaneNotReady {
        ready: u32,
        want: u32,
    },
    /// A certificate expires at this time (ms), within `EXPIRY_WARNING_MS`.
    CertificateExpiring(i64),
    AllGood,
}

/// Below this success rate a cluster is critical.
pub const CRITICAL_BELOW: f64 = 0.95;
/// Below this success rate a healthy cluster becomes degraded ...
pub const DEGRADED_BELOW: f64 = 0.99;
/// ... and a degraded one recovers only at or above this one. The gap keeps a cluster whose
/// rate wanders around 99% from flipping between healthy and degraded every few seconds.
pub const RECOVERED_AT: f64 = 0.995;
pub const EXPIRY_WARNING_MS: i64 = 7 * 86_400_000;

/// Whether a success rate counts as degraded (or worse), given whether it did last time.
/// No traffic is no evidence of errors.
pub fn success_degraded(rate: Option<f64>, was_degraded: bool) -> bool {
    match rate {
        Some(r) if was_degraded => r < RECOVERED_AT,
        Some(r) => r < DEGRADED_BELOW,
        None => false,
    }
}

/// What the health rule looks at.
pub struct Signals<'a> {
    /// The agent's effective status: pending, connected, stale or disconnected.
    pub status: &'a str,
    pub success_rate: Option<f64>,
    /// The result of `success_degraded` for this cluster, which carries the hysteresis.
    pub success_degraded: bool,
    pub nearest_expiry: Option<i64>,
    /// (ready, wanted) control-plane replicas, when reported.
    pub control_plane: Option<(u32, u32)>,
    pub now: i64,
}

/// The cluster's health and the most important reason for it.
pub fn assess(s: &Signals) -> (Health, Finding) {
    match s.status {
        "disconnected" | "stale" => return (Health::Critical, Finding::AgentAway(s.status.to_owned())),
        "pending" => return (Health::Pending, Finding::NoAgentYet),
        _ => {}
    }
    if let Some(e) = s.nearest_expiry.filter(|e| *e <= s.now) {
        return (Health::Critical, Finding::CertificateExpired(e));
    }
    match s.success_rate {
        Some(r) if r < CRITICAL_BELOW => return (Health::Critical, Finding::SuccessRate(r)),
        Some(r) if s.success_degraded => return (Health::Degraded, Finding::SuccessRate(r)),
        _ => {}
    }
    if let Some((ready, want)) = s.control_plane.filter(|(r, w)| r < w) {
        return (Health::Degraded, Finding::ControlPlaneNotReady { ready, want });
    }
    if let Some(e) = s.nearest_expiry.filter(|e| *e - s.now < EXPIRY_WARNING_MS) {
        return (Health::Expiring, Finding::CertificateExpiring(e));
    }
    (Health::Healthy, Finding::AllGood)
}

/// Requests per second over a window of `window_ms` ending at `now`, of data whose earliest
/// minute starts at `first_minute`: divided by the time the data covers (a workload seen for
/// one minute is not averaged over five), never by less than a second.
pub fn rate_per_second(requests: i64, first_minute: i64, now: i64, window_ms: i64) -> f64 {
    let covered_ms = (now - first_minute).clamp(1_000, window_ms.max(1_000));
    requests as f64 * 1_000.0 / covered_ms as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(rate: f64, was_degraded: bool) -> Health {
        let degraded = success_degraded(Some(rate), was_degraded);
        assess(&Signals { status: "connected", success_rate: Some(rate), success_degraded: degraded, nearest_expiry: None, control_plane: None, now: 0 }).0
    }

    #[test]
    fn degraded_clusters_recover_only_clearly_above_the_threshold() {
        // A healthy cluster stays healthy down to 99% and turns degraded below it.
        assert_eq!(connected(0.992, false), Health::Healthy);
        assert_eq!(connected(0.989, false), Health::Degraded);
        // A degraded one stays degraded between 99% and 99.5%, recovers at 99.5%.
        assert_eq!(connected(0.992, true), Health::Degraded);
        assert_eq!(connected(0.995, true), Health::Healthy);
        // A rate wandering around 99% no longer flips on every sample.
        let mut was = false;
        let flips = [0.989, 0.991, 0.9895, 0.992, 0.9893, 0.994]
            .iter()
            .map(|r| {
                let now = success_degraded(Some(*r), was);
                let flipped = now != was;
                was = now;
                flipped
            })
            .filter(|f| *f)
            .count();
        assert_eq!(flips, 1);
        // Critical and no-traffic cases keep their meaning.
        assert_eq!(connected(0.94, true), Health::Critical);
        assert!(!success_degraded(None, true));
    }

    #[test]
    fn findings_come_worst_first() {
        let base = Signals { status: "connected", success_rate: None, success_degraded: false, nearest_expiry: None, control_plane: None, now: 1_000 };
        assert_eq!(assess(&Signals { status: "stale", ..base }), (Health::Critical, Finding::AgentAway("stale".into())));
        let base =
            Signals { status: "connected", success_rate: None, success_degraded: false, nearest_expiry: Some(500), control_plane: Some((1, 2)), now: 1_000 };
        assert_eq!(assess(&base), (Health::Critical, Finding::CertificateExpired(500)));
        let base = Signals { nearest_expiry: Some(2_000), ..base };
        assert_eq!(assess(&base), (Health::Degraded, Finding::ControlPlaneNotReady { ready: 1, want: 2 }));
        let base = Signals { control_plane: Some((2, 2)), ..base };
        assert_eq!(assess(&base), (Health::Expiring, Finding::CertificateExpiring(2_000)));
        assert_eq!(assess(&Signals { status: "pending", ..base }), (Health::Pending, Finding::NoAgentYet));
    }

    #[test]
    fn rates_divide_by_the_time_the_data_covers() {
        let window = 5 * 60_000;
        // Five full minutes of 600 requests each: 10/s either way.
        assert_eq!(rate_per_second(3_000, 0, window, window), 10.0);
        // A workload first seen 60 s ago with 600 requests: 10/s, not 2/s.
        assert_eq!(rate_per_second(600, 240_000, window, window), 10.0);
        // Older data is cut at the window; a minute that starts now counts a second.
        assert_eq!(rate_per_second(3_000, -600_000, window, window), 10.0);
        assert_eq!(rate_per_second(5, 1_000, 1_000, window), 5.0);
    }
}
