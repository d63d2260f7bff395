//! Golden metrics with Linkerd's names and labels, so existing Linkerd dashboards chart this
//! proxy: request/response counters, latency histogram, TCP counters, authorization counters,
//! identity expiry and refreshes, and build info. One registry, served on the admin port.

use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Linkerd's `response_latency_ms` buckets.
const LATENCY_BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0,
    30000.0, 40000.0, 50000.0,
];

const HTTP_LABELS: &[&str] = &["direction", "authority", "target_addr", "tls", "client_id", "server_id"];
const TCP_LABELS: &[&str] = &["direction", "peer", "target_addr", "tls", "client_id", "server_id"];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub request_total: IntCounterVec,
    pub response_total: IntCounterVec,
    pub response_latency_ms: HistogramVec,
    pub tcp_open_total: IntCounterVec,
    pub tcp_close_total: IntCounterVec,
    pub tcp_open_connections: IntGaugeVec,
    pub tcp_read_bytes_total: IntCounterVec,
    pub tcp_write_bytes_total: IntCounterVec,
    pub authz_allow: IntCounterVec,
    pub authz_deny: IntCounterVec,
    pub cert_expiry: Gauge,
    pub cert_refresh: IntCounter,
    pub trust_bundle_updates: IntCounter,
}

fn with(labels: &[&str], extra: &[&'static str]) -> Vec<String> {
    labels.iter().chain(extra).map(|s| s.to_string()).collect()
}

impl Metrics {
    pub fn new(version: &str) -> Self {
        let r = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        }
        let vec = |name: &str, help: &str, labels: &[String]| {
            let l: Vec<&str> = labels.iter().map(String::as_str).collect();
            reg(&r, IntCounterVec::new(Opts::new(name, help), &l).unwrap())
        };
        let tcp = with(TCP_LABELS, &[]);
        let m = Self {
            request_total: vec("request_total", "HTTP requests received", &with(HTTP_LABELS, &[])),
            response_total: vec("response_total", "HTTP responses sent, by status and classification", &with(HTTP_LABELS, &["status_code", "classification"])),
            response_latency_ms: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("response_latency_ms", "Time until response headers, in milliseconds").buckets(LATENCY_BUCKETS_MS.to_vec()),
                    &with(HTTP_LABELS, &["status_code"]).iter().map(String::as_str).collect::<Vec<_>>(),
                )
                .unwrap(),
            ),
            tcp_open_total: vec("tcp_open_total", "TCP connections opened", &tcp),
            tcp_close_total: vec("tcp_close_total", "TCP connections closed", &tcp),
            tcp_open_connections: reg(&r, IntGaugeVec::new(Opts::new("tcp_open_connections", "TCP connections open now"), TCP_LABELS).unwrap()),
            tcp_read_bytes_total: vec("tcp_read_bytes_total", "Bytes read from peers", &tcp),
            tcp_write_bytes_total: vec("tcp_write_bytes_total", "Bytes written to peers", &tcp),
            authz_allow: vec("inbound_tcp_authz_allow_total", "Inbound connections authorized", &with(&["target_addr", "client_id"], &[])),
            authz_deny: vec("inbound_tcp_authz_deny_total", "Inbound connections refused, by reason", &with(&["target_addr", "client_id", "reason"], &[])),
            cert_expiry: reg(&r, Gauge::new("identity_cert_expiration_timestamp_seconds", "When the proxy's certificate expires").unwrap()),
            cert_refresh: reg(&r, IntCounter::new("identity_cert_refresh_count", "Certificates obtained from the controller").unwrap()),
            trust_bundle_updates: reg(&r, IntCounter::new("identity_trust_bundle_updates_total", "Trust bundles received from the controller").unwrap()),
            registry: r.clone(),
        };
        let build = reg(&r, IntGaugeVec::new(Opts::new("proxy_build_info", "Build information"), &["version"]).unwrap());
        build.with_label_values(&[version]).set(1);
        m
    }

    /// Resolves one connection's TCP metrics; the returned guard closes them on drop.
    pub fn tcp(&self, l: &ConnLabels, peer: &'static str, tls: bool) -> TcpMetrics {
        let vals = [l.direction, peer, &l.target_addr, tls_label(tls), &l.client_id, &l.server_id];
        self.tcp_open_total.with_label_values(&vals).inc();
        let open = self.tcp_open_connections.with_label_values(&vals);
        open.inc();
        TcpMetrics {
            read: self.tcp_read_bytes_total.with_label_values(&vals),
            write: self.tcp_write_bytes_total.with_label_values(&vals),
            close: self.tcp_close_total.with_label_values(&vals),
            open,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(crate::VERSION)
    }
}

pub fn tls_label(tls: bool) -> &'static str {
    if tls {
        "true"
    } else {
        "no_identity"
    }
}

/// The labels a connection carries for its whole life.
#[derive(Clone, Debug)]
pub struct ConnLabels {
    pub direction: &'static str,
    pub target_addr: String,
    pub client_id: String,
    pub server_id: String,
}

pub struct TcpMetrics {
    pub read: IntCounter,
    pub write: IntCounter,
    close: IntCounter,
    open: IntGauge,
}

impl Drop for TcpMetrics {
    fn drop(&mut self) {
        self.open.dec();
        self.close.inc();
    }
}
