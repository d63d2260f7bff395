//! Logging and tracing set-up: human-readable lines by default, JSON lines with
//! `MESHFLEET_LOG_FORMAT=json`; colour only on a terminal, so log files and pipes carry no escape
//! codes. With `otlp_endpoint` set, spans also go to an OpenTelemetry collector over OTLP/gRPC,
//! batched on a background task: a slow or absent collector drops spans, never delays a request.

use std::io::IsTerminal;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// The target of the spans made for trace export (requests, store calls, job runs, ...). Only the
/// exporter's filter enables them: log lines keep their shape, and with no collector no layer
/// wants them, so they cost nothing on the hot paths. (The store's `#[instrument]` attributes
/// spell it as a literal.)
pub const TRACES: &str = "meshfleet_traces";

/// What `init` set up; dropping it flushes the spans still queued for the collector.
#[derive(Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("flushing traces to the OTLP collector failed: {e}");
            }
        }
    }
}

/// Sets up logging and, with `otlp_endpoint`, trace export. Must run inside the Tokio runtime
/// (the exporter's gRPC channel lives there). Keep the result until the process ends.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let filter = |extra: &str| EnvFilter::try_new(format!("{},{extra}", config.log)).unwrap_or_else(|_| EnvFilter::new(format!("info,{extra}")));
    let fmt = tracing_subscriber::fmt::layer().with_target(true).with_writer(std::io::stdout).with_ansi(colour(&std::io::stdout()));
    let fmt = match config.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let traces = config.otlp_endpoint.as_deref().map(provider).transpose()?;
    let otel = traces.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("meshfleet-server")).with_filter(filter(&format!("{TRACES}=info"))));
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(fmt.with_filter(filter(&format!("{TRACES}=off")))).with(otel).try_init();
    Ok(Telemetry { traces })
}

fn provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| anyhow::anyhow!("otlp_endpoint {endpoint:?}: {e}"))?;
    let resource = Resource::builder()
        .with_service_name("meshfleet-server")
        .with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION")), KeyValue::new("service.instance.id", replica_name())])
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// This replica's name: the pod's (Kubernetes sets `HOSTNAME` to it), else a fresh id.
fn replica_name() -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Makes the caller of `headers` (W3C `traceparent` / `tracestate`) the parent of `span`, so a
/// request's spans join the trace its client started.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    struct Headers<'a>(&'a axum::http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
}

/// Colour for a terminal, unless NO_COLOR (https://no-color.org) says otherwise.
fn colour(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
