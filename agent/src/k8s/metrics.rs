//! Golden metrics: scrape every ready meshed pod's proxy admin `/metrics` (bounded concurrency,
//! per-request timeout), turn cumulative counters into per-window deltas per pod (a counter
//! that went down means the proxy restarted), and aggregate per workload. Inbound traffic only,
//! so a request between two meshed pods is counted once, at the server. Requests are counted
//! when answered (`response_total`), not when received (`request_total`): a scrape during
//! in-flight requests would otherwise see requests whose failures land in a later window, which
//! the service refuses as more failures than requests. The same round reads each proxy's
//! admin `/identity` (what it trusts and presents) over the same connection and bound.

mod http;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use meshfleet_agent_protocol::v1;

use super::inventory::MeshedPod;
use super::proxy_identity::ProxyIdentity;

/// Cumulative inbound counters of one proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub requests: f64,
    pub failures: f64,
    /// `le` -> cumulative count, from `response_latency_ms_bucket`.
    pub buckets: BTreeMap<OrderedF64, f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderedF64(pub f64);
impl Eq for OrderedF64 {}
impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrderedF64 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

fn labels(s: &str) -> HashMap<&str, &str> {
    // Label values of these metrics never contain commas or quotes; a line that is not
    // well-formed simply yields fewer labels and is then ignored.
    s.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.trim(), v.trim().trim_matches('"'))).collect()
}

/// Parses the Prometheus text the proxy serves. Unknown or malformed lines are skipped.
pub fn parse(text: &str) -> Sample {
    let mut s = Sample::default();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some((h, v)) => (h.trim(), v.trim()),
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, l) = match head.split_once('{') {
            Some((n, rest)) => (n, labels(rest.trim_end_matches('}'))),
            None => (head, HashMap::new()),
        };
        if l.get("direction").is_some_and(|d| *d != "inbound") {
            continue;
        }
        match name {
            "response_total" => {
                s.requests += value;
                if l.get("classification") == Some(&"failure") {
                    s.failures += value;
                }
            }
            "response_latency_ms_bucket" => {
                let le = match l.get("le") {
                    Some(&"+Inf") => f64::INFINITY,
                    Some(v) => match v.parse() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                *s.buckets.entry(OrderedF64(le)).or_default() += value;
            }
            _ => {}
        }
    }
    s
}

/// `now - before`, or `now` when a counter went backwards (the proxy restarted).
pub fn delta(before: &Sample, now: &Sample) -> Sample {
    if now.requests < before.requests {
        return now.clone();
    }
    let buckets = now.buckets.iter().map(|(le, v)| (*le, (v - before.buckets.get(le).copied().unwrap_or(0.0)).max(0.0))).collect();
    Sample { requests: now.requests - before.requests, failures: (now.failures - before.failures).max(0.0), buckets }
}

/// Quantile from cumulative buckets, interpolating linearly inside the bucket (as Prometheus'
/// histogram_quantile does); the +Inf bucket answers with the highest finite bound.
pub fn quantile(buckets: &BTreeMap<OrderedF64, f64>, q: f64) -> f64 {
    let total = buckets.get(&OrderedF64(f64::INFINITY)).copied().or_else(|| buckets.values().last().copied()).unwrap_or(0.0);
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let (mut prev_le, mut prev_count) = (0.0, 0.0);
    for (le, count) in buckets {
        if *count >= rank {
            if le.0.is_infinite() {
                return prev_le;
            }
            let inside = count - prev_count;
            return if inside <= 0.0 { le.0 } else { prev_le + (le.0 - prev_le) * (rank - prev_count) / inside };
        }
        prev_le = le.0;
        prev_count = *count;
    }
    prev_le
}

fn add(into: &mut Sample, d: &Sample) {
    into.requests += d.requests;
    into.failures += d.failures;
    for (le, v) in &d.buckets {
        *into.buckets.entry(*le).or_default() += v;
    }
}

/// What one round found.
pub struct Round {
    /// Per-workload metrics over the window since the previous round.
    pub metrics: v1::Metrics,
    /// `/metrics` scrapes that succeeded and failed.
    pub ok: u64,
    pub failed: u64,
    /// Pod uid -> what its proxy's `/identity` said, for the proxies that answered well.
    pub identities: Vec<(String, ProxyIdentity)>,
}

/// Scrapes and remembers the last sample per pod (by uid).
pub struct Scraper {
    http: Arc<http::Pool>,
    timeout: Duration,
    concurrency: usize,
    last: HashMap<String, Sample>,
}

impl Scraper {
    pub fn new(timeout: Duration, concurrency: usize) -> Scraper {
        Scraper { http: Arc::default(), timeout, concurrency: concurrency.max(1), last: HashMap::new() }
    }

    /// One round over the ready pods: metrics (pods seen for the first time only set a
    /// baseline) and identities.
    pub async fn round(&mut self, pods: Vec<MeshedPod>, start_ms: i64, end_ms: i64) -> Round {
        let present: std::collections::HashSet<String> = pods.iter().map(|p| p.uid.clone()).collect();
        let targets: Vec<MeshedPod> = pods.into_iter().filter(|p| p.pod.ready && p.ip.is_some()).collect();
        let addrs: std::collections::HashSet<SocketAddr> = targets.iter().filter_map(admin_addr).collect();
        let (http, timeout) = (&self.http, self.timeout);
        let results: Vec<(MeshedPod, Option<Sample>, Option<ProxyIdentity>)> = futures::stream::iter(targets)
            .map(|p| async move {
                let Some(addr) = admin_addr(&p) else { return (p, None, None) };
                let metrics = read(http, addr, "/metrics", timeout).await;
                // A proxy that did not answer is not asked again within the round: a second
                // timeout would hold one of the round's slots twice as long.
                let identity = match &metrics {
                    Err(http::FetchError::Timeout | http::FetchError::Io(_)) => None,
                    _ => read(http, addr, "/identity", timeout)
                        .await
                        .ok()
                        .and_then(|t| ProxyIdentity::parse(&t).map_err(|e| tracing::debug!(%addr, error = %e, "ignoring a malformed /identity")).ok()),
                };
                (p, metrics.ok().map(|t| parse(&t)), identity)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        self.http.retain(|a| addrs.contains(a));
        let (mut ok, mut failed) = (0, 0);
        let mut per_workload: BTreeMap<(String, String), Sample> = BTreeMap::new();
        let mut identities = Vec::new();
        for (p, sample, identity) in results {
            if let Some(id) = identity {
                identities.push((p.uid.clone(), id));
            }
            let Some(sample) = sample else {
                // The baseline stays: the next successful scrape covers this window too, so a
                // slow or failed scrape loses no requests.
                failed += 1;
                continue;
            };
            ok += 1;
            if let Some(before) = self.last.get(&p.uid) {
                add(per_workload.entry((p.pod.namespace.clone(), p.pod.workload.clone())).or_default(), &delta(before, &sample));
            }
            self.last.insert(p.uid.clone(), sample);
        }
        self.last.retain(|uid, _| present.contains(uid));
        let workloads = per_workload
            .into_iter()
            .map(|((namespace, workload), s)| v1::WorkloadMetrics {
                namespace,
                workload,
                requests: s.requests.round() as u64,
                failures: s.failures.round() as u64,
                latency_p50_ms: quantile(&s.buckets, 0.50),
                latency_p95_ms: quantile(&s.buckets, 0.95),
                latency_p99_ms: quantile(&s.buckets, 0.99),
            })
            .collect();
        Round { metrics: v1::Metrics { window_start_unix_ms: start_ms, window_end_unix_ms: end_ms, workloads }, ok, failed, identities }
    }
}

/// `GET path` on a proxy's admin address; failures are logged here, once.
async fn read(http: &http::Pool, addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, http::FetchError> {
    http.get(addr, path, timeout).await.inspect_err(|e| tracing::debug!(%addr, path, error = %e, "proxy admin read failed"))
}

fn admin_addr(p: &MeshedPod) -> Option<SocketAddr> {
    Some(SocketAddr::new(p.ip.as_deref()?.parse::<IpAddr>().ok()?, p.admin_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP request_total HTTP requests received
request_total{direction="inbound",authority="web",tls="true"} 103
request_total{direction="outbound",authority="db",tls="true"} 999
response_total{direction="outbound",status_code="200",classification="success"} 999
response_total{direction="inbound",status_code="200",classification="success"} 90
response_total{direction="inbound",status_code="500",classification="failure"} 10
response_latency_ms_bucket{direction="inbound",status_code="200",le="1"} 0
response_latency_ms_bucket{direction="inbound",status_code="200",le="10"} 50
response_latency_ms_bucket{direction="inbound",status_code="200",le="100"} 100
response_latency_ms_bucket{direction="inbound",status_code="200",le="+Inf"} 100
garbage line without value
"#;

    #[test]
    fn inbound_counters_and_quantiles() {
        let s = parse(TEXT);
        assert_eq!((s.requests, s.failures), (100.0, 10.0), "answered inbound requests, not the 3 in flight");
        assert_eq!(quantile(&s.buckets, 0.5), 10.0);
        assert!((quantile(&s.buckets, 0.99) - 98.2).abs() < 0.01);
        let d = delta(&s, &s);
        assert_eq!((d.requests, quantile(&d.buckets, 0.5)), (0.0, 0.0));
        let reset = delta(&s, &Sample { requests: 5.0, ..Default::default() });
        assert_eq!(reset.requests, 5.0, "a restarted proxy counts from zero");
    }

    #[test]
    fn a_scrape_between_request_and_response_never_counts_more_failures_than_requests() {
        let in_flight = parse("request_total{direction=\"inbound\"} 30\n");
        let answered = parse(concat!(
            "request_total{direction=\"inbound\"} 30\n",
            "response_total{direction=\"inbound\",classification=\"success\"} 20\n",
            "response_total{direction=\"inbound\",classification=\"failure\"} 10\n",
        ));
        let (first, second) = (delta(&Sample::default(), &in_flight), delta(&in_flight, &answered));
        assert_eq!((first.requests, first.failures), (0.0, 0.0));
        assert_eq!((second.requests, second.failures), (30.0, 10.0));
    }

    /// A proxy admin endpoint serving `TEXT` and this `/identity` answer (status, body).
    async fn proxy(name: &str, identity: (u16, &'static str)) -> MeshedPod {
        use axum::http::StatusCode;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(|| async { TEXT }))
            .route("/identity", axum::routing::get(move || async move { (StatusCode::from_u16(identity.0).unwrap(), identity.1) }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        MeshedPod {
            pod: v1::Pod { namespace: "shop".into(), name: name.into(), workload: "Deployment/web".into(), ready: true, ..Default::default() },
            uid: format!("uid-{name}"),
            ip: Some("127.0.0.1".into()),
            admin_port: port,
            proxy_restarts: 0,
        }
    }

    #[tokio::test]
    async fn a_round_reads_identities_and_ignores_bad_ones_without_losing_metrics() {
        const GOOD: &str = r#"{"bundle_fingerprints":["00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"],"leaf":null}"#;
        let pods = vec![proxy("good", (200, GOOD)).await, proxy("garbage", (200, "{\"bundle_fingerprints\": [1")).await, proxy("old", (404, "")).await];
        let mut scraper = Scraper::new(Duration::from_secs(5), 2);
        let round = scraper.round(pods, 0, 1).await;
        assert_eq!((round.ok, round.failed), (3, 0), "every proxy's metrics were read");
        let uids: Vec<&str> = round.identities.iter().map(|(uid, _)| uid.as_str()).collect();
        assert_eq!(uids, ["uid-good"]);
        assert_eq!(round.identities[0].1.bundle_fingerprints.len(), 1);
    }
}
