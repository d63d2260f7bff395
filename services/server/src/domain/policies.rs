//! Notification policies, with Alertmanager's routing semantics: label matchers choose which
//! channels an alert goes to, and alerts with the same values of the policy's `group_by`
//! labels travel together as one group. A group is notified when it first has a firing alert
//! (after `group_wait`, default 0 s), then when it changes (alerts join or resolve; at most once
//! per `group_interval`), and again every `repeat_interval` while it still fires.
//!
//! Alerts no policy takes follow the default route: every enabled channel, each alert on its
//! own, at once, repeated every `repeat_interval` while it fires.

use std::collections::{BTreeMap, BTreeSet};

use super::silences::Matchers;
use super::{ChannelId, OrgId, PolicyId};

/// `group_by: ["..."]`: every alert is a group of its own (as in Alertmanager).
pub const EACH_ALERT: &str = "...";
pub const DEFAULT_GROUP_BY: [&str; 2] = ["alertname", "cluster"];
pub const DEFAULT_GROUP_WAIT_MS: i64 = 0;
/// Alertmanager's defaults for the interval and the repeat.
pub const DEFAULT_GROUP_INTERVAL_MS: i64 = 5 * 60_000;
pub const DEFAULT_REPEAT_INTERVAL_MS: i64 = 4 * 3_600_000;
pub const MAX_POLICIES: usize = 100;
pub const MAX_CHANNELS: usize = 20;
pub const MAX_GROUP_BY: usize = 20;
/// Bounds of the timings, in ms: a wait up to an hour, an interval from a second to a day, a
/// repeat from a minute to 30 days (and not below the interval).
pub const MAX_GROUP_WAIT_MS: i64 = 3_600_000;
pub const GROUP_INTERVAL_MS: (i64, i64) = (1_000, 86_400_000);
pub const REPEAT_INTERVAL_MS: (i64, i64) = (60_000, 30 * 86_400_000);
/// The route of alerts no policy takes.
pub const DEFAULT_ROUTE: &str = "default";

/// How alerts are grouped into notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// By the values of these labels (a missing label is left out of the group's labels).
    Labels(Vec<String>),
    /// Each alert alone (`["..."]`).
    EachAlert,
}

impl GroupBy {
    /// From the request's or the database's list; each problem as (field path, message).
    pub fn parse(names: &[String]) -> Result<GroupBy, (String, String)> {
        if names.iter().any(|n| n == EACH_ALERT) {
            return if names.len() == 1 { Ok(GroupBy::EachAlert) } else { Err(("group_by".into(), "\"...\" must be alone".into())) };
        }
        if names.len() > MAX_GROUP_BY {
            return Err(("group_by".into(), format!("must hold at most {MAX_GROUP_BY} labels")));
        }
        let mut seen = BTreeSet::new();
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.chars().count() > super::silences::MAX_NAME_CHARS || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err((format!("group_by[{i}]"), "must be a label name: 1 to 317 characters, no white space".into()));
            }
            if !seen.insert(name) {
                return Err((format!("group_by[{i}]"), "is listed twice".into()));
            }
        }
        Ok(GroupBy::Labels(names.to_vec()))
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            GroupBy::Labels(names) => names.clone(),
            GroupBy::EachAlert => vec![EACH_ALERT.to_owned()],
        }
    }
}

/// When a route's groups are notified, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub group_wait: i64,
    pub group_interval: i64,
    pub repeat_interval: i64,
}

/// The default route's: each alert as it fires and as it resolves, repeated while it fires.
pub const DEFAULT_ROUTE_TIMING: Timing = Timing { group_wait: 0, group_interval: 0, repeat_interval: DEFAULT_REPEAT_INTERVAL_MS };

#[derive(Debug, Clone)]
pub struct Policy {
    pub id: PolicyId,
    pub org_id: OrgId,
    pub name: String,
    /// Order among the organization's policies: lower first.
    pub position: i64,
    /// All must match an alert's labels; none at all matches every alert.
    pub matchers: Matchers,
    pub channels: Vec<ChannelId>,
    pub group_by: GroupBy,
    pub timing: Timing,
    /// Whether alerts it matches go on to the policies after it.
    pub continue_matching: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Where an alert goes: a policy, or the default route.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    Policy(&'a Policy),
    Default,
}

impl Route<'_> {
    pub fn id(&self) -> String {
        match self {
            Route::Policy(p) => p.id.to_string(),
            Route::Default => DEFAULT_ROUTE.to_owned(),
        }
    }

    pub fn timing(&self) -> Timing {
        match self {
            Route::Policy(p) => p.timing,
            Route::Default => DEFAULT_ROUTE_TIMING,
        }
    }

    /// The channels it names; None for the default route's "every enabled channel".
    pub fn channels(&self) -> Option<&[ChannelId]> {
        match self {
            Route::Policy(p) => Some(&p.channels),
            Route::Default => None,
        }
    }

    /// The group an alert with these labels and fingerprint joins: its key and its labels.
    pub fn group(&self, labels: &BTreeMap<String, String>, fingerprint: &str) -> (String, BTreeMap<String, String>) {
        let by = match self {
            Route::Policy(p) => &p.group_by,
            Route::Default => &GroupBy::EachAlert,
        };
        match by {
            GroupBy::EachAlert => (fingerprint.to_owned(), labels.clone()),
            GroupBy::Labels(names) => {
                let picked: BTreeMap<String, String> = names.iter().filter_map(|n| labels.get(n).map(|v| (n.clone(), v.clone()))).collect();
                (group_key(&picked), picked)
            }
        }
    }
}

/// A group's key: a hash of its labels (16 hex digits, as fingerprints are).
fn group_key(labels: &BTreeMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (k, v) in labels {
        hash.update(k);
        hash.update([0]);
        hash.update(v);
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..8])
}

/// The routes of an alert with these labels: the policies in order, the first that matches
/// and those after it while each matching one continues; the default route if none does.
pub fn routes<'a>(policies: &'a [Policy], labels: &BTreeMap<String, String>) -> Vec<Route<'a>> {
    let mut routes = Vec::new();
    for p in policies {
        if p.matchers.matches(labels) {
            routes.push(Route::Policy(p));
            if !p.continue_matching {
                break;
            }
        }
    }
    if routes.is_empty() {
        routes.push(Route::Default);
    }
    routes
}

/// A group as its last notification left it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notified {
    pub created_at: i64,
    /// None before its first notification.
    pub flushed_at: Option<i64>,
    /// The fingerprints whose firing it has told its channels and not yet their resolution.
    pub sent: BTreeSet<String>,
}

/// A group's alerts now.
#[derive(Debug, Clone, Default)]
pub struct Members {
    /// Every firing alert routed to the group, muted or not.
    pub firing: BTreeSet<String>,
    /// Those to notify: neither silenced nor clearing.
    pub notifiable: BTreeSet<String>,
}

/// What to do with a group now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flush {
    /// Nothing due (yet).
    Wait,
    /// Nothing left to tell: forget the group.
    Forget,
    /// Notify: `firing` are the alerts to tell as firing (those that joined, or all on a
    /// repeat), `resolved` those whose firing was sent and that no longer fire. Afterwards the
    /// group remembers `sent`.
    Send { firing: BTreeSet<String>, resolved: BTreeSet<String>, repeat: bool, sent: BTreeSet<String> },
}

/// Whether and what a group notifies at `now`. `open` tells whether a fingerprint still fires
/// anywhere (an alert that moved to another group, or is silenced, has not resolved).
pub fn flush(notified: &Notified, members: &Members, open: impl Fn(&str) -> bool, now: i64, timing: Timing) -> Flush {
    let joined: BTreeSet<String> = members.notifiable.difference(&notified.sent).cloned().collect();
    let resolved: BTreeSet<String> = notified.sent.iter().filter(|f| !open(f)).cloned().collect();
    // Sent alerts stay remembered while they are in the group, told or muted.
    let sent: BTreeSet<String> = notified.sent.intersection(&members.firing).chain(&members.notifiable).cloned().collect();
    if joined.is_empty() && resolved.is_empty() {
        return match notified.flushed_at {
            Some(at) if !members.notifiable.is_empty() && now - at >= timing.repeat_interval => {
                Flush::Send { firing: members.notifiable.clone(), resolved, repeat: true, sent }
            }
            _ if sent.is_empty() => Flush::Forget,
            _ => Flush::Wait,
        };
    }
    let due = match notified.flushed_at {
        None => notified.created_at + timing.group_wait,
        Some(at) => at + timing.group_interval,
    };
    if now < due {
        return Flush::Wait;
    }
    Flush::Send { firing: joined, resolved, repeat: false, sent }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::silences::{MatchOp, MatcherSpec};

    const T: Timing = Timing { group_wait: 10, group_interval: 100, repeat_interval: 1_000 };

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn members(firing: &[&str], notifiable: &[&str]) -> Members {
        Members { firing: set(firing), notifiable: set(notifiable) }
    }

    fn policy(matchers: &[(&str, &str)], continue_matching: bool, group_by: &[&str]) -> Policy {
        let specs: Vec<MatcherSpec> = matchers.iter().map(|(n, v)| MatcherSpec { name: (*n).into(), op: MatchOp::Eq, value: (*v).into() }).collect();
        Policy {
            id: PolicyId::new(),
            org_id: OrgId::new(),
            name: "p".into(),
            position: 0,
            matchers: Matchers::parse_route(&specs).unwrap(),
            channels: vec![],
            group_by: GroupBy::parse(&group_by.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap(),
            timing: T,
            continue_matching,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_first_matching_policy_routes_unless_it_continues() {
        let critical = policy(&[("severity", "critical")], false, &["cluster"]);
        let prod = policy(&[("env", "prod")], true, &["cluster"]);
        let all = policy(&[], false, &["alertname"]);
        let ids = |ps: &[Policy], l: &BTreeMap<String, String>| routes(ps, l).iter().map(Route::id).collect::<Vec<_>>();
        let ps = [critical.clone(), prod.clone(), all.clone()];
        assert_eq!(ids(&ps, &labels(&[("severity", "critical"), ("env", "prod")])), [critical.id.to_string()]);
        assert_eq!(ids(&ps, &labels(&[("severity", "warning"), ("env", "prod")])), [prod.id.to_string(), all.id.to_string()]);
        assert_eq!(ids(&[critical], &labels(&[("severity", "warning")])), [DEFAULT_ROUTE]);
    }

    #[test]
    fn groups_are_keyed_by_the_group_by_labels() {
        let p = policy(&[], false, &["cluster", "team"]);
        let route = Route::Policy(&p);
        let (a, la) = route.group(&labels(&[("cluster", "eu"), ("alertname", "agent")]), "f1");
        let (b, _) = route.group(&labels(&[("cluster", "eu"), ("alertname", "clock_skew")]), "f2");
        let (c, _) = route.group(&labels(&[("cluster", "us"), ("alertname", "agent")]), "f3");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(la, labels(&[("cluster", "eu")]), "a missing label is left out");
        assert_eq!(Route::Default.group(&labels(&[("cluster", "eu")]), "f1").0, "f1", "the default route groups each alert alone");
    }

    #[test]
    fn group_by_is_checked() {
        let parse = |names: &[&str]| GroupBy::parse(&names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(parse(&["..."]), Ok(GroupBy::EachAlert));
        assert_eq!(parse(&["...", "cluster"]).unwrap_err().0, "group_by");
        assert_eq!(parse(&["cluster", "cluster"]).unwrap_err().0, "group_by[1]");
        assert_eq!(parse(&["cluster", "a b"]).unwrap_err().0, "group_by[1]");
        assert_eq!(parse(&[]), Ok(GroupBy::Labels(vec![])), "no labels: one group for all");
    }

    #[test]
    fn a_new_group_waits_group_wait_then_sends_its_firing_alerts() {
        let fresh = Notified { created_at: 0, flushed_at: None, sent: set(&[]) };
        let m = members(&["a", "b"], &["a"]);
        assert_eq!(flush(&fresh, &m, |_| true, 9, T), Flush::Wait);
        assert_eq!(flush(&fresh, &m, |_| true, 10, T), Flush::Send { firing: set(&["a"]), resolved: set(&[]), repeat: false, sent: set(&["a"]) });
    }

    #[test]
    fn changes_wait_for_the_group_interval() {
        let told = Notified { created_at: 0, flushed_at: Some(50), sent: set(&["a"]) };
        let m = members(&["a", "b"], &["a", "b"]);
        assert_eq!(flush(&told, &m, |_| true, 149, T), Flush::Wait);
        assert_eq!(flush(&told, &m, |_| true, 150, T), Flush::Send { firing: set(&["b"]), resolved: set(&[]), repeat: false, sent: set(&["a", "b"]) });
        // A sent alert that stopped firing is told resolved.
        let gone = members(&[], &[]);
        assert_eq!(flush(&told, &gone, |_| false, 150, T), Flush::Send { firing: set(&[]), resolved: set(&["a"]), repeat: false, sent: set(&[]) });
        // Then the group has nothing left.
        let done = Notified { created_at: 0, flushed_at: Some(150), sent: set(&[]) };
        assert_eq!(flush(&done, &gone, |_| false, 151, T), Flush::Forget);
    }

    #[test]
    fn a_muted_or_moved_alert_is_not_resolved() {
        let told = Notified { created_at: 0, flushed_at: Some(50), sent: set(&["a", "b"]) };
        // `a` is silenced (firing, not notifiable), `b` moved to another group (still open).
        let m = members(&["a"], &[]);
        assert_eq!(flush(&told, &m, |_| true, 5_000, T), Flush::Wait);
        // When `a` resolves it is told.
        let m = members(&[], &[]);
        assert_eq!(flush(&told, &m, |f| f == "b", 5_000, T), Flush::Send { firing: set(&[]), resolved: set(&["a"]), repeat: false, sent: set(&[]) });
    }

    #[test]
    fn a_firing_group_repeats_after_the_repeat_interval() {
        let told = Notified { created_at: 0, flushed_at: Some(50), sent: set(&["a"]) };
        let m = members(&["a"], &["a"]);
        assert_eq!(flush(&told, &m, |_| true, 1_049, T), Flush::Wait);
        assert_eq!(flush(&told, &m, |_| true, 1_050, T), Flush::Send { firing: set(&["a"]), resolved: set(&[]), repeat: true, sent: set(&["a"]) });
    }
}
