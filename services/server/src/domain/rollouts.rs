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
use super::releases::{agent_blocks, parse_version, Catalog};
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
    match agent_blocks(&hops, c.agent_version) {
        Some(why) => Err(why),
        None => Ok(hops.iter().map(|h| h.version.to_string()).collect()),
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

/// Health gates of a rollout, judged on each cluster after its upgrade against its own
/// baseline from before it started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// The success rate may fall by at most this many percentage points (default 1).
    #[serde(default = "one_point")]
    pub max_success_rate_drop_points: f64,
    /// The p99 latency may rise by at most this share, in percent (default 25).
    #[serde(default = "quarter_f")]
    pub max_p99_increase_percent: f64,
}

fn one_point() -> f64 {
    1.0
}

fn quarter_f() -> f64 {
    25.0
}

impl Default for Gates {
    fn default() -> Self {
        Gates { max_success_rate_drop_points: one_point(), max_p99_increase_percent: quarter_f() }
    }
}

/// Golden metrics of a cluster over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Measured {
    pub requests: i64,
    /// In [0, 1]; none without requests.
    pub success_rate: Option<f64>,
    /// The worst workload's p99 over the window.
    pub p99_ms: Option<f64>,
}

/// Why a cluster's gate failed, with what was measured; `None`: it passed. `new_findings` are
/// the health checks failing now that were not failing before the cluster started.
pub fn judge(g: &Gates, before: &Measured, after: &Measured, new_findings: &[String]) -> Option<String> {
    if let (Some(b), Some(a)) = (before.success_rate, after.success_rate) {
        let drop = (b - a) * 100.0;
        if drop > g.max_success_rate_drop_points {
            return Some(format!(
                "success rate fell {drop:.2} points ({:.2}% -> {:.2}%), more than the {} allowed",
                b * 100.0,
                a * 100.0,
                g.max_success_rate_drop_points
            ));
        }
    }
    if let (Some(b), Some(a)) = (before.p99_ms, after.p99_ms) {
        let rise = if b > 0.0 { (a - b) / b * 100.0 } else { 0.0 };
        if rise > g.max_p99_increase_percent {
            return Some(format!("p99 rose {rise:.0}% ({b:.1} ms -> {a:.1} ms), more than the {}% allowed", g.max_p99_increase_percent));
        }
    }
    new_findings.first().map(|f| format!("health check failing since the upgrade: {f}"))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub waves: WaveSpec,
    #[serde(default)]
    pub gates: Gates,
    /// How long after its workloads are restarted a cluster is watched before its gates are
    /// judged, 1 to 86,400 (default 300).
    #[serde(default = "five_minutes")]
    #[schema(minimum = 1, maximum = 86400)]
    pub verify_seconds: u32,
    /// The pause after each wave before the next starts (none after the last), 0 to 604,800
    /// (default 600).
    #[serde(default = "ten_minutes")]
    #[schema(minimum = 0, maximum = 604800)]
    pub soak_seconds: u32,
    /// The most clusters upgrading at once, 1 to 1,000 (default 10).
    #[serde(default = "ten")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_concurrent: u32,
    /// Workloads restarted at once in each namespace of a cluster, 1 to 100 (default 1).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 100)]
    pub restart_batch: u32,
}

fn five_minutes() -> u32 {
    300
}

fn ten_minutes() -> u32 {
    600
}

fn ten() -> u32 {
    10
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            waves: WaveSpec::default(),
            gates: Gates::default(),
            verify_seconds: five_minutes(),
            soak_seconds: ten_minutes(),
            max_concurrent: ten(),
            restart_batch: one(),
        }
    }
}

impl Settings {
    /// Each field that is out of bounds, and why (the waves are checked by `Waves::new`).
    pub fn check(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let g = &self.gates;
        if !(0.0..=100.0).contains(&g.max_success_rate_drop_points) {
            errors.push(("gates.max_success_rate_drop_points".into(), "must be 0 to 100".into()));
        }
        if !(0.0..=10_000.0).contains(&g.max_p99_increase_percent) {
            errors.push(("gates.max_p99_increase_percent".into(), "must be 0 to 10000".into()));
        }
        for (field, value, range) in [
            ("verify_seconds", self.verify_seconds, 1..=86_400),
            ("soak_seconds", self.soak_seconds, 0..=604_800),
            ("max_concurrent", self.max_concurrent, 1..=1000),
            ("restart_batch", self.restart_batch, 1..=100),
        ] {
            if !range.contains(&value) {
                errors.push((field.into(), format!("must be {} to {}", range.start(), range.end())));
            }
        }
        errors
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    /// By an admin, or by a failed gate (then `reason` says which, with the measured values).
    Paused,
    Completed,
    Aborted,
}

/// Where one cluster of a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Its wave has not reached it yet.
    Pending,
    /// The controller moves to the hop's version (set-control-plane-version).
    ControlPlane,
    /// Its workloads restart in batches and come back with the new proxy (restart-workloads).
    DataPlane,
    /// Watched for `verify_seconds` before its gates are judged.
    Verifying,
    Done,
    /// A gate failed: the controller goes back to the version it ran.
    RollingBack,
    /// ... and its workloads restart again to get the old proxy back.
    RestoringWorkloads,
    RolledBack,
    /// Skipped by an admin.
    Skipped,
}

impl Phase {
    /// Nothing more happens to the cluster in this rollout (unless an admin retries it).
    pub fn settled(self) -> bool {
        matches!(self, Phase::Done | Phase::RolledBack | Phase::Skipped)
    }

    pub fn in_progress(self) -> bool {
        self != Phase::Pending && !self.settled()
    }

    /// The event type (`Normal` or `Warning`, as Kubernetes has them) and reason of a cluster's
    /// step from `from` to `to`.
    pub fn step_reason(from: Phase, to: Phase) -> (&'static str, &'static str) {
        match (from, to) {
            (Phase::Verifying, Phase::RollingBack) => ("Warning", "RolloutGateFailed"),
            (Phase::Verifying, Phase::ControlPlane | Phase::Done) => ("Normal", "RolloutGatesPassed"),
            (_, Phase::RollingBack) => ("Warning", "RolloutStepFailed"),
            (_, Phase::RestoringWorkloads) => ("Warning", "RolloutRollingBack"),
            (_, Phase::RolledBack) => ("Warning", "RolloutRolledBack"),
            (_, Phase::Skipped) => ("Warning", "RolloutSkipped"),
            (_, Phase::ControlPlane) => ("Normal", "RolloutControlPlane"),
            (_, Phase::DataPlane) => ("Normal", "RolloutDataPlane"),
            (_, Phase::Verifying) => ("Normal", "RolloutVerifying"),
            (_, Phase::Done) => ("Normal", "RolloutDone"),
            (_, Phase::Pending) => ("Normal", "RolloutPending"),
        }
    }
}

/// Requests and failures counted so far in a minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Counted {
    pub requests: i64,
    pub failures: i64,
}

/// One cluster's run through a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterRun {
    pub id: ClusterId,
    pub name: String,
    /// Its wave, from 0.
    pub wave: u32,
    /// The version it ran when planned.
    pub from: String,
    pub hops: Vec<String>,
    /// The hop it is on (index into `hops`).
    pub hop: u32,
    pub phase: Phase,
    /// The command this phase waits for.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub command_id: Option<super::CommandId>,
    /// When the phase began.
    pub since: chrono::DateTime<chrono::Utc>,
    /// Golden metrics before it started, and the health checks failing then.
    pub baseline: Option<Measured>,
    pub baseline_findings: Vec<String>,
    /// Requests and failures already counted in the minute verifying began, left out of
    /// `measured` (rollups are per minute; this keeps the minute's earlier traffic out).
    pub counted_before: Counted,
    /// Golden metrics while verifying, as its gates judged them.
    pub measured: Option<Measured>,
    pub message: String,
    /// Pods its data-plane restart could not restart safely (bare pods, pods of Jobs,
    /// StatefulSets updated `OnDelete`), as the agent listed them; left for someone to act on,
    /// they do not fail the step.
    #[serde(default)]
    pub needs_attention: Vec<NeedsAttention>,
}

/// A pod the agent left alone in a data-plane restart, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NeedsAttention {
    pub namespace: String,
    pub pod: String,
    /// What holds the pod: `Pod` (no controller), `Job` or `StatefulSet`.
    pub kind: String,
    pub reason: String,
}

impl NeedsAttention {
    /// The pods listed in a restart-workloads command's output (none when it lists none, or an
    /// older agent did not list them).
    pub fn from_restart_output(output: Option<&serde_json::Value>) -> Vec<NeedsAttention> {
        output.and_then(|o| o.get("needs_attention")).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
    }
}

/// A rollout as it is kept and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    pub id: super::RolloutId,
    pub org_id: super::OrgId,
    pub target_version: String,
    pub selector: String,
    pub settings: Settings,
    pub state: RolloutState,
    /// Why it is paused or aborted.
    pub reason: Option<String>,
    /// The wave running (from 0), and when it finished, while it soaks.
    pub wave: u32,
    pub waves: u32,
    pub wave_done_at: Option<chrono::DateTime<chrono::Utc>>,
    pub clusters: Vec<ClusterRun>,
    /// Selected clusters left out when it was planned, and why.
    pub skipped: Vec<Skipped>,
    pub created_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl Rollout {
    /// A rollout of `plan`, running from `now`.
    pub fn start(
        id: super::RolloutId,
        org_id: super::OrgId,
        plan: Plan,
        selector: String,
        settings: Settings,
        created_by: String,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Rollout {
        let waves = plan.waves.len() as u32;
        let clusters = plan
            .waves
            .into_iter()
            .enumerate()
            .flat_map(|(w, wave)| {
                wave.clusters.into_iter().map(move |c| ClusterRun {
                    id: c.id,
                    name: c.name,
                    wave: w as u32,
                    from: c.from,
                    hops: c.hops,
                    hop: 0,
                    phase: Phase::Pending,
                    command_id: None,
                    since: now,
                    baseline: None,
                    baseline_findings: Vec::new(),
                    counted_before: Counted::default(),
                    measured: None,
                    message: String::new(),
                    needs_attention: Vec::new(),
                })
            })
            .collect();
        let state = if waves == 0 { RolloutState::Completed } else { RolloutState::Running };
        Rollout {
            id,
            org_id,
            target_version: plan.target_version,
            selector,
            settings,
            state,
            reason: None,
            wave: 0,
            waves,
            wave_done_at: None,
            clusters,
            skipped: plan.skipped,
            created_by,
            created_at: now,
            updated_at: now,
        }
    }
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

    #[test]
    fn gates_compare_each_cluster_with_its_own_baseline() {
        let g = Gates::default();
        let before = Measured { requests: 1000, success_rate: Some(0.995), p99_ms: Some(40.0) };
        assert_eq!(judge(&g, &before, &Measured { success_rate: Some(0.99), p99_ms: Some(48.0), ..before }, &[]), None);
        let worse = judge(&g, &before, &Measured { success_rate: Some(0.7), ..before }, &[]).unwrap();
        assert_eq!(worse, "success rate fell 29.50 points (99.50% -> 70.00%), more than the 1 allowed");
        let slower = judge(&g, &before, &Measured { p99_ms: Some(80.0), ..before }, &[]).unwrap();
        assert!(slower.starts_with("p99 rose 100% (40.0 ms -> 80.0 ms)"), "{slower}");
        let finding = judge(&g, &before, &before, &["control_plane: control plane 0/1 ready".into()]).unwrap();
        assert!(finding.contains("control plane 0/1 ready"));
        // No traffic before or after: nothing to compare, the metric gates pass.
        assert_eq!(judge(&g, &Measured::default(), &Measured::default(), &[]), None);
    }
}
