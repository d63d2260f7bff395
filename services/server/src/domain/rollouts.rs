//! Rollout planning: which clusters a rollout to a target version takes, by which hops, and in
//! which waves. Canary clusters go first (those matching the canary selector, or the first
//! `canary_count` by name), then the rest in batches of `batch_percent` of them. A cluster is
//! left out, with the reason, when its policy excludes it or pins another version, when it is
//! at the target or past it, when its version is unknown, when no path leads there on its
//! channel, or when its agent is too old for a hop. Planning is a pure function of the
//! catalog, the policies and what the clusters reported, so a preview is what a start does.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::labels::{Labels, Selector};
use super::releases::{parse_agent_version, parse_version, Catalog};
use super::upgrade_policies::{self, UpgradePolicy};
use super::ClusterId;

pub const MAX_BATCH_PERCENT: u32 = 100;

/// How a rollout spreads over the fleet, as people write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaveSpec {
    /// Clusters that go first, by label; when absent, the first `canary_count` by name.
    pub canary_selector: Option<String>,
    /// Default 1; 0 for no canary wave.
    #[serde(default = "one")]
    #[schema(minimum = 0, maximum = 1000)]
    pub canary_count: u32,
    /// Each later wave takes this share of the clusters after the canaries (default 25).
    #[serde(default = "quarter")]
    #[schema(minimum = 1, maximum = 100)]
    pub batch_percent: u32,
}

fn one() -> u32 {
    1
}

fn quarter() -> u32 {
    25
}

impl Default for WaveSpec {
    fn default() -> Self {
        WaveSpec { canary_selector: None, canary_count: one(), batch_percent: quarter() }
    }
}

/// What the planner knows of a cluster.
pub struct Candidate<'a> {
    pub id: ClusterId,
    pub name: &'a str,
    pub labels: &'a Labels,
    /// The control plane's version as reported ("" when not).
    pub control_plane: &'a str,
    pub agent_version: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlannedCluster {
    pub id: ClusterId,
    pub name: String,
    pub from: String,
    /// The versions it passes through, the target last.
    pub hops: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WaveKind {
    Canary,
    Batch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Wave {
    pub kind: WaveKind,
    pub clusters: Vec<PlannedCluster>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Skipped {
    pub id: ClusterId,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub target_version: String,
    pub waves: Vec<Wave>,
    /// Selected clusters the rollout leaves alone, and why.
    pub skipped: Vec<Skipped>,
}

/// The checked wave settings: the canary selector parsed.
pub struct Waves {
    canary: Option<Selector>,
    spec: WaveSpec,
}

impl Waves {
    pub fn new(spec: WaveSpec) -> Result<Waves, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let canary = spec
            .canary_selector
            .as_deref()
            .map(str::parse::<Selector>)
            .transpose()
            .map_err(|e| errors.push(("waves.canary_selector".into(), e.message)))
            .ok()
            .flatten();
        if spec.canary_count > 1000 {
            errors.push(("waves.canary_count".into(), "must be 0 to 1000".into()));
        }
        if !(1..=MAX_BATCH_PERCENT).contains(&spec.batch_percent) {
            errors.push(("waves.batch_percent".into(), "must be 1 to 100".into()));
        }
        if errors.is_empty() {
            Ok(Waves { canary, spec })
        } else {
            Err(errors)
        }
    }
}

/// Why a candidate stays out, or its hops.
fn route(catalog: &Catalog, target: &semver::Version, c: &Candidate, policy: Option<&UpgradePolicy>) -> Result<Vec<String>, String> {
    if policy.is_some_and(|p| p.spec.excluded) {
        return Err("its upgrade policy excludes it".into());
    }
    if let Some(pin) = policy.and_then(|p| p.pinned.as_ref()).filter(|pin| *pin != target) {
        return Err(format!("its upgrade policy pins it to {pin}"));
    }
    if c.control_plane.is_empty() {
        return Err("its control plane has not reported a version".into());
    }
    let from = parse_version(c.control_plane).map_err(|_| format!("its control plane version {:?} is not a semantic version", c.control_plane))?;
    if from >= *target {
        return Err(format!("it runs {from} already"));
    }
    let channel = policy.map(|p| p.spec.channel).unwrap_or_default();
    let hops = catalog.path(&from, target, channel).map_err(|e| e.to_string())?;
    let needs = hops.iter().map(|h| &h.min_agent_version).max().expect("a path has a hop");
    match c.agent_version.map(parse_agent_version) {
        Some(Ok(agent)) if agent >= *needs => Ok(hops.iter().map(|h| h.version.to_string()).collect()),
        Some(Ok(agent)) => Err(format!("its agent runs {agent}; the upgrade needs agent {needs} or newer")),
        _ => Err("its agent's version is not known".into()),
    }
}

/// Plans a rollout of `target` over `candidates` (already chosen by the rollout's selector).
pub fn plan(catalog: &Catalog, target: &semver::Version, candidates: &[Candidate], policies: &[UpgradePolicy], waves: &Waves) -> Plan {
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    for c in candidates {
        match route(catalog, target, c, upgrade_policies::effective(policies, c.labels)) {
            Ok(hops) => chosen.push((c, PlannedCluster { id: c.id, name: c.name.to_owned(), from: c.control_plane.to_owned(), hops })),
            Err(reason) => skipped.push(Skipped { id: c.id, name: c.name.to_owned(), reason }),
        }
    }
    chosen.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    skipped.sort_by(|a, b| a.name.cmp(&b.name));
    let (canaries, rest): (Vec<_>, Vec<_>) = match &waves.canary {
        Some(selector) => chosen.into_iter().partition(|(c, _)| selector.matches(c.labels)),
        None => {
            let n = (waves.spec.canary_count as usize).min(chosen.len());
            let rest = chosen.split_off(n);
            (chosen, rest)
        }
    };
    let mut out = Vec::new();
    if !canaries.is_empty() {
        out.push(Wave { kind: WaveKind::Canary, clusters: canaries.into_iter().map(|(_, p)| p).collect() });
    }
    let per_wave = (rest.len() * waves.spec.batch_percent as usize).div_ceil(100).max(1);
    let mut rest: Vec<PlannedCluster> = rest.into_iter().map(|(_, p)| p).collect();
    while !rest.is_empty() {
        let tail = rest.split_off(per_wave.min(rest.len()));
        out.push(Wave { kind: WaveKind::Batch, clusters: std::mem::replace(&mut rest, tail) });
    }
    Plan { target_version: target.to_string(), waves: out, skipped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::releases::{Channel, ReleaseSpec};
    use crate::domain::upgrade_policies::UpgradePolicySpec;
    use crate::domain::OrgId;

    fn catalog() -> Catalog {
        let spec = |v: &str, agent: &str| ReleaseSpec {
            version: v.into(),
            channel: Channel::Stable,
            released_on: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            controller_image: None,
            proxy_image: None,
            min_agent_version: Some(agent.into()),
            notes: String::new(),
            cautions: vec![],
            yanked: false,
        };
        Catalog::new(["1.0.0", "1.1.0", "2.0.0"].iter().map(|v| spec(v, "0.1.0").parse().unwrap()).chain([spec("2.1.0", "2.0.0").parse().unwrap()]).collect())
    }

    struct Fleet {
        names: Vec<String>,
        labels: Vec<Labels>,
        versions: Vec<&'static str>,
        ids: Vec<ClusterId>,
    }

    impl Fleet {
        fn new(n: usize, version: &'static str) -> Fleet {
            Fleet {
                names: (0..n).map(|i| format!("c{i:02}")).collect(),
                labels: (0..n).map(|i| Labels::from([("ring".to_owned(), if i % 5 == 0 { "canary" } else { "main" }.to_owned())])).collect(),
                versions: vec![version; n],
                ids: (0..n).map(|_| ClusterId::new()).collect(),
            }
        }

        fn candidates(&self) -> Vec<Candidate<'_>> {
            (0..self.names.len())
                .map(|i| Candidate {
                    id: self.ids[i],
                    name: &self.names[i],
                    labels: &self.labels[i],
                    control_plane: self.versions[i],
                    agent_version: Some("0.1.0"),
                })
                .collect()
        }
    }

    fn sizes(p: &Plan) -> Vec<(WaveKind, usize)> {
        p.waves.iter().map(|w| (w.kind, w.clusters.len())).collect()
    }

    #[test]
    fn canaries_first_then_batches_of_the_rest() {
        let fleet = Fleet::new(10, "1.0.0");
        let target = parse_version("1.1.0").unwrap();
        let p = plan(&catalog(), &target, &fleet.candidates(), &[], &Waves::new(WaveSpec::default()).unwrap());
        assert_eq!(sizes(&p), [(WaveKind::Canary, 1), (WaveKind::Batch, 3), (WaveKind::Batch, 3), (WaveKind::Batch, 3)]);
        assert_eq!(p.waves[0].clusters[0].name, "c00");
        let by_label = Waves::new(WaveSpec { canary_selector: Some("ring=canary".into()), batch_percent: 50, ..WaveSpec::default() }).unwrap();
        let p = plan(&catalog(), &target, &fleet.candidates(), &[], &by_label);
        assert_eq!(sizes(&p), [(WaveKind::Canary, 2), (WaveKind::Batch, 4), (WaveKind::Batch, 4)]);
        assert_eq!(p.waves[0].clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["c00", "c05"]);
        assert_eq!(p.waves[1].clusters[0].hops, ["1.1.0"]);
    }

    #[test]
    fn clusters_that_cannot_or_must_not_go_are_skipped_with_the_reason() {
        let mut fleet = Fleet::new(6, "1.0.0");
        fleet.versions[1] = "2.0.0";
        fleet.versions[2] = "";
        fleet.versions[3] = "banana";
        fleet.labels[4].insert("frozen".into(), "yes".into());
        let frozen = UpgradePolicySpec {
            name: "frozen".into(),
            selector: "frozen=yes".into(),
            position: 1,
            channel: Channel::Stable,
            mode: Default::default(),
            windows: vec![],
            time_zone: "UTC".into(),
            pinned_version: None,
            excluded: true,
        };
        let policies = [UpgradePolicy::new(Default::default(), OrgId::new(), frozen, 0, 0).unwrap()];
        let target = parse_version("1.1.0").unwrap();
        let p = plan(&catalog(), &target, &fleet.candidates(), &policies, &Waves::new(WaveSpec { canary_count: 0, ..WaveSpec::default() }).unwrap());
        let reasons: Vec<(&str, &str)> = p.skipped.iter().map(|s| (s.name.as_str(), s.reason.as_str())).collect();
        assert_eq!(
            reasons,
            [
                ("c01", "it runs 2.0.0 already"),
                ("c02", "its control plane has not reported a version"),
                ("c03", "its control plane version \"banana\" is not a semantic version"),
                ("c04", "its upgrade policy excludes it"),
            ]
        );
        assert_eq!(sizes(&p), [(WaveKind::Batch, 1), (WaveKind::Batch, 1)], "c00 and c05, a quarter of two at a time");
        // Major 2 is entered at its latest release only, and that one needs a newer agent.
        let skipped =
            |target: &str| plan(&catalog(), &parse_version(target).unwrap(), &fleet.candidates(), &policies, &Waves::new(WaveSpec::default()).unwrap()).skipped;
        let why = |target: &str| skipped(target).into_iter().find(|s| s.name == "c00").map(|s| s.reason);
        assert_eq!(why("2.0.0").as_deref(), Some("a move to major version 2 must land on its latest release, 2.1.0, not 2.0.0"));
        assert_eq!(why("2.1.0").as_deref(), Some("its agent runs 0.1.0; the upgrade needs agent 2.0.0 or newer"));
    }

    #[test]
    fn wave_settings_are_checked() {
        let errors = Waves::new(WaveSpec { canary_selector: Some("a in (".into()), canary_count: 5000, batch_percent: 0 }).err().unwrap();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["waves.canary_selector", "waves.canary_count", "waves.batch_percent"]);
    }
}
