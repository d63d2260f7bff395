//! The release catalog: the mesh versions the service knows, and the upgrade-path rules over
//! them. Versions are semantic versions, compared as such (never as strings): within a major
//! version any newer release is one hop; a hop into the next major lands on that major's latest
//! release; no hop skips a major, so a long jump is a plan of several hops. Each hop upgrades
//! the control plane and then the data plane, which keeps the data plane within one major of
//! the control plane throughout.

use std::fmt;
use std::str::FromStr;

use semver::Version;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which releases a cluster follows: `stable` sees stable releases only, `edge` sees both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    #[default]
    Stable,
    Edge,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Stable => "stable",
            Channel::Edge => "edge",
        }
    }

    /// Whether a cluster on this channel may run a release published on `release`.
    pub fn admits(self, release: Channel) -> bool {
        self == Channel::Edge || release == Channel::Stable
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stable" => Ok(Channel::Stable),
            "edge" => Ok(Channel::Edge),
            other => Err(format!("{other:?} is not a channel (stable or edge)")),
        }
    }
}

/// A mesh version as the service knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: Version,
    pub channel: Channel,
    /// `YYYY-MM-DD`.
    pub released_on: chrono::NaiveDate,
    pub controller_image: String,
    pub proxy_image: String,
    /// The oldest agent that can carry out an upgrade to this release.
    pub min_agent_version: Version,
    pub notes: String,
    /// What an operator should know before upgrading (shown with every plan through it).
    pub cautions: Vec<String>,
    /// Withdrawn: never a target or a hop, and clusters running it are told.
    pub yanked: bool,
}

/// A release as operators write it, in the catalog file and the operator API.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    /// A semantic version (`2.1.0`, `2.2.0-edge.1`).
    #[schema(example = "0.2.0")]
    pub version: String,
    /// Default `stable`.
    #[serde(default)]
    pub channel: Channel,
    /// The day it was published.
    #[schema(value_type = String, format = Date)]
    pub released_on: chrono::NaiveDate,
    /// Default `meshfleet/controller:<version>`.
    pub controller_image: Option<String>,
    /// Default `meshfleet/proxy:<version>`.
    pub proxy_image: Option<String>,
    /// The oldest agent that can carry out an upgrade to it (default: any, `0.0.0`).
    pub min_agent_version: Option<String>,
    /// At most 10,000 characters.
    #[serde(default)]
    pub notes: String,
    /// At most 20, each 1 to 1,000 characters.
    #[serde(default)]
    pub cautions: Vec<String>,
    #[serde(default)]
    pub yanked: bool,
}

impl From<&Release> for ReleaseSpec {
    fn from(r: &Release) -> ReleaseSpec {
        ReleaseSpec {
            version: r.version.to_string(),
            channel: r.channel,
            released_on: r.released_on,
            controller_image: Some(r.controller_image.clone()),
            proxy_image: Some(r.proxy_image.clone()),
            min_agent_version: Some(r.min_agent_version.to_string()),
            notes: r.notes.clone(),
            cautions: r.cautions.clone(),
            yanked: r.yanked,
        }
    }
}

/// An image reference as Kubernetes takes it: no spaces or control characters, 1-255 bytes.
fn valid_image(image: &str) -> bool {
    (1..=255).contains(&image.len()) && image.bytes().all(|b| b.is_ascii_graphic())
}

impl ReleaseSpec {
    /// The release it describes, or each field that is wrong and why.
    pub fn parse(&self) -> Result<Release, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| errors.push((field.to_owned(), message));
        let version = parse_version(&self.version).map_err(|e| err("version", e)).ok();
        let min_agent_version = parse_version(self.min_agent_version.as_deref().unwrap_or("0.0.0")).map_err(|e| err("min_agent_version", e)).ok();
        let tag = version.as_ref().map(|v| v.to_string()).unwrap_or_default();
        let image = |given: &Option<String>, repo: &str| given.clone().unwrap_or_else(|| format!("meshfleet/{repo}:{tag}"));
        let (controller_image, proxy_image) = (image(&self.controller_image, "controller"), image(&self.proxy_image, "proxy"));
        for (field, value) in [("controller_image", &controller_image), ("proxy_image", &proxy_image)] {
            if !valid_image(value) {
                err(field, "must be an image reference of 1 to 255 printable characters without spaces".into());
            }
        }
        if self.notes.chars().count() > 10_000 {
            err("notes", "must be at most 10,000 characters".into());
        }
        if self.cautions.len() > 20 {
            err("cautions", "must hold at most 20 cautions".into());
        }
        for (i, c) in self.cautions.iter().enumerate() {
            if c.trim().is_empty() || c.chars().count() > 1_000 {
                err(&format!("cautions[{i}]"), "must be 1 to 1,000 characters".into());
            }
        }
        match (version, min_agent_version) {
            (Some(version), Some(min_agent_version)) if errors.is_empty() => Ok(Release {
                version,
                channel: self.channel,
                released_on: self.released_on,
                controller_image,
                proxy_image,
                min_agent_version,
                notes: self.notes.clone(),
                cautions: self.cautions.iter().map(|c| c.trim().to_owned()).collect(),
                yanked: self.yanked,
            }),
            _ => Err(errors),
        }
    }
}

/// Parses a mesh or agent version as reported (`1.4.2`, `v1.4.2`).
pub fn parse_version(s: &str) -> Result<Version, String> {
    Version::parse(s.trim().strip_prefix('v').unwrap_or(s.trim())).map_err(|e| format!("{s:?} is not a semantic version: {e}"))
}

/// An agent's version as it reports it: `0.1.0`, or with its program's name (`meshfleet-sim/0.1.0`).
pub fn parse_agent_version(s: &str) -> Result<Version, String> {
    parse_version(s.rsplit('/').next().unwrap_or(s))
}

/// Why an agent reporting `agent` cannot carry out the `hops` (each needs its release's
/// minimum agent version); `None` when it can.
pub fn agent_blocks(hops: &[&Release], agent: Option<&str>) -> Option<String> {
    let needs = hops.iter().map(|h| &h.min_agent_version).max()?;
    match agent.map(parse_agent_version) {
        Some(Ok(a)) if a >= *needs => None,
        Some(Ok(a)) => Some(format!("its agent runs {a}; the upgrade needs agent {needs} or newer")),
        _ => Some("its agent's version is not known".into()),
    }
}

/// How the catalog sees a version a cluster reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// In the catalog and not yanked.
    Supported,
    /// In the catalog but withdrawn.
    Yanked,
    /// A semantic version the catalog does not hold.
    Unknown,
    /// Not a semantic version at all.
    Unparseable,
}

/// Why no plan leads from one version to another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{0} is not in the release catalog")]
    UnknownTarget(Version),
    #[error("{0} is yanked")]
    Yanked(Version),
    #[error("{target} is on the edge channel; the cluster follows stable")]
    WrongChannel { target: Version },
    #[error("{target} is not newer than {from}")]
    NotNewer { from: Version, target: Version },
    #[error("the catalog has no release of major version {0} to pass through")]
    MissingMajor(u64),
    #[error("a move to major version {major} must land on its latest release, {latest}, not {target}")]
    NotLatestOfMajor { major: u64, latest: Version, target: Version },
}

/// The releases the service knows, in version order.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    releases: Vec<Release>,
}

impl Catalog {
    pub fn new(mut releases: Vec<Release>) -> Catalog {
        releases.sort_by(|a, b| a.version.cmp(&b.version));
        releases.dedup_by(|a, b| a.version == b.version);
        Catalog { releases }
    }

    pub fn releases(&self) -> &[Release] {
        &self.releases
    }

    pub fn get(&self, version: &Version) -> Option<&Release> {
        self.releases.binary_search_by(|r| r.version.cmp(version)).ok().map(|i| &self.releases[i])
    }

    /// How the catalog sees a reported version (empty: not reported, `None`).
    pub fn support(&self, reported: &str) -> Option<Support> {
        if reported.trim().is_empty() {
            return None;
        }
        Some(match parse_version(reported) {
            Err(_) => Support::Unparseable,
            Ok(v) => match self.get(&v) {
                None => Support::Unknown,
                Some(r) if r.yanked => Support::Yanked,
                Some(_) => Support::Supported,
            },
        })
    }

    /// Releases a cluster on `channel` may run.
    fn eligible(&self, channel: Channel) -> impl DoubleEndedIterator<Item = &Release> {
        self.releases.iter().filter(move |r| !r.yanked && channel.admits(r.channel))
    }

    /// The newest release of `major` a cluster on `channel` may run.
    pub fn latest_of_major(&self, major: u64, channel: Channel) -> Option<&Release> {
        self.eligible(channel).rev().find(|r| r.version.major == major)
    }

    /// The hops from `from` to `target`, each a release to upgrade to in turn.
    pub fn path(&self, from: &Version, target: &Version, channel: Channel) -> Result<Vec<&Release>, PathError> {
        let goal = self.get(target).ok_or_else(|| PathError::UnknownTarget(target.clone()))?;
        if goal.yanked {
            return Err(PathError::Yanked(target.clone()));
        }
        if !channel.admits(goal.channel) {
            return Err(PathError::WrongChannel { target: target.clone() });
        }
        if target <= from {
            return Err(PathError::NotNewer { from: from.clone(), target: target.clone() });
        }
        let mut hops = Vec::new();
        let mut at = from.major;
        while at < target.major {
            let next = at + 1;
            let latest = self.latest_of_major(next, channel).ok_or(PathError::MissingMajor(next))?;
            if next == target.major && latest.version != *target {
                return Err(PathError::NotLatestOfMajor { major: next, latest: latest.version.clone(), target: target.clone() });
            }
            hops.push(latest);
            at = next;
        }
        if hops.last().is_none_or(|h| h.version != *target) {
            hops.push(goal);
        }
        Ok(hops)
    }

    /// Every release a cluster at `from` on `channel` can reach, newest first, with its plan.
    pub fn upgrades(&self, from: &Version, channel: Channel) -> Vec<(&Release, Vec<&Release>)> {
        self.eligible(channel).rev().filter(|r| r.version > *from).filter_map(|r| self.path(from, &r.version, channel).ok().map(|p| (r, p))).collect()
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Support::Supported => "supported",
            Support::Yanked => "yanked",
            Support::Unknown => "unknown",
            Support::Unparseable => "unparseable",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(v: &str, channel: Channel) -> Release {
        Release {
            version: parse_version(v).unwrap(),
            channel,
            released_on: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            controller_image: format!("meshfleet/controller:{v}"),
            proxy_image: format!("meshfleet/proxy:{v}"),
            min_agent_version: parse_version("0.1.0").unwrap(),
            notes: String::new(),
            cautions: Vec::new(),
            yanked: false,
        }
    }

    fn catalog() -> Catalog {
        let stable = ["1.0.0", "1.1.0", "1.2.0", "2.0.0", "2.3.0", "3.0.0", "3.1.0", "10.0.0"];
        let mut all: Vec<Release> = stable.iter().map(|v| release(v, Channel::Stable)).collect();
        all.push(release("3.2.0-edge.1", Channel::Edge));
        all.push(Release { yanked: true, ..release("2.4.0", Channel::Stable) });
        Catalog::new(all)
    }

    fn v(s: &str) -> Version {
        parse_version(s).unwrap()
    }

    fn hops(c: &Catalog, from: &str, to: &str, channel: Channel) -> Result<Vec<String>, PathError> {
        c.path(&v(from), &v(to), channel).map(|p| p.iter().map(|r| r.version.to_string()).collect())
    }

    #[test]
    fn within_a_major_any_newer_release_is_one_hop() {
        assert_eq!(hops(&catalog(), "1.0.0", "1.2.0", Channel::Stable).unwrap(), ["1.2.0"]);
    }

    #[test]
    fn versions_compare_as_numbers_not_strings() {
        // "10.0.0" < "3.1.0" as strings.
        let c = catalog();
        let (newest, _) = c.upgrades(&v("3.0.0"), Channel::Stable).into_iter().next().unwrap();
        assert_eq!(newest.version, v("3.1.0"), "10.0.0 is not reachable from 3 (majors 4-9 are missing)");
        assert_eq!(hops(&c, "3.0.0", "10.0.0", Channel::Stable), Err(PathError::MissingMajor(4)));
    }

    #[test]
    fn a_long_jump_passes_each_major_at_its_latest_release() {
        // 2.4.0 is yanked, so 2.3.0 is major 2's latest.
        assert_eq!(hops(&catalog(), "1.1.0", "3.1.0", Channel::Stable).unwrap(), ["2.3.0", "3.1.0"]);
        assert_eq!(hops(&catalog(), "1.1.0", "2.3.0", Channel::Stable).unwrap(), ["2.3.0"]);
    }

    #[test]
    fn a_move_into_a_major_lands_on_its_latest_release() {
        let err = hops(&catalog(), "1.2.0", "2.0.0", Channel::Stable).unwrap_err();
        assert_eq!(err, PathError::NotLatestOfMajor { major: 2, latest: v("2.3.0"), target: v("2.0.0") });
        assert_eq!(
            hops(&catalog(), "2.0.0", "3.0.0", Channel::Stable).unwrap_err().to_string(),
            "a move to major version 3 must land on its latest release, 3.1.0, not 3.0.0"
        );
    }

    #[test]
    fn refuses_yanked_unknown_older_and_off_channel_targets() {
        let c = catalog();
        assert_eq!(hops(&c, "2.0.0", "2.4.0", Channel::Stable), Err(PathError::Yanked(v("2.4.0"))));
        assert_eq!(hops(&c, "2.0.0", "2.5.0", Channel::Stable), Err(PathError::UnknownTarget(v("2.5.0"))));
        assert_eq!(hops(&c, "2.3.0", "2.0.0", Channel::Stable), Err(PathError::NotNewer { from: v("2.3.0"), target: v("2.0.0") }));
        assert_eq!(hops(&c, "2.3.0", "2.3.0", Channel::Stable), Err(PathError::NotNewer { from: v("2.3.0"), target: v("2.3.0") }));
        assert_eq!(hops(&c, "3.0.0", "3.2.0-edge.1", Channel::Stable), Err(PathError::WrongChannel { target: v("3.2.0-edge.1") }));
        assert_eq!(hops(&c, "3.0.0", "3.2.0-edge.1", Channel::Edge).unwrap(), ["3.2.0-edge.1"]);
    }

    #[test]
    fn the_edge_channel_moves_majors_through_edge_releases_too() {
        let c = Catalog::new(vec![release("1.0.0", Channel::Stable), release("2.0.0", Channel::Stable), release("2.1.0-edge.1", Channel::Edge)]);
        assert_eq!(hops(&c, "1.0.0", "2.1.0-edge.1", Channel::Edge).unwrap(), ["2.1.0-edge.1"]);
        assert_eq!(hops(&c, "1.0.0", "2.0.0", Channel::Stable).unwrap(), ["2.0.0"]);
    }

    #[test]
    fn upgrades_lists_every_reachable_release_newest_first() {
        let c = catalog();
        let listed: Vec<(String, usize)> = c.upgrades(&v("1.1.0"), Channel::Stable).iter().map(|(r, p)| (r.version.to_string(), p.len())).collect();
        assert_eq!(listed, [("3.1.0".to_owned(), 2), ("2.3.0".to_owned(), 1), ("1.2.0".to_owned(), 1)]);
    }

    #[test]
    fn support_of_reported_versions() {
        let c = catalog();
        assert_eq!(c.support("v1.1.0"), Some(Support::Supported));
        assert_eq!(c.support("2.4.0"), Some(Support::Yanked));
        assert_eq!(c.support("1.5.0"), Some(Support::Unknown));
        assert_eq!(c.support("stable-2.14"), Some(Support::Unparseable));
        assert_eq!(parse_agent_version("meshfleet-sim/0.1.0"), Ok(v("0.1.0")));
        assert_eq!(c.support(""), None);
    }
}
