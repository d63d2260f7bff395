//! OpenTelemetry trace export, against a real OTLP/gRPC receiver built from the
//! `opentelemetry-proto` service definitions: the server binary, given `otlp_endpoint`, sends a
//! request's spans in the trace its client started (`traceparent`), with the store's spans as
//! the request's children and the resource naming the service, its version and the replica; jobs
//! send spans of their own; a collector that does not answer never slows or breaks a request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshfleet_test_support::process::free_port;
use meshfleet_test_support::server::ServerProcess;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::process::server;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// A span as exported, with its resource's attributes.
type Exported = (Vec<KeyValue>, Span);

/// Everything the server exported.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Exported>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(&self, request: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
            for scope in resource_spans.scope_spans {
                got.extend(scope.spans.into_iter().map(|s| (resource.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    async fn start() -> (Collector, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        (collector, url)
    }

    /// The spans exported so far that `pick` accepts, once there is one (within 15 s).
    async fn wait_for(&self, what: &str, pick: impl Fn(&Span) -> bool) -> Vec<Exported> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found: Vec<_> = self.0.lock().unwrap().iter().filter(|(_, s)| pick(s)).cloned().collect();
            if !found.is_empty() {
                return found;
            }
            let names: Vec<String> = self.0.lock().unwrap().iter().map(|(_, s)| s.name.clone()).collect();
            assert!(Instant::now() < deadline, "no span {what} within 15 s; got {names:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The server binary with trace export to `endpoint`, batched every 100 ms.
fn start_server(dir: &std::path::Path, endpoint: &str) -> ServerProcess {
    let mut cmd = server().command(dir);
    cmd.env("MESHFLEET_LISTEN", "127.0.0.1:0")
        .env("MESHFLEET_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("MESHFLEET_OTLP_ENDPOINT", endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("HOSTNAME", "replica-a");
    ServerProcess::start(cmd)
}

async fn owner_token(http: &reqwest::Client, base: &str) -> String {
    let creds = serde_json::json!({"email": "ops@example.com", "password": "a long passphrase", "organization": "Acme"});
    let signup = http.post(format!("{base}/api/v1/signup")).json(&creds).send().await.unwrap();
    assert!(signup.status().is_success(), "{}", signup.text().await.unwrap());
    let creds = serde_json::json!({"email": "ops@example.com", "password": "a long passphrase"});
    let login: serde_json::Value = http.post(format!("{base}/api/v1/login")).json(&creds).send().await.unwrap().json().await.unwrap();
    login["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_spans_reach_the_collector_in_the_callers_trace_with_the_stores_as_children() {
    let (collector, endpoint) = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &endpoint);
    let base = server.url();
    let http = reqwest::Client::new();
    let token = owner_token(&http, &base).await;
    let resp =
        http.get(format!("{base}/api/v1/clusters")).bearer_auth(&token).header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01")).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    let trace_id = hex::decode(TRACE_ID).unwrap();
    let requests = collector.wait_for("for GET /api/v1/clusters", |s| s.trace_id == trace_id && s.name == "GET /api/v1/clusters").await;
    let (resource, request) = &requests[0];
    assert_eq!(hex::encode(&request.parent_span_id), CALLER_SPAN, "the request span's parent is the caller's span");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(text(&request.attributes, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(text(&request.attributes, "http.route").as_deref(), Some("/api/v1/clusters"));
    assert_eq!(attr(&request.attributes, "http.response.status_code"), Some(&any_value::Value::IntValue(200)));
    assert_eq!(text(resource, "service.name").as_deref(), Some("meshfleet-server"));
    assert_eq!(text(resource, "service.version").as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(text(resource, "service.instance.id").as_deref(), Some("replica-a"));

    let stores = collector.wait_for("of the store under the request", |s| s.parent_span_id == request.span_id && s.name.starts_with("store.")).await;
    assert!(stores.iter().all(|(_, s)| s.trace_id == trace_id), "the store's spans are in the caller's trace");

    // A request without a caller's trace starts its own; jobs' runs are roots of their own.
    let jobs = collector.wait_for("of a job run", |s| text(&s.attributes, "job.name").is_some()).await;
    assert!(jobs.iter().all(|(_, s)| s.parent_span_id.is_empty() && s.trace_id != trace_id), "a job run is no request's child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_does_not_answer_never_slows_or_breaks_a_request() {
    // A port that accepts connections and never answers: the worst collector.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &format!("http://{}", silent.local_addr().unwrap()));
    // And one where nothing listens at all.
    let dir2 = tempfile::tempdir().unwrap();
    let closed = start_server(dir2.path(), &format!("http://127.0.0.1:{}", free_port()));
    let http = reqwest::Client::new();
    for s in [&server, &closed] {
        let base = s.url();
        let token = owner_token(&http, &base).await;
        let mut slowest = Duration::ZERO;
        for _ in 0..100 {
            let started = Instant::now();
            let resp = http.get(format!("{base}/api/v1/clusters")).bearer_auth(&token).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            slowest = slowest.max(started.elapsed());
        }
        assert!(slowest < Duration::from_millis(500), "the slowest of 100 requests took {slowest:?}");
    }
}
