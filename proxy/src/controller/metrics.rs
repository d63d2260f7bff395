//! The controller's Prometheus metrics, in one registry served on its admin port.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub issued: IntCounter,
    pub refused: IntCounterVec,
    pub issuer_expiry: IntGauge,
    pub reloads: IntCounterVec,
    pub bundle_anchors: IntGauge,
    pub injector_requests: IntCounterVec,
    pub destination_streams: IntGauge,
    pub destination_updates: IntCounter,
}

impl Metrics {
    /// `version`: what `controller_build_info` reports.
    pub fn new(version: &str) -> Self {
        let registry = Registry::new();
        let issued = IntCounter::new("identity_cert_issued_total", "Leaf certificates signed").unwrap();
        let refused = IntCounterVec::new(Opts::new("identity_cert_refused_total", "Certificate requests refused, by reason"), &["reason"]).unwrap();
        let issuer_expiry = IntGauge::new("identity_issuer_expiration_timestamp_seconds", "When the issuer certificate in use expires (Unix seconds)").unwrap();
        let reloads =
            IntCounterVec::new(Opts::new("identity_issuer_reload_total", "Issuer/trust-bundle reloads, by result and reason"), &["result", "reason"]).unwrap();
        let bundle_anchors = IntGauge::new("identity_trust_bundle_anchors", "Anchors in the served trust bundle").unwrap();
        let injector_requests =
            IntCounterVec::new(Opts::new("injector_requests_total", "Proxy injector admission requests, by result (injected, skipped, error)"), &["result"])
                .unwrap();
        for result in ["injected", "skipped", "error"] {
            injector_requests.with_label_values(&[result]);
        }
        let destination_streams = IntGauge::new("destination_resolve_streams", "Open Resolve streams").unwrap();
        let destination_updates = IntCounter::new("destination_updates_total", "Endpoint sets sent on Resolve streams").unwrap();
        let build = IntGaugeVec::new(Opts::new("controller_build_info", "Build information"), &["version"]).unwrap();
        build.with_label_values(&[version]).set(1);
        for c in [
            Box::new(issued.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refused.clone()),
            Box::new(issuer_expiry.clone()),
            Box::new(reloads.clone()),
            Box::new(bundle_anchors.clone()),
            Box::new(injector_requests.clone()),
            Box::new(destination_streams.clone()),
            Box::new(destination_updates.clone()),
            Box::new(build),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self { registry, issued, refused, issuer_expiry, reloads, bundle_anchors, injector_requests, destination_streams, destination_updates }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(crate::VERSION)
    }
}
