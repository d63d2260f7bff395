//! Fleet health: the findings about a cluster (its agent, certificates, golden metrics,
//! control plane and proxy versions), how urgent each is, and the cluster's health, which its
//! worst finding decides. Pure rules and their wording, no I/O: adapters gather the signals,
//! remember what the rules need between assessments (the success-rate hysteresis, when a
//! finding was first seen) and show the findings (dashboard, `/api/v1/.../health`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::releases::Support;

/// How worrying a cluster is; its worst finding decides, and the overview lists the worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
// Named apart from `/healthz`'s `Health` schema in the OpenAPI document.
#[schema(as = HealthLevel)]
pub enum Health {
    Critical,
    Degraded,
    Expiring,
    /// No agent has connected yet.
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

/// How urgent a finding is, in the words alerting uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = FindingSeverity)]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// The thresholds of the rules (settings `health_*`; the defaults are below).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Below this success rate a cluster is critical.
    pub critical_below: f64,
    /// Below this success rate a healthy cluster becomes degraded ...
    pub degraded_below: f64,
    /// ... and a degraded one recovers only at or above this one. The gap keeps a cluster whose
    /// rate wanders around the threshold from flipping between healthy and degraded every few
    /// seconds.
    pub recovered_at: f64,
    /// A certificate warns (and makes its cluster "expiring") once less than a third of its
    /// lifetime or this much is left, whichever comes later: a 48-hour issuer warns 16 hours
    /// before it expires, not all its life; a one-year anchor warns this long before.
    pub expiry_warning: Duration,
    /// A cluster clock further than this from the service's is a finding: certificates and
    /// tokens are checked against validity windows, so it breaks mTLS and agent sign-in.
    pub clock_skew: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            critical_below: 0.95,
            degraded_below: 0.99,
            recovered_at: 0.995,
            expiry_warning: Duration::from_secs(7 * 86_400),
            clock_skew: Duration::from_secs(60),
        }
    }
}

impl Thresholds {
    /// The rates must be fractions in order: critical <= degraded <= recovered.
    pub fn validate(&self) -> Result<(), String> {
        let (c, d, r) = (self.critical_below, self.degraded_below, self.recovered_at);
        if !(0.0..=1.0).contains(&c) || !(0.0..=1.0).contains(&d) || !(0.0..=1.0).contains(&r) {
            return Err("health_critical_below, health_degraded_below and health_recovered_at are fractions between 0 and 1".into());
        }
        if !(c <= d && d <= r) {
            return Err(format!("health thresholds must satisfy critical_below ({c}) <= degraded_below ({d}) <= recovered_at ({r})"));
        }
        Ok(())
    }

    /// When a certificate starts to warn (ms).
    pub fn warns_from(&self, c: &Certificate<'_>) -> i64 {
        let lifetime = c.not_after.saturating_sub(c.not_before);
        let period = if lifetime > 0 { (lifetime / 3).min(super::ms(self.expiry_warning)) } else { super::ms(self.expiry_warning) };
        c.not_after - period
    }

    /// Whether a success rate counts as degraded (or worse), given whether it did last time.
    /// No traffic is no evidence of errors.
    pub fn success_degraded(&self, rate: Option<f64>, was_degraded: bool) -> bool {
        match rate {
            Some(r) if was_degraded => r < self.recovered_at,
            Some(r) => r < self.degraded_below,
            None => false,
        }
    }
}

/// Something worth knowing about a cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// The agent is stale or disconnected (the status); last heard from at `last_seen` (ms).
    AgentAway {
        status: String,
        last_seen: Option<i64>,
    },
    NoAgentYet,
    /// The certificate of this role expired at `not_after` (ms).
    CertificateExpired {
        role: String,
        not_after: i64,
    },
    /// The success rate (0..=1) is below a threshold: the critical one, or the degraded one.
    SuccessRate {
        rate: f64,
        critical: bool,
    },
    ControlPlaneNotReady {
        ready: u32,
        want: u32,
    },
    /// The certificate of this role expires at `not_after` (ms), and has warned since
    /// `warns_from` (`Thresholds::warns_from`).
    CertificateExpiring {
        role: String,
        not_after: i64,
        warns_from: i64,
    },
    /// The cluster's issuer warns (as `CertificateExpiring`) while its agent is away, so the
    /// service cannot rotate it: critical, as the mesh stops at `not_after`.
    IssuerStranded {
        not_after: i64,
        warns_from: i64,
    },
    /// Proxies run another version than the control plane's.
    ProxiesOutdated {
        outdated: i64,
        total: i64,
        control_plane: String,
    },
    /// The cluster's clock is `skew_ms` from the service's (positive: ahead), beyond the threshold.
    ClockSkew {
        skew_ms: i64,
    },
    /// `proxies` proxies run a version more than one major version away from the control
    /// plane's, which the mesh does not support; `farthest` is the farthest of them.
    VersionSkew {
        proxies: i64,
        farthest: String,
        control_plane: String,
    },
    /// `pods` pods of a namespace with injection on run without the proxy, so their traffic
    /// is neither encrypted nor seen; `examples` names some of them.
    PodsWithoutProxy {
        namespace: String,
        pods: u32,
        examples: Vec<String>,
    },
    /// The control plane runs a version the release catalog does not support: unknown to it
    /// (nothing can plan an upgrade from it), or yanked (withdrawn; upgrade away from it).
    ReleaseUnsupported {
        version: String,
        support: Support,
    },
}

impl Finding {
    /// The check that made the finding: stable, for API clients and alert rules.
    pub fn check(&self) -> &'static str {
        match self {
            Finding::AgentAway { .. } | Finding::NoAgentYet => "agent",
            Finding::CertificateExpired { .. } | Finding::CertificateExpiring { .. } | Finding::IssuerStranded { .. } => "certificate_expiry",
            Finding::SuccessRate { .. } => "success_rate",
            Finding::ControlPlaneNotReady { .. } => "control_plane",
            Finding::ProxiesOutdated { .. } => "proxy_versions",
            Finding::VersionSkew { .. } => "version_skew",
            Finding::ClockSkew { .. } => "clock_skew",
            Finding::PodsWithoutProxy { .. } => "injection",
            Finding::ReleaseUnsupported { .. } => "control_plane_version",
        }
    }

    /// The health the finding gives its cluster; `None`: it informs, the health stays.
    pub fn health(&self) -> Option<Health> {
        match self {
            Finding::AgentAway { .. }
            | Finding::CertificateExpired { .. }
            | Finding::IssuerStranded { .. }
            | Finding::SuccessRate { critical: true, .. }
            | Finding::VersionSkew { .. } => Some(Health::Critical),
            Finding::SuccessRate { critical: false, .. }
            | Finding::ControlPlaneNotReady { .. }
            | Finding::ClockSkew { .. }
            | Finding::ReleaseUnsupported { support: Support::Yanked, .. } => Some(Health::Degraded),
            Finding::CertificateExpiring { .. } => Some(Health::Expiring),
            Finding::NoAgentYet => Some(Health::Pending),
            Finding::ProxiesOutdated { .. } | Finding::PodsWithoutProxy { .. } | Finding::ReleaseUnsupported { .. } => None,
        }
    }

    pub fn severity(&self) -> Severity {
        match self.health() {
            // The mesh works, but not for these pods: worth acting on, not a degraded cluster.
            // An unknown version works today but cannot be upgraded by the service.
            None if matches!(self, Finding::PodsWithoutProxy { .. } | Finding::ReleaseUnsupported { .. }) => Severity::Warning,
            Some(Health::Critical) => Severity::Critical,
            Some(Health::Degraded | Health::Expiring) => Severity::Warning,
            _ => Severity::Info,
        }
    }

    /// What the finding is about: `Agent`, `Cluster` (its traffic), `ControlPlane`, `Proxies`
    /// or `Certificate/<role>`.
    pub fn object(&self) -> String {
        match self {
            Finding::AgentAway { .. } | Finding::NoAgentYet => "Agent".into(),
            Finding::ClockSkew { .. } => "Clock".into(),
            Finding::CertificateExpired { role, .. } | Finding::CertificateExpiring { role, .. } => format!("Certificate/{role}"),
            Finding::IssuerStranded { .. } => "Certificate/issuer".into(),
            Finding::SuccessRate { .. } => "Cluster".into(),
            Finding::ControlPlaneNotReady { .. } | Finding::ReleaseUnsupported { .. } => "ControlPlane".into(),
            Finding::ProxiesOutdated { .. } | Finding::VersionSkew { .. } => "Proxies".into(),
            Finding::PodsWithoutProxy { namespace, .. } => format!("Namespace/{namespace}"),
        }
    }

    /// When the condition began, where the signals tell; otherwise adapters use when they first
    /// saw the finding.
    pub fn began(&self) -> Option<i64> {
        match self {
            Finding::AgentAway { last_seen, .. } => *last_seen,
            Finding::CertificateExpired { not_after, .. } => Some(*not_after),
            Finding::CertificateExpiring { warns_from, .. } | Finding::IssuerStranded { warns_from, .. } => Some(*warns_from),
            _ => None,
        }
    }

    /// The finding in a few words, as the dashboard and the API show it.
    pub fn message(&self, now: i64) -> String {
        match self {
            Finding::AgentAway { status, .. } => format!("agent {status}"),
            Finding::NoAgentYet => "no agent connected yet".into(),
            Finding::ClockSkew { skew_ms } => {
                let (secs, way) = (skew_ms.unsigned_abs() / 1000, if *skew_ms > 0 { "ahead of" } else { "behind" });
                format!("the cluster's clock is {secs} s {way} the service's")
            }
            Finding::CertificateExpired { role, not_after } => format!("the {role} certificate expired {} ago", span(now - not_after)),
            Finding::SuccessRate { rate, .. } => format!("success rate {:.1}%", rate * 100.0),
            Finding::ControlPlaneNotReady { ready, want } => format!("control plane {ready}/{want} ready"),
            Finding::CertificateExpiring { role, not_after, .. } => format!("the {role} certificate expires in {}", span(not_after - now)),
            Finding::IssuerStranded { not_after, .. } => {
                format!("the issuer certificate expires in {} and the agent is away: the service cannot rotate it", span(not_after - now))
            }
            Finding::ProxiesOutdated { outdated, total, control_plane } => {
                format!("{outdated} of {total} proxies are not at the control plane's {control_plane}")
            }
            Finding::VersionSkew { proxies, farthest, control_plane } => {
                let run = if *proxies == 1 { "proxy runs a version" } else { "proxies run versions" };
                format!("{proxies} {run} more than one major version from the control plane's {control_plane} (as far as {farthest})")
            }
            Finding::PodsWithoutProxy { namespace, pods, examples } => {
                let more = if (*pods as usize) > examples.len() { ", ..." } else { "" };
                let (run, them) = if *pods == 1 { ("pod runs", "it") } else { ("pods run", "them") };
                format!(
                    "{pods} {run} without the proxy in namespace {namespace}, which has injection on ({}{more}): restart {them} to inject it, or opt {them} out with meshfleet.io/inject: disabled",
                    examples.join(", ")
                )
            }
            Finding::ReleaseUnsupported { version, support } => match support {
                Support::Yanked => format!("the control plane runs {version}, which is yanked from the release catalog: upgrade away from it"),
                Support::Unparseable => {
                    format!("the control plane reports version {version:?}, which is not a semantic version: the service cannot plan its upgrades")
                }
                _ => format!("the control plane runs {version}, which is not in the release catalog: the service cannot plan its upgrades"),
            },
        }
    }
}

/// A duration in ms, in the largest units that read well: `12 min`, `3 h 5 min`, `2 d 4 h`, `7 d`.
pub fn span(ms: i64) -> String {
    let secs = (ms / 1000).unsigned_abs();
    let (big, small) = match secs {
        0..=3599 => return format!("{} min", secs / 60),
        3600..=86_399 => ((secs / 3600, "h"), (secs % 3600 / 60, "min")),
        _ => ((secs / 86_400, "d"), (secs % 86_400 / 3600, "h")),
    };
    match small.0 {
        0 => format!("{} {}", big.0, big.1),
        _ => format!("{} {} {} {}", big.0, big.1, small.0, small.1),
    }
}

/// A certificate as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Certificate<'a> {
    pub role: &'a str,
    pub not_before: i64,
    pub not_after: i64,
}

/// Pods of a namespace with injection on that run without the proxy, as the agent counted them.
#[derive(Debug, Clone, Copy)]
pub struct Uninjected<'a> {
    pub namespace: &'a str,
    pub pods: u32,
    /// Some of their names.
    pub examples: &'a [String],
}

/// What the rules look at.
pub struct Signals<'a> {
    /// The agent's effective status: pending, connected, stale or disconnected.
    pub status: &'a str,
    pub last_seen: Option<i64>,
    pub success_rate: Option<f64>,
    /// The result of `Thresholds::success_degraded` for this cluster, which carries the hysteresis.
    pub success_degraded: bool,
    pub certificates: &'a [Certificate<'a>],
    /// (ready, wanted) control-plane replicas, when reported.
    pub control_plane: Option<(u32, u32)>,
    /// The control plane's version, when reported.
    pub mesh_version: &'a str,
    /// Proxies not at `mesh_version`, and all proxies.
    pub proxies: (i64, i64),
    /// How many proxies run each version.
    pub proxy_versions: &'a [(String, i64)],
    /// The cluster's clock minus the service's (ms), as the agent last told.
    pub clock_skew: Option<i64>,
    /// Injection coverage: namespaces with injection on whose pods run without the proxy.
    pub uninjected: &'a [Uninjected<'a>],
    /// How the release catalog sees `mesh_version` (None: not reported).
    pub release: Option<Support>,
    pub now: i64,
}

/// A cluster's health and its findings, the one that decides the health first.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub health: Health,
    pub findings: Vec<Finding>,
}

/// Assesses a cluster. Metrics and the control plane count only while the agent is connected
/// (otherwise they are old news); certificates always do, their times are absolute.
pub fn assess(s: &Signals, t: &Thresholds) -> Assessment {
    let mut findings = Vec::new();
    let connected = match s.status {
        "disconnected" | "stale" => {
            findings.push(Finding::AgentAway { status: s.status.to_owned(), last_seen: s.last_seen });
            false
        }
        "pending" => {
            findings.push(Finding::NoAgentYet);
            false
        }
        _ => true,
    };
    let mut certificates = s.certificates.to_vec();
    certificates.sort_by_key(|c| c.not_after);
    for c in certificates.iter().filter(|c| c.not_after <= s.now) {
        findings.push(Finding::CertificateExpired { role: c.role.to_owned(), not_after: c.not_after });
    }
    if connected {
        match s.success_rate {
            Some(rate) if rate < t.critical_below => findings.push(Finding::SuccessRate { rate, critical: true }),
            Some(rate) if s.success_degraded => findings.push(Finding::SuccessRate { rate, critical: false }),
            _ => {}
        }
        if let Some(skew_ms) = s.clock_skew.filter(|s| s.unsigned_abs() > t.clock_skew.as_millis() as u64) {
            findings.push(Finding::ClockSkew { skew_ms });
        }
        if let Some((ready, want)) = s.control_plane.filter(|(r, w)| r < w) {
            findings.push(Finding::ControlPlaneNotReady { ready, want });
        }
        if let Some(support) = s.release.clone().filter(|r| *r != Support::Supported) {
            findings.push(Finding::ReleaseUnsupported { version: s.mesh_version.to_owned(), support });
        }
        for u in s.uninjected.iter().filter(|u| u.pods > 0) {
            findings.push(Finding::PodsWithoutProxy { namespace: u.namespace.to_owned(), pods: u.pods, examples: u.examples.to_vec() });
        }
    }
    for c in certificates.iter().filter(|c| c.not_after > s.now && s.now >= t.warns_from(c)) {
        let (not_after, warns_from) = (c.not_after, t.warns_from(c));
        findings.push(match c.role {
            "issuer" if matches!(s.status, "disconnected" | "stale") => Finding::IssuerStranded { not_after, warns_from },
            role => Finding::CertificateExpiring { role: role.to_owned(), not_after, warns_from },
        });
    }
    if connected && s.proxies.0 > 0 && !s.mesh_version.is_empty() {
        findings.push(Finding::ProxiesOutdated { outdated: s.proxies.0, total: s.proxies.1, control_plane: s.mesh_version.to_owned() });
    }
    if let (true, Some(cp)) = (connected, major(s.mesh_version)) {
        let skewed: Vec<(&str, u64, i64)> =
            s.proxy_versions.iter().filter_map(|(v, n)| major(v).map(|m| (v.as_str(), m.abs_diff(cp), *n))).filter(|(_, d, _)| *d > 1).collect();
        if let Some((farthest, _, _)) = skewed.iter().min_by_key(|(_, d, _)| std::cmp::Reverse(*d)) {
            let proxies = skewed.iter().map(|(_, _, n)| n).sum();
            findings.push(Finding::VersionSkew { proxies, farthest: (*farthest).to_owned(), control_plane: s.mesh_version.to_owned() });
        }
    }
    // Stable: within a level, the order above (the agent first, then certificates, ...).
    findings.sort_by_key(|f| f.health().unwrap_or(Health::Healthy));
    let health = findings.first().and_then(Finding::health).unwrap_or(Health::Healthy);
    Assessment { health, findings }
}

/// The major version of a mesh version such as `1.4.2` or `v2.0.0-rc.1`, by semantic-version
/// rules; `None` when it is not one.
pub fn major(version: &str) -> Option<u64> {
    semver::Version::parse(version.strip_prefix('v').unwrap_or(version)).ok().map(|v| v.major)
}

/// Whether the minute starting at `minute` is over: the minute still running has only part
/// of its requests, and plotted or rated as a whole minute it looks like a drop.
pub fn is_finished(minute: i64, now: i64) -> bool {
    minute + 60_000 <= now
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

    const T: Thresholds = Thresholds {
        critical_below: 0.95,
        degraded_below: 0.99,
        recovered_at: 0.995,
        expiry_warning: Duration::from_secs(7 * 86_400),
        clock_skew: Duration::from_secs(60),
    };

    fn signals<'a>(status: &'a str, certificates: &'a [Certificate<'a>]) -> Signals<'a> {
        Signals {
            status,
            last_seen: Some(900),
            success_rate: None,
            success_degraded: false,
            certificates,
            control_plane: None,
            mesh_version: "",
            proxies: (0, 0),
            proxy_versions: &[],
            clock_skew: None,
            release: None,
            uninjected: &[],
            now: 1_000,
        }
    }

    #[test]
    fn pods_without_the_proxy_in_an_injected_namespace_warn_while_the_agent_is_connected() {
        let examples = ["batch-1".to_owned(), "batch-2".to_owned()];
        let uninjected = [Uninjected { namespace: "shop", pods: 3, examples: &examples }, Uninjected { namespace: "web", pods: 0, examples: &[] }];
        let a = assess(&Signals { uninjected: &uninjected, ..signals("connected", &[]) }, &T);
        assert_eq!(a.health, Health::Healthy, "the mesh works; these pods are outside it");
        let [f] = a.findings.as_slice() else { panic!("one finding: {:?}", a.findings) };
        assert_eq!((f.check(), f.object(), f.severity()), ("injection", "Namespace/shop".to_owned(), Severity::Warning));
        assert_eq!(
            f.message(0),
            "3 pods run without the proxy in namespace shop, which has injection on (batch-1, batch-2, ...): restart them to inject it, or opt them out with meshfleet.io/inject: disabled"
        );
        let away = assess(&Signals { uninjected: &uninjected, ..signals("disconnected", &[]) }, &T);
        assert!(away.findings.iter().all(|f| f.check() != "injection"), "old news from an agent that is away");
    }

    fn connected(rate: f64, was_degraded: bool) -> Health {
        let degraded = T.success_degraded(Some(rate), was_degraded);
        assess(&Signals { success_rate: Some(rate), success_degraded: degraded, ..signals("connected", &[]) }, &T).health
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
                let now = T.success_degraded(Some(*r), was);
                let flipped = now != was;
                was = now;
                flipped
            })
            .filter(|f| *f)
            .count();
        assert_eq!(flips, 1);
        // Critical and no-traffic cases keep their meaning.
        assert_eq!(connected(0.94, true), Health::Critical);
        assert!(!T.success_degraded(None, true));
    }

    #[test]
    fn expiry_warns_relative_to_lifetime_or_a_week_whichever_comes_later() {
        const H: i64 = 3_600_000;
        let issuer = Certificate { role: "issuer", not_before: 0, not_after: 48 * H };
        assert_eq!(T.warns_from(&issuer), 32 * H, "a 48-hour issuer warns with 16 hours left");
        let anchor = Certificate { role: "anchor", not_before: 0, not_after: 365 * 24 * H };
        assert_eq!(T.warns_from(&anchor), (365 - 7) * 24 * H, "a one-year anchor warns a week ahead");
        let at = |now: i64, c: Certificate<'static>| assess(&Signals { now, control_plane: Some((1, 1)), ..signals("connected", &[c]) }, &T).health;
        assert_eq!(at(30 * H, issuer), Health::Healthy, "18 hours left of 48: no warning yet");
        assert_eq!(at(33 * H, issuer), Health::Expiring);
        assert_eq!(at((365 - 8) * 24 * H, anchor), Health::Healthy);
        assert_eq!(at((365 - 6) * 24 * H, anchor), Health::Expiring);
        // While its agent is away, an issuer the service cannot rotate is critical on its own.
        let away = assess(&Signals { now: 33 * H, ..signals("disconnected", &[issuer]) }, &T);
        let stranded: Vec<(&str, Severity)> = away.findings.iter().map(|f| (f.check(), f.severity())).collect();
        assert_eq!(stranded, [("agent", Severity::Critical), ("certificate_expiry", Severity::Critical)]);
        assert!(away.findings[1].message(33 * H).contains("the service cannot rotate it"), "{:?}", away.findings[1]);
    }

    #[test]
    fn findings_come_worst_first_and_the_worst_decides() {
        let stale = assess(&signals("stale", &[]), &T);
        assert_eq!((stale.health, stale.findings[0].check()), (Health::Critical, "agent"));
        assert_eq!(stale.findings[0].began(), Some(900));

        const LONG_AGO: i64 = -100 * 86_400_000;
        let certs =
            [Certificate { role: "issuer", not_before: LONG_AGO, not_after: 2_000 }, Certificate { role: "anchor", not_before: LONG_AGO, not_after: 500 }];
        let s = Signals { control_plane: Some((1, 2)), ..signals("connected", &certs) };
        let a = assess(&s, &T);
        assert_eq!(a.health, Health::Critical);
        let checks: Vec<(String, Severity)> = a.findings.iter().map(|f| (f.object(), f.severity())).collect();
        assert_eq!(
            checks,
            [("Certificate/anchor".into(), Severity::Critical), ("ControlPlane".into(), Severity::Warning), ("Certificate/issuer".into(), Severity::Warning)]
        );
        assert_eq!(a.findings[0].message(1_000 + 3_600_000), "the anchor certificate expired 1 h ago");
        assert_eq!((span(7 * 86_400_000), span(90_061_000), span(59_000)), ("7 d".into(), "1 d 1 h".into(), "0 min".into()));

        let certs = [Certificate { role: "issuer", not_before: LONG_AGO, not_after: 2_000 }];
        let a = assess(&Signals { control_plane: Some((2, 2)), ..signals("connected", &certs) }, &T);
        assert_eq!(a.health, Health::Expiring);
        assert_eq!(a.findings[0].began(), Some(2_000 - 7 * 86_400_000));
        assert_eq!(assess(&signals("pending", &[]), &T).health, Health::Pending);
        assert_eq!(assess(&signals("connected", &[]), &T), Assessment { health: Health::Healthy, findings: vec![] });
    }

    #[test]
    fn metrics_and_the_control_plane_count_only_while_the_agent_is_connected() {
        let s = Signals { success_rate: Some(0.5), control_plane: Some((0, 1)), mesh_version: "1.2.0", proxies: (3, 4), ..signals("disconnected", &[]) };
        assert_eq!(assess(&s, &T).findings.len(), 1);
        let a = assess(&Signals { status: "connected", ..s }, &T);
        let checks: Vec<&str> = a.findings.iter().map(Finding::check).collect();
        assert_eq!(checks, ["success_rate", "control_plane", "proxy_versions"]);
        // Outdated proxies inform; they do not change the health.
        let a = assess(&Signals { mesh_version: "1.2.0", proxies: (3, 4), ..signals("connected", &[]) }, &T);
        assert_eq!((a.health, a.findings[0].severity()), (Health::Healthy, Severity::Info));
        assert_eq!(a.findings[0].message(0), "3 of 4 proxies are not at the control plane's 1.2.0");
    }

    #[test]
    fn thresholds_come_from_settings_and_must_be_in_order() {
        let strict = Thresholds { degraded_below: 0.999, recovered_at: 0.9995, ..T };
        assert!(strict.success_degraded(Some(0.998), false));
        assert!(!T.success_degraded(Some(0.998), false));
        assert!(Thresholds { critical_below: 0.99, degraded_below: 0.95, ..T }.validate().is_err());
        assert!(Thresholds { recovered_at: 1.5, ..T }.validate().is_err());
        assert!(T.validate().is_ok());
        assert_eq!(Thresholds::default(), T);
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
        assert!(is_finished(0, 60_000));
        assert!(!is_finished(60_000, 119_999));
    }

    #[test]
    fn proxies_more_than_one_major_version_away_are_critical() {
        let assess_versions = |cp: &str, versions: &[(String, i64)], status: &str| {
            let outdated = versions.iter().filter(|(v, _)| v != cp).map(|(_, n)| n).sum();
            let total = versions.iter().map(|(_, n)| n).sum();
            assess(&Signals { mesh_version: cp, proxies: (outdated, total), proxy_versions: versions, ..signals(status, &[]) }, &T)
        };
        let v = |s: &str, n: i64| (s.to_owned(), n);
        // One major apart is supported: outdated, informational only.
        let a = assess_versions("2.1.0", &[v("2.1.0", 5), v("1.9.3", 2)], "connected");
        assert_eq!(a.health, Health::Healthy);
        assert_eq!(a.findings.iter().map(Finding::check).collect::<Vec<_>>(), ["proxy_versions"]);
        // Two majors apart (either way), counted over every such version; `v` prefixes and
        // pre-releases parse; what is not a version is not judged.
        let a = assess_versions("v3.0.0-rc.1", &[v("3.0.0", 4), v("1.2.0", 2), v("v5.0.1", 1), v("edge-24.1", 7)], "connected");
        assert_eq!(a.health, Health::Critical);
        let skew = a.findings.iter().find(|f| f.check() == "version_skew").unwrap();
        assert_eq!(skew, &Finding::VersionSkew { proxies: 3, farthest: "1.2.0".into(), control_plane: "v3.0.0-rc.1".into() });
        assert_eq!((skew.object(), skew.severity()), ("Proxies".to_owned(), Severity::Critical));
        assert!(skew.message(0).contains("3 proxies"), "{}", skew.message(0));
        // Ties go to the first farthest; 10 vs 2 is a numeric comparison, not a string one.
        assert_eq!(major("10.0.0"), Some(10));
        assert!(assess_versions("10.0.0", &[v("2.0.0", 1)], "connected").findings.iter().any(|f| f.check() == "version_skew"));
        assert!(!assess_versions("10.0.0", &[v("9.0.0", 1)], "connected").findings.iter().any(|f| f.check() == "version_skew"));
        // An unknown control-plane version, or an agent away: not judged.
        assert!(!assess_versions("main", &[v("1.0.0", 1)], "connected").findings.iter().any(|f| f.check() == "version_skew"));
        assert!(!assess_versions("3.0.0", &[v("1.0.0", 1)], "stale").findings.iter().any(|f| f.check() == "version_skew"));
    }

    #[test]
    fn a_clock_beyond_the_threshold_either_way_degrades_a_connected_cluster() {
        let with_skew = |skew: Option<i64>, status: &str| assess(&Signals { clock_skew: skew, ..signals(status, &[]) }, &T);
        assert_eq!(with_skew(Some(60_000), "connected").health, Health::Healthy);
        assert_eq!(with_skew(None, "connected").health, Health::Healthy);
        let ahead = with_skew(Some(90_500), "connected");
        assert_eq!(ahead.health, Health::Degraded);
        assert_eq!(ahead.findings[0].message(0), "the cluster's clock is 90 s ahead of the service's");
        assert_eq!(with_skew(Some(-61_000), "connected").findings[0].message(0), "the cluster's clock is 61 s behind the service's");
        // An agent away tells nothing new about its clock.
        assert!(!with_skew(Some(-61_000), "stale").findings.iter().any(|f| f.check() == "clock_skew"));
    }

    #[test]
    fn a_control_plane_version_the_catalog_does_not_support_is_a_finding() {
        let at = |support: Support, status: &str| assess(&Signals { mesh_version: "1.9.0", release: Some(support), ..signals(status, &[]) }, &T);
        let unknown = at(Support::Unknown, "connected");
        assert_eq!(unknown.health, Health::Healthy, "an unknown version works; it only cannot be upgraded by the service");
        let f = &unknown.findings[0];
        assert_eq!((f.check(), f.object(), f.severity()), ("control_plane_version", "ControlPlane".to_owned(), Severity::Warning));
        assert!(f.message(0).contains("1.9.0, which is not in the release catalog"), "{}", f.message(0));
        let yanked = at(Support::Yanked, "connected");
        assert_eq!((yanked.health, yanked.findings[0].severity()), (Health::Degraded, Severity::Warning));
        assert!(at(Support::Supported, "connected").findings.is_empty());
        assert!(at(Support::Yanked, "disconnected").findings.iter().all(|f| f.check() != "control_plane_version"), "old news from an agent that is away");
    }
}
