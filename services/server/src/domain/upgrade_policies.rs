//! Upgrade policies: per cluster label selector, which release channel a cluster follows,
//! whether new releases are rolled out to it automatically, when (maintenance windows, in a
//! named time zone so daylight-saving changes move them as the local clock does), a pinned
//! version, or that it is left out of upgrades. A cluster's policy is the first, by
//! `position`, whose selector matches its labels; with none, the defaults: stable, manual,
//! any time.

use std::str::FromStr;

use chrono::{Datelike, NaiveTime, TimeZone};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::labels::{Labels, Selector};
use super::releases::{parse_version, Channel};
use super::{OrgId, UpgradePolicyId};

pub const MAX_POLICIES: usize = 100;
pub const MAX_WINDOWS: usize = 14;

/// Whether the service starts upgrades by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// New releases on the cluster's channel are proposed into rollouts, started in a window.
    Automatic,
    /// Only rollouts people start.
    #[default]
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    fn of(w: chrono::Weekday) -> Day {
        [Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri, Day::Sat, Day::Sun][w.num_days_from_monday() as usize]
    }
}

/// A maintenance window: from `start` to `end` local time, beginning on each of `days`. An
/// `end` at or before `start` runs past midnight into the next day (`00:00`-`00:00` is a whole day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    #[schema(min_items = 1)]
    pub days: Vec<Day>,
    /// `HH:MM`, 24-hour.
    #[schema(example = "02:00")]
    pub start: String,
    #[schema(example = "05:00")]
    pub end: String,
}

fn default_position() -> i64 {
    100
}

fn utc() -> String {
    "UTC".into()
}

/// An upgrade policy as people write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradePolicySpec {
    /// 1 to 100 characters.
    pub name: String,
    /// The clusters it governs, by label (Kubernetes selector syntax); empty: every cluster.
    #[serde(default)]
    pub selector: String,
    /// Policies are tried in this order (lower first; default 100); the first that matches a
    /// cluster is its policy.
    #[serde(default = "default_position")]
    #[schema(minimum = 0, maximum = 1000)]
    pub position: i64,
    #[serde(default)]
    pub channel: Channel,
    #[serde(default)]
    pub mode: Mode,
    /// When upgrades may start; none: any time.
    #[serde(default)]
    pub windows: Vec<WindowSpec>,
    /// An IANA time zone (`Europe/Berlin`) the windows are in; default `UTC`.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// Keep the clusters at this version: it is the only upgrade offered to them.
    pub pinned_version: Option<String>,
    /// Leave the clusters out of every rollout.
    #[serde(default)]
    pub excluded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    days: [bool; 7],
    start: NaiveTime,
    end: NaiveTime,
}

/// A checked upgrade policy.
#[derive(Debug, Clone)]
pub struct UpgradePolicy {
    pub id: UpgradePolicyId,
    pub org_id: OrgId,
    /// As given, trimmed.
    pub spec: UpgradePolicySpec,
    selector: Selector,
    windows: Vec<Window>,
    tz: chrono_tz::Tz,
    pub pinned: Option<semver::Version>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn hh_mm(s: &str) -> Option<NaiveTime> {
    let (h, m) = s.split_once(':')?;
    (h.len() == 2 && m.len() == 2).then_some(())?;
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

impl UpgradePolicy {
    /// The policy, or each field that is wrong and why.
    pub fn new(
        id: UpgradePolicyId,
        org_id: OrgId,
        mut spec: UpgradePolicySpec,
        created_at: i64,
        updated_at: i64,
    ) -> Result<UpgradePolicy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        spec.name = spec.name.trim().to_owned();
        if spec.name.is_empty() || spec.name.chars().count() > 100 {
            errors.push(("name".into(), "must be 1 to 100 characters".into()));
        }
        let selector = Selector::from_str(&spec.selector).map_err(|e| errors.push(("selector".into(), e.message))).unwrap_or_default();
        if !(0..=1000).contains(&spec.position) {
            errors.push(("position".into(), "must be 0 to 1000".into()));
        }
        if spec.windows.len() > MAX_WINDOWS {
            errors.push(("windows".into(), format!("must hold at most {MAX_WINDOWS} windows")));
        }
        let mut windows = Vec::new();
        for (i, w) in spec.windows.iter().enumerate() {
            let (start, end) = (hh_mm(&w.start), hh_mm(&w.end));
            if start.is_none() {
                errors.push((format!("windows[{i}].start"), "must be a time HH:MM (00:00 to 23:59)".into()));
            }
            if end.is_none() {
                errors.push((format!("windows[{i}].end"), "must be a time HH:MM (00:00 to 23:59)".into()));
            }
            if w.days.is_empty() {
                errors.push((format!("windows[{i}].days"), "must name at least one day".into()));
            }
            let mut days = [false; 7];
            for d in &w.days {
                days[*d as usize] = true;
            }
            if let (Some(start), Some(end)) = (start, end) {
                windows.push(Window { days, start, end });
            }
        }
        let tz = chrono_tz::Tz::from_str(spec.time_zone.trim())
            .map_err(|_| errors.push(("time_zone".into(), format!("{:?} is not an IANA time zone such as Europe/Berlin", spec.time_zone))))
            .unwrap_or(chrono_tz::UTC);
        let pinned = spec.pinned_version.as_deref().map(parse_version).transpose().map_err(|e| errors.push(("pinned_version".into(), e))).ok().flatten();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(UpgradePolicy { id, org_id, spec, selector, windows, tz, pinned, created_at, updated_at })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.selector.matches(labels)
    }

    /// Whether an upgrade may start at `now` (ms).
    pub fn open_at(&self, now: i64) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let local = self.tz.timestamp_millis_opt(now).single().expect("a UTC instant is one local time").naive_local();
        let (today, yesterday) = (Day::of(local.weekday()) as usize, Day::of(local.weekday().pred()) as usize);
        let t = local.time();
        self.windows.iter().any(|w| {
            if w.start < w.end {
                w.days[today] && t >= w.start && t < w.end
            } else {
                // Past midnight: the part after the start on its day, or before the end on the next.
                (w.days[today] && t >= w.start) || (w.days[yesterday] && t < w.end)
            }
        })
    }

    /// When upgrades may next start: `now` when a window is open, else the next window's
    /// start (a start that falls in a daylight-saving gap opens when the clock resumes).
    pub fn next_opening(&self, now: i64) -> Option<i64> {
        if self.open_at(now) {
            return Some(now);
        }
        let local = self.tz.timestamp_millis_opt(now).single()?.naive_local();
        (0..=7)
            .filter_map(|ahead| local.date().checked_add_days(chrono::Days::new(ahead)))
            .flat_map(|date| self.windows.iter().filter(move |w| w.days[Day::of(date.weekday()) as usize]).map(move |w| date.and_time(w.start)))
            .filter_map(|start| {
                let at = self.tz.from_local_datetime(&start);
                at.earliest().or_else(|| self.tz.from_local_datetime(&(start + chrono::Duration::hours(1))).earliest()).map(|t| t.timestamp_millis())
            })
            .filter(|at| *at > now)
            .min()
    }
}

/// A cluster's policy: the first by position (then age) whose selector matches its labels.
pub fn effective<'a>(policies: &'a [UpgradePolicy], labels: &Labels) -> Option<&'a UpgradePolicy> {
    policies.iter().filter(|p| p.matches(labels)).min_by_key(|p| (p.spec.position, p.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(windows: Vec<WindowSpec>, tz: &str) -> UpgradePolicySpec {
        UpgradePolicySpec {
            name: "prod nights".into(),
            selector: "env=prod".into(),
            position: 10,
            channel: Channel::Stable,
            mode: Mode::Automatic,
            windows,
            time_zone: tz.into(),
            pinned_version: None,
            excluded: false,
        }
    }

    fn window(days: &[Day], start: &str, end: &str) -> WindowSpec {
        WindowSpec { days: days.to_vec(), start: start.into(), end: end.into() }
    }

    fn policy(windows: Vec<WindowSpec>, tz: &str) -> UpgradePolicy {
        UpgradePolicy::new(UpgradePolicyId::new(), OrgId::new(), spec(windows, tz), 0, 0).unwrap()
    }

    fn at(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
    }

    #[test]
    fn windows_are_in_local_time_of_the_named_zone() {
        // Berlin is UTC+1 in winter, UTC+2 in summer: 02:00-05:00 local moves in UTC.
        let p = policy(vec![window(&[Day::Sat, Day::Sun], "02:00", "05:00")], "Europe/Berlin");
        assert!(p.open_at(at("2026-12-05T01:30:00Z")), "Saturday 02:30 in Berlin (winter)");
        assert!(!p.open_at(at("2026-12-05T04:30:00Z")), "05:30 local: closed");
        assert!(p.open_at(at("2026-07-04T00:30:00Z")), "Saturday 02:30 in Berlin (summer)");
        assert!(!p.open_at(at("2026-07-04T03:30:00Z")), "05:30 local in summer");
        assert!(!p.open_at(at("2026-12-07T01:30:00Z")), "a Monday");
        // From Thursday noon, the next opening is Saturday 02:00 Berlin = 01:00 UTC.
        assert_eq!(p.next_opening(at("2026-12-03T12:00:00Z")), Some(at("2026-12-05T01:00:00Z")));
        assert_eq!(p.next_opening(at("2026-12-05T02:00:00Z")), Some(at("2026-12-05T02:00:00Z")), "open now");
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        let p = policy(vec![window(&[Day::Fri], "22:00", "02:00")], "UTC");
        assert!(p.open_at(at("2026-12-04T23:00:00Z")), "Friday 23:00");
        assert!(p.open_at(at("2026-12-05T01:59:00Z")), "Saturday 01:59, still Friday's window");
        assert!(!p.open_at(at("2026-12-05T23:00:00Z")), "Saturday 23:00");
        assert!(!p.open_at(at("2026-12-04T01:00:00Z")), "Friday 01:00 is Thursday's night");
        let whole = policy(vec![window(&[Day::Wed], "00:00", "00:00")], "UTC");
        assert!(whole.open_at(at("2026-12-02T00:00:00Z")) && whole.open_at(at("2026-12-02T23:59:00Z")));
        assert!(!whole.open_at(at("2026-12-03T00:00:00Z")));
    }

    #[test]
    fn a_start_in_a_daylight_saving_gap_opens_when_the_clock_resumes() {
        // 2026-03-29: Berlin's clocks jump from 02:00 to 03:00.
        let p = policy(vec![window(&[Day::Sun], "02:30", "04:00")], "Europe/Berlin");
        assert_eq!(p.next_opening(at("2026-03-28T12:00:00Z")), Some(at("2026-03-29T01:30:00Z")), "03:30 CEST");
    }

    #[test]
    fn no_windows_is_any_time_and_the_first_matching_policy_wins() {
        let any = policy(vec![], "UTC");
        assert!(any.open_at(0));
        let mut labels = Labels::default();
        labels.insert("env".into(), "prod".into());
        let late = UpgradePolicy::new(UpgradePolicyId::new(), OrgId::new(), UpgradePolicySpec { position: 50, ..spec(vec![], "UTC") }, 0, 0).unwrap();
        let all =
            UpgradePolicy::new(UpgradePolicyId::new(), OrgId::new(), UpgradePolicySpec { selector: String::new(), position: 200, ..spec(vec![], "UTC") }, 0, 0)
                .unwrap();
        let policies = vec![all.clone(), late.clone()];
        assert_eq!(effective(&policies, &labels).map(|p| p.id), Some(late.id));
        assert_eq!(effective(&policies, &Labels::default()).map(|p| p.id), Some(all.id));
    }

    #[test]
    fn every_wrong_field_is_named() {
        let bad = UpgradePolicySpec {
            name: " ".into(),
            selector: "env in (".into(),
            position: -1,
            windows: vec![window(&[], "2:00", "24:00")],
            time_zone: "Mars/Olympus".into(),
            pinned_version: Some("latest".into()),
            ..spec(vec![], "UTC")
        };
        let errors = UpgradePolicy::new(UpgradePolicyId::new(), OrgId::new(), bad, 0, 0).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["name", "selector", "position", "windows[0].start", "windows[0].end", "windows[0].days", "time_zone", "pinned_version"]);
    }
}
