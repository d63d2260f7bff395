//! Evaluation of the built-in rules: every `alert_evaluation_ms`, on one replica at a time, each
//! organization's fleet is assessed afresh and every finding of an enabled rule moves its alert
//! through pending -> firing -> resolved (`domain::alerting::step`), each change in its own
//! transaction. Then `routing::notify` tells the channels, by the notification policies.
//!
//! Silences: an alert an active silence matches still moves through its states, but its
//! firing is not notified. Once no active silence matches it (expired, or run out) while it
//! still fires, the next evaluation sends it. `alert.resolved` goes only to alerts whose firing
//! was sent, silenced or not by then: a receiver that opened an incident hears it closed.
//!
//! Inhibition: while a cluster's agent is disconnected, its other alerts are held as they are
//! (neither raised nor resolved): the data they would be judged on is stale, and the one alert
//! that matters is the agent's. While a rollout upgrades a cluster, its version-skew alert is
//! held the same way: proxies and control plane part on purpose until the workloads restart.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::alerting::{self, builtin_rule, AlertBody, AlertCluster, AlertEvent, AlertState, BuiltinRule, EventType, Open, Step};
use crate::domain::health::{Finding, Severity};
use crate::domain::metric_rules::{MetricRule, Sample};
use crate::domain::objectives;
use crate::domain::{ms, AlertId, ClusterId, OrgId};
use crate::fleet::{FleetCache, Row};
use crate::jobs::{Job, Scope};
use crate::store;
use crate::store::alerts::{Alert, RuleChange};

pub fn job(state: &AppState) -> Job {
    Job::new("alert-evaluation", state.config.alert_evaluation, Scope::Leased, evaluate_all)
}

async fn evaluate_all(state: AppState) -> anyhow::Result<()> {
    let orgs = store::alerts::orgs_with_clusters(&mut *state.db.pool.acquire().await?).await?;
    for org in orgs {
        evaluate(&state, org).await?;
    }
    Ok(())
}

/// A rule as an organization runs it: the built-in defaults with its changes.
#[derive(Debug, Clone, Copy)]
pub struct Effective {
    pub enabled: bool,
    pub severity: Option<Severity>,
    pub for_ms: i64,
}

pub fn effective(rule: &alerting::BuiltinRule, change: Option<&RuleChange>) -> Effective {
    let change = change.copied().unwrap_or_default();
    Effective { enabled: !change.disabled, severity: change.severity, for_ms: change.for_ms.unwrap_or(rule.default_for_ms) }
}

/// Evaluates one organization's rules on its fleet as it is now.
pub async fn evaluate(state: &AppState, org: OrgId) -> anyhow::Result<()> {
    let snapshot = FleetCache::fresh(state, org).await.map_err(|e| anyhow::anyhow!("assessing the fleet of {org}: {e}"))?;
    let now = snapshot.at;
    let resolve_delay = ms(state.config.alert_resolve_delay);
    let (changes, open, silences) = {
        let mut conn = state.db.pool.acquire().await?;
        let changes = store::alerts::rule_changes(&mut conn, org).await?;
        let open: HashMap<String, Alert> = store::alerts::open_of_org(&mut conn, org).await?.into_iter().map(|a| (a.fingerprint.clone(), a)).collect();
        let silences = store::silences::active(&mut conn, org, now).await?;
        (changes, open, silences)
    };
    let upgrading = {
        let mut conn = state.db.pool.acquire().await?;
        crate::rollouts::upgrading(&store::rollouts::open(&mut conn, org).await?)
    };
    let (metric_rules, objectives) = {
        let mut conn = state.db.pool.acquire().await?;
        let rules: Vec<MetricRule> = store::metric_rules::list(&mut conn, org).await?.into_iter().filter(|r| r.enabled).collect();
        (rules, store::metric_rules::objectives(&mut conn, org).await?)
    };
    // Stored objectives were checked when set.
    let selectors = objectives::check(&objectives).unwrap_or_default();
    let objective_rules: Vec<(&BuiltinRule, Effective)> =
        ["workload_success_rate", "workload_latency"].iter().filter_map(|n| builtin_rule(n)).map(|r| (r, effective(r, changes.get(r.name)))).collect();
    let mut windows: BTreeSet<i64> = metric_rules.iter().map(|r| r.window_ms).collect();
    if objective_rules.iter().any(|(_, cfg)| cfg.enabled) {
        windows.insert(objectives::WINDOW_MS);
    }
    let samples = workload_samples(state, org, windows, now).await?;
    let workloads_of = |window: i64, cluster: ClusterId| samples.get(&window).and_then(|s| s.get(&cluster)).map(Vec::as_slice).unwrap_or_default();
    let mut eval = Evaluation { state, org, now, resolve_delay, open, seen: HashSet::new(), judged: Vec::new() };
    for row in &snapshot.rows {
        let held = row.status == "disconnected";
        let cluster = row.cluster.id;
        if held {
            eval.seen.extend(eval.open.values().filter(|a| a.cluster_id == cluster && a.rule != "agent").map(|a| a.fingerprint.clone()));
        }
        let upgrading = upgrading.contains(&cluster);
        if upgrading {
            eval.seen.extend(eval.open.values().filter(|a| a.cluster_id == cluster && a.rule == "version_skew").map(|a| a.fingerprint.clone()));
        }
        for (finding, since) in &row.findings {
            let Some(rule) = builtin_rule(finding.check()) else { continue };
            let cfg = effective(rule, changes.get(rule.name));
            // A cluster waiting for its first agent is not a problem to page anyone about. A
            // disconnected cluster's findings are old news, muted by its agent alert, except an
            // issuer that will expire before anyone can rotate it: that one is the news.
            let muted = (held && rule.name != "agent" && !matches!(finding, Finding::IssuerStranded { .. })) || (upgrading && rule.name == "version_skew");
            if !cfg.enabled || matches!(finding, Finding::NoAgentYet) || muted {
                continue;
            }
            let severity = cfg.severity.unwrap_or_else(|| finding.severity());
            let condition = Condition { rule: rule.name, object: finding.object(), severity, summary: finding.message(now), since: *since, for_ms: cfg.for_ms };
            eval.holds(row, condition, &[]).await?;
        }
        if held {
            continue;
        }
        let targets = objectives.for_cluster(&selectors, &row.cluster.labels);
        for (namespace, workload, sample) in workloads_of(objectives::WINDOW_MS, row.cluster.id) {
            for miss in objectives::misses(targets, sample) {
                let Some((rule, cfg)) = objective_rules.iter().find(|(r, cfg)| r.name == miss.rule && cfg.enabled) else { continue };
                let object = format!("{namespace}/{workload}");
                let summary = miss.summary(&object);
                let severity = cfg.severity.unwrap_or(Severity::Warning);
                let condition = Condition { rule: rule.name, object, severity, summary, since: now, for_ms: cfg.for_ms };
                eval.holds(row, condition, &[("namespace", namespace), ("workload", workload)]).await?;
            }
        }
        for rule in &metric_rules {
            for (namespace, workload, sample) in workloads_of(rule.window_ms, row.cluster.id) {
                if !rule.covers(&row.cluster.labels, namespace, workload) {
                    continue;
                }
                let Some(value) = rule.breached(sample) else { continue };
                let object = format!("{namespace}/{workload}");
                let summary = rule.summary(&object, value);
                let condition = Condition { rule: &rule.name, object, severity: rule.severity, summary, since: now, for_ms: rule.for_ms };
                eval.holds(row, condition, &[("namespace", namespace), ("workload", workload)]).await?;
            }
        }
    }
    let Evaluation { open, seen, mut judged, .. } = eval;
    for (fingerprint, alert) in open {
        if seen.contains(&fingerprint) {
            // Held as it is (its cluster's agent is disconnected, or it is being upgraded).
            judged.push(alert);
            continue;
        }
        let step = alerting::step(Some(&remembered(&alert)), false, alert.starts_at, now, 0, resolve_delay);
        judged.push(apply(state, alert, step, now).await?);
    }
    super::routing::notify(state, org, &judged, &silences, now).await
}

/// Each cluster's workloads (namespace, workload, sample) over one window.
pub type WorkloadSamples = HashMap<ClusterId, Vec<(String, String, Sample)>>;

/// Workloads' samples by (organization, window, minute). They cover complete minutes only, so
/// they change as the last minute's late reports arrive, not with every evaluation: each is
/// read again after ten evaluation intervals (at most 15 s), which keeps the per-workload scan
/// of the rollups out of most evaluations.
pub struct SampleMemo(moka::sync::Cache<(OrgId, i64, i64), Arc<WorkloadSamples>>);

impl SampleMemo {
    pub fn new(evaluation: std::time::Duration) -> SampleMemo {
        let ttl = (evaluation * 10).min(std::time::Duration::from_secs(15));
        SampleMemo(moka::sync::Cache::builder().max_capacity(10_000).time_to_live(ttl).build())
    }
}

/// The samples over each window in `windows`, by window.
async fn workload_samples(state: &AppState, org: OrgId, windows: BTreeSet<i64>, now: i64) -> anyhow::Result<HashMap<i64, Arc<WorkloadSamples>>> {
    // Complete minutes only: the current one is still being reported.
    let minute = now.div_euclid(60_000) * 60_000;
    let mut by_window = HashMap::new();
    for window in windows {
        let key = (org, window, minute);
        let samples = match state.workload_samples.0.get(&key) {
            Some(samples) => samples,
            None => {
                let mut by_cluster = WorkloadSamples::new();
                for ((cluster, namespace, workload), sample) in
                    store::metric_rules::samples(&mut *state.db.pool.acquire().await?, org, minute - window, minute).await?
                {
                    by_cluster.entry(cluster).or_default().push((namespace, workload, sample));
                }
                let samples = Arc::new(by_cluster);
                state.workload_samples.0.insert(key, samples.clone());
                samples
            }
        };
        by_window.insert(window, samples);
    }
    Ok(by_window)
}

/// A rule's condition holding for one object of a cluster now.
struct Condition<'a> {
    rule: &'a str,
    object: String,
    severity: Severity,
    summary: String,
    /// When the condition began (now, where nothing tells earlier).
    since: i64,
    for_ms: i64,
}

/// One organization's evaluation under way: its open alerts not yet judged, and the
/// fingerprints of those whose condition holds (or that are held as they are).
struct Evaluation<'a> {
    state: &'a AppState,
    org: OrgId,
    now: i64,
    resolve_delay: i64,
    open: HashMap<String, Alert>,
    seen: HashSet<String>,
    /// The alerts judged so far, as they are now.
    judged: Vec<Alert>,
}

impl Evaluation<'_> {
    /// Opens, fires or keeps the alert of a condition that holds; `labels` go beside the
    /// cluster's on a new alert.
    async fn holds(&mut self, row: &Row, c: Condition<'_>, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        let fingerprint = alerting::fingerprint(c.rule, row.cluster.id, &c.object);
        self.seen.insert(fingerprint.clone());
        let current = self.open.remove(&fingerprint);
        let step = alerting::step(current.as_ref().map(remembered).as_ref(), true, c.since, self.now, c.for_ms, self.resolve_delay);
        let mut alert = current.unwrap_or_else(|| new_alert(self.org, row, c.rule, c.object, fingerprint, c.since));
        alert.labels.extend(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let alert = Alert { severity: c.severity, summary: c.summary, ..alert };
        self.judged.push(apply(self.state, alert, step, self.now).await?);
        Ok(())
    }
}

/// What the state machine needs of a stored alert.
fn remembered(a: &Alert) -> Open {
    Open { state: a.state, starts_at: a.starts_at, cleared_at: a.cleared_at }
}

/// A pending alert for a finding first seen now; its severity and summary are set by the caller.
fn new_alert(org: OrgId, row: &Row, rule: &str, object: String, fingerprint: String, since: i64) -> Alert {
    let mut labels = row.cluster.labels.clone();
    labels.insert("cluster".into(), row.cluster.name.clone());
    labels.insert("check".into(), rule.into());
    labels.insert("object".into(), object.clone());
    Alert {
        id: AlertId::new(),
        org_id: org,
        cluster_id: row.cluster.id,
        fingerprint,
        rule: rule.into(),
        object,
        severity: Severity::Info,
        summary: String::new(),
        labels,
        state: AlertState::Pending,
        starts_at: since,
        fired_at: None,
        cleared_at: None,
        ends_at: None,
        notified_at: None,
    }
}

/// Records one step of one alert, in its own transaction, and returns the alert as it is now.
/// What its channels are told is decided afterwards, for all alerts together
/// (`routing::notify`).
async fn apply(state: &AppState, mut alert: Alert, step: Step, now: i64) -> anyhow::Result<Alert> {
    match step {
        Step::Keep => return Ok(alert),
        Step::Open { firing: false } => {}
        Step::Open { firing: true } | Step::Fire => {
            alert.state = AlertState::Firing;
            alert.fired_at = Some(now);
        }
        Step::Clear => alert.cleared_at = Some(now),
        Step::Unclear => alert.cleared_at = None,
        Step::Resolve => {
            alert.state = AlertState::Resolved;
            alert.ends_at = Some(now);
        }
    }
    let mut tx = state.db.begin().await?;
    if matches!(step, Step::Open { .. }) {
        store::alerts::insert(&mut tx, &alert, now).await?;
    } else {
        store::alerts::update(&mut tx, &alert, now).await?;
    }
    tx.commit().await?;
    Ok(alert)
}

/// The event channels receive about `alert`.
pub fn event(state: &AppState, alert: &Alert, event_type: EventType, now: i64) -> AlertEvent {
    AlertEvent {
        // Each channel's message gets its own `webhook-id` when queued (`store::notifications`).
        id: String::new(),
        event_type,
        version: alerting::EVENT_VERSION.into(),
        timestamp: to_rfc3339(now),
        org_id: alert.org_id,
        cluster: AlertCluster { id: alert.cluster_id, name: alert.labels.get("cluster").cloned().unwrap_or_default() },
        alert: AlertBody {
            fingerprint: alert.fingerprint.clone(),
            rule: alert.rule.clone(),
            severity: alert.severity,
            state: alert.state,
            summary: alert.summary.clone(),
            labels: alert.labels.clone(),
            starts_at: to_rfc3339(alert.starts_at),
            ends_at: alert.ends_at.map(to_rfc3339),
        },
        dashboard_url: Some(format!("{}/clusters/{}", state.config.public_url(), alert.cluster_id)),
    }
}
