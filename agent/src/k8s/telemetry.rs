//! The agent's own Prometheus metrics and its /metrics, /healthz, /readyz endpoints. Readiness
//! means every inventory watch has completed its first list (leader or not).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use super::inventory::Inventory;

#[derive(Clone)]
pub struct Telemetry {
    pub registry: Registry,
    pub leader: IntGauge,
    pub pods: IntGauge,
    watch_events: IntCounterVec,
    pub scrapes: IntCounterVec,
    pub reports: IntCounterVec,
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        Telemetry {
            leader: gauge("meshfleet_agent_leader", "1 while this replica holds the leader Lease"),
            pods: gauge("meshfleet_agent_meshed_pods", "Meshed pods in the inventory"),
            watch_events: counter("meshfleet_agent_watch_events_total", "Watch events by kind and result", &["kind", "result"]),
            scrapes: counter("meshfleet_agent_proxy_scrapes_total", "Proxy admin scrapes by result", &["result"]),
            reports: counter("meshfleet_agent_reports_total", "Reports queued for the service by kind", &["kind"]),
            registry,
        }
    }

    pub fn watch_event(&self, kind: &str, ok: bool) {
        self.watch_events.with_label_values(&[kind, if ok { "ok" } else { "error" }]).inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone)]
struct Http {
    telemetry: Telemetry,
    inventory: Arc<Inventory>,
}

/// Binds `addr` and serves until the task is aborted; returns the bound address.
pub async fn serve(addr: SocketAddr, telemetry: Telemetry, inventory: Arc<Inventory>) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|State(h): State<Http>| async move { if h.inventory.synced() { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "inventory not synced") } }))
        .route("/metrics", get(|State(h): State<Http>| async move { h.telemetry.render() }))
        .with_state(Http { telemetry, inventory });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "agent http server stopped");
        }
    });
    Ok((bound, task))
}
