//! Prometheus metrics of the service, in one registry, served at `/metrics` in the text
//! exposition format.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::app::AppState;

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub db_pool: IntGaugeVec,
    pub logins_throttled: IntCounter,
    pub gateway_connected: IntGauge,
    pub gateway_reports: IntCounterVec,
    pub gateway_rejected: IntCounterVec,
    pub gateway_refused: IntCounterVec,
    pub gateway_ack_seconds: Histogram,
    pub ingest_batch_size: Histogram,
    /// Background jobs (`jobs`), by job name.
    pub job_runs: IntCounterVec,
    pub job_failures: IntCounterVec,
    pub job_duration: HistogramVec,
    pub job_lease_changes: IntCounterVec,
    /// Alert notification attempts by outcome (delivered, retry, failed).
    pub alert_deliveries: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("meshfleet".into()), None).expect("valid prefix");
        let http_requests =
            IntCounterVec::new(Opts::new("http_requests_total", "HTTP requests by route template, method and status"), &["method", "route", "status"])
                .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by route template")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["method", "route"],
        )
        .expect("valid metric");
        let db_pool = IntGaugeVec::new(Opts::new("db_pool_connections", "Database pool connections by state"), &["state"]).expect("valid metric");
        let logins_throttled = IntCounter::new("logins_throttled_total", "Login attempts refused by throttling").expect("valid metric");
        let gateway_connected = IntGauge::new("gateway_connected_agents", "Agent streams open on this replica").expect("valid metric");
        let gateway_reports =
            IntCounterVec::new(Opts::new("gateway_reports_total", "Agent reports by kind and outcome (stored or failed)"), &["kind", "outcome"])
                .expect("valid metric");
        let gateway_rejected = IntCounterVec::new(
            Opts::new("gateway_rejected_messages_total", "Agent messages refused, by reason (oversized, rate_limited, invalid field...)"),
            &["reason"],
        )
        .expect("valid metric");
        let gateway_refused = IntCounterVec::new(
            Opts::new(
                "gateway_refused_total",
                "What per-cluster limits refused of agents, by reason: messages (rate_limited), connections (reconnects), \
                 metric windows (series), events (events_per_minute), whole reports (bytes)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let gateway_ack_seconds = Histogram::with_opts(
            HistogramOpts::new("gateway_ack_seconds", "Time from receiving a report to acknowledging it (stored)")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
        )
        .expect("valid metric");
        let ingest_batch_size = Histogram::with_opts(
            HistogramOpts::new("ingest_batch_size", "Reports stored per transaction").buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0]),
        )
        .expect("valid metric");
        let job_runs = IntCounterVec::new(Opts::new("job_runs_total", "Runs of background jobs on this replica, by job"), &["job"]).expect("valid metric");
        let job_failures =
            IntCounterVec::new(Opts::new("job_failures_total", "Failed runs of background jobs on this replica, by job"), &["job"]).expect("valid metric");
        let job_duration = HistogramVec::new(
            HistogramOpts::new("job_run_duration_seconds", "How long runs of background jobs took on this replica, by job")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["job"],
        )
        .expect("valid metric");
        let job_lease_changes = IntCounterVec::new(
            Opts::new("job_lease_changes_total", "Leases of background jobs this replica acquired or lost (or released), by job"),
            &["job", "change"],
        )
        .expect("valid metric");
        let alert_deliveries = IntCounterVec::new(
            Opts::new(
                "alert_deliveries_total",
                "Attempts to deliver alert notifications, by outcome: delivered, retry (failed, will retry) or failed (for good)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for c in [
            Box::new(alert_deliveries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_requests.clone()),
            Box::new(http_duration.clone()),
            Box::new(db_pool.clone()),
            Box::new(logins_throttled.clone()),
            Box::new(gateway_connected.clone()),
            Box::new(gateway_reports.clone()),
            Box::new(gateway_rejected.clone()),
            Box::new(gateway_refused.clone()),
            Box::new(gateway_ack_seconds.clone()),
            Box::new(ingest_batch_size.clone()),
            Box::new(job_runs.clone()),
            Box::new(job_failures.clone()),
            Box::new(job_duration.clone()),
            Box::new(job_lease_changes.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            http_requests,
            http_duration,
            db_pool,
            logins_throttled,
            gateway_connected,
            gateway_reports,
            gateway_rejected,
            gateway_refused,
            gateway_ack_seconds,
            ingest_batch_size,
            job_runs,
            job_failures,
            job_duration,
            job_lease_changes,
            alert_deliveries,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding into memory cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware: counts and times every request by its route template (not the raw path, so
/// ids do not explode the label set).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    let m = &state.metrics;
    m.http_requests.with_label_values(&[&method, &route, response.status().as_str()]).inc();
    m.http_duration.with_label_values(&[&method, &route]).observe(started.elapsed().as_secs_f64());
    response
}
