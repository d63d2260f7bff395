//! The agent's own Prometheus metrics and its /metrics, /healthz, /readyz endpoints (on
//! `MESHFLEET_AGENT_LISTEN`). /healthz answers 200 while the process serves. /readyz answers 200
//! once every inventory watch has completed its first list, on the leader and on standbys alike,
//! and 503 before: readiness deliberately ignores leadership and the gateway connection, so a
//! service outage or a standby role never makes pods unready (which would stall the agent's own
//! rollouts); `meshfleet_agent_leader` and `meshfleet_agent_gateway_connected` say those instead.

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
    pub connected: IntGauge,
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
            connected: gauge("meshfleet_agent_gateway_connected", "1 while this replica's stream to the gateway is open"),
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

/// Whether the gateway stream is open right now (read when /metrics is scraped).
pub type Connected = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct Http {
    telemetry: Telemetry,
    inventory: Arc<Inventory>,
    connected: Connected,
}

/// Binds `addr` and serves until the task is aborted; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    telemetry: Telemetry,
    inventory: Arc<Inventory>,
    connected: Connected,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Http>| async move {
                if h.inventory.synced() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "inventory not synced")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Http>| async move {
                h.telemetry.connected.set(i64::from((h.connected)()));
                h.telemetry.pods.set(h.inventory.lock().pods.len() as i64);
                h.telemetry.render()
            }),
        )
        .with_state(Http { telemetry, inventory, connected });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "agent http server stopped");
        }
    });
    Ok((bound, task))
}
