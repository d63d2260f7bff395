//! Workload objectives: the success rate and p99 latency every workload should keep, as an
//! organization sets them (defaults, overridden for the clusters a label selector picks). The
//! built-in rules `workload_success_rate` and `workload_latency` alert on workloads that miss
//! theirs over the last `WINDOW_MS` of complete minutes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::labels::{Labels, Selector};
use super::metric_rules::{Metric, Sample};

/// The window objectives are judged over.
pub const WINDOW_MS: i64 = 300_000;
/// What an organization starts with: 99% success, no latency objective.
pub const DEFAULT_SUCCESS_RATE: f64 = 0.99;
pub const MAX_OVERRIDES: usize = 50;

/// Objectives for a workload; an absent one is not checked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Targets {
    /// The least success rate, 0 to 1.
    pub success_rate: Option<f64>,
    /// The most p99 latency, in milliseconds.
    pub latency_p99_ms: Option<f64>,
}

/// Targets for the clusters a label selector picks; what it leaves out is the default's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WorkloadObjectivesOverride)]
pub struct Override {
    #[schema(schema_with = super::schema::selector)]
    pub cluster_selector: String,
    /// The least success rate, 0 to 1.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub success_rate: Option<f64>,
    /// The most p99 latency, in milliseconds.
    #[schema(exclusive_minimum = 0.0)]
    pub latency_p99_ms: Option<f64>,
}

/// An organization's workload objectives: defaults, and overrides tried in order (the first
/// whose selector matches the cluster wins). Absent: not checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WorkloadObjectives)]
pub struct Objectives {
    /// The least success rate, 0 to 1.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub success_rate: Option<f64>,
    /// The most p99 latency, in milliseconds.
    #[schema(exclusive_minimum = 0.0)]
    pub latency_p99_ms: Option<f64>,
    #[serde(default)]
    #[schema(max_items = 50)]
    pub overrides: Vec<Override>,
}

impl Default for Objectives {
    fn default() -> Self {
        Objectives { success_rate: Some(DEFAULT_SUCCESS_RATE), latency_p99_ms: None, overrides: vec![] }
    }
}

/// Checks objectives; each problem as (field path, message).
pub fn check(o: &Objectives) -> Result<Vec<Selector>, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut targets = |t: &Targets, at: &str| {
        if t.success_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            errors.push((format!("{at}success_rate"), "must be from 0 to 1".to_owned()));
        }
        if t.latency_p99_ms.is_some_and(|l| !l.is_finite() || l <= 0.0) {
            errors.push((format!("{at}latency_p99_ms"), "must be a positive number of milliseconds".to_owned()));
        }
    };
    targets(&o.defaults(), "");
    for (i, ov) in o.overrides.iter().enumerate() {
        targets(&Targets { success_rate: ov.success_rate, latency_p99_ms: ov.latency_p99_ms }, &format!("overrides[{i}]."));
    }
    if o.overrides.len() > MAX_OVERRIDES {
        errors.push(("overrides".to_owned(), format!("must hold at most {MAX_OVERRIDES} overrides")));
    }
    let mut selectors = Vec::new();
    for (i, ov) in o.overrides.iter().enumerate() {
        match ov.cluster_selector.parse::<Selector>() {
            Ok(s) => selectors.push(s),
            Err(e) => errors.push((format!("overrides[{i}].cluster_selector"), e.message)),
        }
    }
    if errors.is_empty() {
        Ok(selectors)
    } else {
        Err(errors)
    }
}

impl Objectives {
    pub fn defaults(&self) -> Targets {
        Targets { success_rate: self.success_rate, latency_p99_ms: self.latency_p99_ms }
    }

    /// The targets for a cluster with these labels (`selectors` are the overrides', parsed).
    pub fn for_cluster(&self, selectors: &[Selector], labels: &Labels) -> Targets {
        match self.overrides.iter().zip(selectors).find(|(_, s)| s.matches(labels)) {
            Some((ov, _)) => Targets { success_rate: ov.success_rate.or(self.success_rate), latency_p99_ms: ov.latency_p99_ms.or(self.latency_p99_ms) },
            None => self.defaults(),
        }
    }
}

/// A workload missing one of its targets: the rule, the measured value and the target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Miss {
    pub rule: &'static str,
    pub value: f64,
    pub target: f64,
}

impl Miss {
    pub fn summary(&self, object: &str) -> String {
        match self.rule {
            "workload_success_rate" => format!("{object} answers {:.2}% of requests, under its objective of {:.2}%", self.value * 100.0, self.target * 100.0),
            _ => format!("{object} has a p99 latency of {:.0} ms, over its objective of {:.0} ms", self.value, self.target),
        }
    }
}

/// The targets a workload's sample misses.
pub fn misses(targets: Targets, sample: &Sample) -> Vec<Miss> {
    let mut misses = Vec::new();
    if let (Some(target), Some(value)) = (targets.success_rate, sample.value(Metric::SuccessRate, WINDOW_MS)) {
        if value < target {
            misses.push(Miss { rule: "workload_success_rate", value, target });
        }
    }
    if let (Some(target), Some(value)) = (targets.latency_p99_ms, sample.value(Metric::LatencyP99Ms, WINDOW_MS)) {
        if value > target {
            misses.push(Miss { rule: "workload_latency", value, target });
        }
    }
    misses
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_first_matching_override_wins_and_inherits_what_it_leaves_out() {
        let o = Objectives {
            success_rate: Some(0.99),
            latency_p99_ms: Some(500.0),
            overrides: vec![
                Override { cluster_selector: "env=dev".into(), success_rate: Some(0.9), latency_p99_ms: None },
                Override { cluster_selector: "env".into(), success_rate: Some(0.95), latency_p99_ms: Some(200.0) },
            ],
        };
        let selectors = check(&o).unwrap();
        assert_eq!(o.for_cluster(&selectors, &labels(&[("env", "dev")])), Targets { success_rate: Some(0.9), latency_p99_ms: Some(500.0) });
        assert_eq!(o.for_cluster(&selectors, &labels(&[("env", "prod")])), Targets { success_rate: Some(0.95), latency_p99_ms: Some(200.0) });
        assert_eq!(o.for_cluster(&selectors, &labels(&[])), o.defaults());
    }

    #[test]
    fn misses_are_judged_only_with_traffic() {
        let t = Targets { success_rate: Some(0.99), latency_p99_ms: Some(10.0) };
        let s = Sample { requests: 100, failures: 10, p50_ms: 1.0, p95_ms: 5.0, p99_ms: 20.0 };
        let rules: Vec<&str> = misses(t, &s).iter().map(|m| m.rule).collect();
        assert_eq!(rules, ["workload_success_rate", "workload_latency"]);
        assert!(misses(t, &Sample::default()).is_empty());
        assert_eq!(misses(t, &s)[0].summary("shop/Deployment/web"), "shop/Deployment/web answers 90.00% of requests, under its objective of 99.00%");
    }

    #[test]
    fn objectives_are_checked() {
        let bad = Objectives {
            success_rate: Some(1.5),
            latency_p99_ms: Some(0.0),
            overrides: vec![Override { cluster_selector: "env in (".into(), success_rate: None, latency_p99_ms: None }],
        };
        let fields: Vec<String> = check(&bad).unwrap_err().into_iter().map(|e| e.0).collect();
        assert_eq!(fields, ["success_rate", "latency_p99_ms", "overrides[0].cluster_selector"]);
    }
}
