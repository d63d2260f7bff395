//! Cluster liveness: the status users see. The stored status is what the gateway last wrote
//! (pending, connected, disconnected); a `connected` agent that stopped reporting (its replica
//! died, say) turns stale, then disconnected, by how long it has been unheard.

use std::time::Duration;

/// When a connected agent that went quiet counts as stale, then as disconnected.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Unheard since before this (ms): stale.
    pub stale_before: i64,
    /// Unheard since before this (ms): disconnected.
    pub disconnected_before: i64,
}

impl Liveness {
    /// At `now` (ms), with the `stale_after_secs` and `disconnected_after_secs` settings.
    pub fn at(now: i64, stale_after: Duration, disconnected_after: Duration) -> Liveness {
        use super::ms;
        Liveness { stale_before: now.saturating_sub(ms(stale_after)), disconnected_before: now.saturating_sub(ms(disconnected_after)) }
    }

    /// The status to show for a stored status and when the agent was last heard from.
    pub fn status<'a>(&self, stored: &'a str, last_seen: Option<i64>) -> &'a str {
        match (stored, last_seen) {
            ("connected", Some(seen)) if seen < self.disconnected_before => "disconnected",
            ("connected", Some(seen)) if seen < self.stale_before => "stale",
            (status, _) => status,
        }
    }

    /// `status` as an SQL expression over the stored status and last-seen columns, for queries
    /// that filter by it (the cut-offs are integers, inlined).
    pub fn status_sql(&self, status: &str, last_seen: &str) -> String {
        format!(
            "(CASE WHEN {status} = 'connected' AND {last_seen} < {gone} THEN 'disconnected' \
             WHEN {status} = 'connected' AND {last_seen} < {stale} THEN 'stale' ELSE {status} END)",
            gone = self.disconnected_before,
            stale = self.stale_before
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_connected_agents_turn_stale_then_disconnected() {
        let live = Liveness::at(1_000_000, Duration::from_secs(30), Duration::from_secs(300));
        assert_eq!(live.status("connected", Some(1_000_000 - 29_000)), "connected");
        assert_eq!(live.status("connected", Some(1_000_000 - 31_000)), "stale");
        assert_eq!(live.status("connected", Some(1_000_000 - 301_000)), "disconnected");
        // Other statuses are what the gateway wrote, however old.
        assert_eq!(live.status("pending", None), "pending");
        assert_eq!(live.status("disconnected", Some(0)), "disconnected");
    }
}
