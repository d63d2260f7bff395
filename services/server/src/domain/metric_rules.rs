//! Custom alert rules on the golden metrics: for the workloads of the clusters a label selector
//! picks (optionally one namespace, one workload), a metric over the last `window` of complete
//! minutes compared with a threshold; an alert fires once the comparison has held for `for`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::health::Severity;
use super::labels::Selector;
use super::{MetricRuleId, OrgId};

pub const MAX_RULES: usize = 200;
/// Windows are whole minutes, from one to an hour.
pub const WINDOW_MS: (i64, i64) = (60_000, 3_600_000);
pub const DEFAULT_WINDOW_MS: i64 = 300_000;
pub const DEFAULT_FOR_MS: i64 = 60_000;
pub const MAX_FOR_MS: i64 = 86_400_000;

/// What a rule measures, per workload, over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Successful requests over all requests, 0 to 1.
    SuccessRate,
    RequestsPerSecond,
    /// Latency percentiles in milliseconds (requests-weighted means of the minutes' values).
    LatencyP50Ms,
    LatencyP95Ms,
    LatencyP99Ms,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::SuccessRate => "success_rate",
            Metric::RequestsPerSecond => "requests_per_second",
            Metric::LatencyP50Ms => "latency_p50_ms",
            Metric::LatencyP95Ms => "latency_p95_ms",
            Metric::LatencyP99Ms => "latency_p99_ms",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Metric::SuccessRate, Metric::RequestsPerSecond, Metric::LatencyP50Ms, Metric::LatencyP95Ms, Metric::LatencyP99Ms]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown metric {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Comparison {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Comparison {
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
        }
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Lt => value < threshold,
            Comparison::Le => value <= threshold,
            Comparison::Gt => value > threshold,
            Comparison::Ge => value >= threshold,
        }
    }
}

impl std::str::FromStr for Comparison {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Comparison::Lt, Comparison::Le, Comparison::Gt, Comparison::Ge]
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown comparison {s:?}"))
    }
}

#[derive(Debug, Clone)]
pub struct MetricRule {
    pub id: MetricRuleId,
    pub org_id: OrgId,
    /// The alerts' `alertname`: lower-case letters, digits and `_`, unique in the organization.
    pub name: String,
    /// As written (`env=prod,tier in (web)`), and parsed.
    pub cluster_selector: (String, Selector),
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub metric: Metric,
    pub comparison: Comparison,
    pub threshold: f64,
    pub window_ms: i64,
    pub for_ms: i64,
    pub severity: Severity,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl MetricRule {
    /// Whether it looks at this workload of a cluster with these labels.
    pub fn covers(&self, labels: &super::labels::Labels, namespace: &str, workload: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.workload.as_deref().is_none_or(|w| w == workload)
            && self.cluster_selector.1.matches(labels)
    }

    /// The measured value when the rule's condition holds for this sample.
    pub fn breached(&self, sample: &Sample) -> Option<f64> {
        let value = sample.value(self.metric, self.window_ms)?;
        self.comparison.holds(value, self.threshold).then_some(value)
    }

    /// One line for people, e.g. `success_rate of shop/Deployment/web is 0.9 (< 0.99 over 5 min)`.
    pub fn summary(&self, object: &str, value: f64) -> String {
        format!(
            "{} of {object} is {} ({} {} over {} min)",
            self.metric.as_str(),
            round(value),
            self.comparison.as_str(),
            round(self.threshold),
            self.window_ms / 60_000
        )
    }
}

/// Four significant decimals are plenty for people.
fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// One workload's traffic over a window of minutes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    pub requests: i64,
    pub failures: i64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl Sample {
    /// The metric's value; None for a ratio or a latency without requests to measure.
    pub fn value(&self, metric: Metric, window_ms: i64) -> Option<f64> {
        let measured = self.requests > 0;
        match metric {
            Metric::RequestsPerSecond => Some(self.requests as f64 * 1000.0 / window_ms as f64),
            Metric::SuccessRate => measured.then(|| 1.0 - self.failures as f64 / self.requests as f64),
            Metric::LatencyP50Ms => measured.then_some(self.p50_ms),
            Metric::LatencyP95Ms => measured.then_some(self.p95_ms),
            Metric::LatencyP99Ms => measured.then_some(self.p99_ms),
        }
    }
}

/// A rule name: 1 to 63 of `[a-z0-9_]`, starting with a letter, and not a built-in rule's.
pub fn parse_name(name: &str) -> Result<String, &'static str> {
    let ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err("must be 1 to 63 lower-case letters, digits or _, starting with a letter");
    }
    if super::alerting::builtin_rule(name).is_some() {
        return Err("is the name of a built-in rule");
    }
    Ok(name.to_owned())
}

/// A threshold that can mean something for the metric.
pub fn check_threshold(metric: Metric, threshold: f64) -> Result<f64, &'static str> {
    match metric {
        _ if !threshold.is_finite() => Err("must be a finite number"),
        Metric::SuccessRate if !(0.0..=1.0).contains(&threshold) => Err("must be from 0 to 1 for success_rate"),
        _ if threshold < 0.0 => Err("must not be negative"),
        _ => Ok(threshold),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(metric: Metric, comparison: Comparison, threshold: f64) -> MetricRule {
        MetricRule {
            id: MetricRuleId::new(),
            org_id: OrgId::new(),
            name: "r".into(),
            cluster_selector: ("env=prod".into(), "env=prod".parse().unwrap()),
            namespace: Some("shop".into()),
            workload: None,
            metric,
            comparison,
            threshold,
            window_ms: 300_000,
            for_ms: 0,
            severity: Severity::Warning,
            enabled: true,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn samples_give_each_metric() {
        let s = Sample { requests: 600, failures: 60, p50_ms: 2.0, p95_ms: 8.0, p99_ms: 20.0 };
        assert_eq!(s.value(Metric::SuccessRate, 300_000), Some(0.9));
        assert_eq!(s.value(Metric::RequestsPerSecond, 300_000), Some(2.0));
        assert_eq!(s.value(Metric::LatencyP99Ms, 300_000), Some(20.0));
        let idle = Sample::default();
        assert_eq!(idle.value(Metric::SuccessRate, 300_000), None, "no requests: no rate");
        assert_eq!(idle.value(Metric::LatencyP95Ms, 300_000), None);
        assert_eq!(idle.value(Metric::RequestsPerSecond, 300_000), Some(0.0));
    }

    #[test]
    fn a_rule_breaches_when_its_comparison_holds_on_what_it_covers() {
        let r = rule(Metric::SuccessRate, Comparison::Lt, 0.99);
        let s = Sample { requests: 100, failures: 10, ..Sample::default() };
        assert_eq!(r.breached(&s), Some(0.9));
        assert_eq!(r.breached(&Sample { requests: 100, failures: 0, ..s }), None);
        let prod = [("env".to_owned(), "prod".to_owned())].into();
        assert!(r.covers(&prod, "shop", "Deployment/web"));
        assert!(!r.covers(&prod, "billing", "Deployment/web"));
        assert!(!r.covers(&Default::default(), "shop", "Deployment/web"));
        assert_eq!(r.summary("shop/Deployment/web", 0.9), "success_rate of shop/Deployment/web is 0.9 (< 0.99 over 5 min)");
        assert!(rule(Metric::LatencyP99Ms, Comparison::Ge, 20.0).breached(&s).is_none(), "latency 0 with requests");
    }

    #[test]
    fn names_and_thresholds_are_checked() {
        assert!(parse_name("checkout_slow").is_ok());
        for bad in ["", "Checkout", "9lives", "a-b", "agent", &"a".repeat(64)] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
        assert!(check_threshold(Metric::SuccessRate, 1.5).is_err());
        assert!(check_threshold(Metric::LatencyP99Ms, -1.0).is_err());
        assert!(check_threshold(Metric::LatencyP99Ms, f64::NAN).is_err());
        assert_eq!(check_threshold(Metric::RequestsPerSecond, 1000.0), Ok(1000.0));
    }
}
