//! The agent gateway over real gRPC + mTLS: registration, the stream, acknowledgements,
//! commands, revocation, and refusal of bad input. Agents here are raw protocol clients, so
//! the tests control every byte the agent sends.

use std::time::Duration;

use meshfleet_agent_protocol::frozen::v1 as old;
use meshfleet_agent_protocol::v1::agent_gateway_client::AgentGatewayClient;
use meshfleet_agent_protocol::v1::{self, agent_message::Body, server_message, AgentMessage, RegisterRequest, ServerMessage};
use meshfleet_pki::mint::{self, CaMaterial, CaProfile, LeafProfile, Usage};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use crate::helpers::{Engine, Login, TestApp, TestDb};
use crate::on_both_engines;

/// A registered agent's key and certificate chain.
pub struct AgentId {
    pub key_pem: String,
    pub chain_pem: String,
}

pub fn csr() -> (meshfleet_pki::KeyPair, Vec<u8>) {
    let key = mint::new_key().unwrap();
    let der = meshfleet_pki::csr::new_csr(&key).unwrap();
    (key, der)
}

pub async fn channel(gateway: std::net::SocketAddr, ca_pem: &str, id: Option<&AgentId>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("127.0.0.1");
    if let Some(id) = id {
        tls = tls.identity(Identity::from_pem(&id.chain_pem, &id.key_pem));
    }
    Endpoint::from_shared(format!("https://{gateway}")).unwrap().tls_config(tls)?.connect_timeout(Duration::from_secs(5)).connect().await
}

pub async fn client(app: &TestApp, id: Option<&AgentId>) -> AgentGatewayClient<Channel> {
    let ch = channel(app.state_gateway(), &app.state.pki.gateway_ca_pem, id).await.expect("TLS connection to the gateway");
    AgentGatewayClient::new(ch)
}

pub async fn register(app: &TestApp, token: &str) -> Result<AgentId, tonic::Status> {
    let (key, csr_der) = csr();
    let resp = client(app, None).await.register(RegisterRequest { bootstrap_token: token.into(), csr_der, agent_version: "0.1.0-test".into() }).await?;
    let cert = resp.into_inner().certificate.unwrap();
    Ok(AgentId { key_pem: key.serialize_pem(), chain_pem: cert.chain_pem })
}

/// An open Connect stream.
pub struct Stream {
    pub tx: mpsc::Sender<AgentMessage>,
    pub rx: tonic::Streaming<ServerMessage>,
    seq: u64,
}

impl Stream {
    pub async fn open(app: &TestApp, id: &AgentId) -> Result<Stream, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(msg(0, Body::Hello(v1::Hello { agent_version: "0.1.0-test".into(), kubernetes_version: "v1.33.1".into(), ..Default::default() })))
            .await
            .unwrap();
        let rx = client(app, Some(id)).await.connect(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Stream { tx, rx, seq: 0 })
    }

    /// Sends a report with the next seq; returns the seq.
    pub async fn report(&mut self, body: Body) -> u64 {
        self.seq += 1;
        self.tx.send(msg(self.seq, body)).await.unwrap();
        self.seq
    }

    /// The next message from the server, or the status that ended the stream.
    pub async fn next(&mut self) -> Result<server_message::Body, tonic::Status> {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await.expect("the server answers within 10 s")? {
            Some(m) => Ok(m.body.unwrap()),
            None => Err(tonic::Status::cancelled("stream closed")),
        }
    }

    /// Reads until the server acknowledges `seq`; returns commands seen meanwhile.
    pub async fn acked(&mut self, seq: u64) -> Vec<v1::Command> {
        let mut commands = Vec::new();
        loop {
            match self.next().await.unwrap() {
                server_message::Body::Ack(a) if a.seq >= seq => return commands,
                server_message::Body::Ack(_) | server_message::Body::Refused(_) => {}
                server_message::Body::Command(c) => commands.push(c),
            }
        }
    }

    pub async fn command(&mut self) -> v1::Command {
        loop {
            if let server_message::Body::Command(c) = self.next().await.unwrap() {
                return c;
            }
        }
    }

    /// Waits for the server to end the stream; returns its status.
    pub async fn ended(&mut self) -> tonic::Status {
        loop {
            if let Err(status) = self.next().await {
                return status;
            }
        }
    }
}

pub fn msg(seq: u64, body: Body) -> AgentMessage {
    AgentMessage { seq, body: Some(body) }
}

pub fn pod(ns: &str, name: &str, workload: &str, version: &str) -> v1::Pod {
    v1::Pod {
        namespace: ns.into(),
        name: name.into(),
        workload: workload.into(),
        proxy_version: version.into(),
        ready: true,
        restarts: 0,
        phase: "Running".into(),
        ..Default::default()
    }
}

pub fn snapshot(pods: Vec<v1::Pod>) -> Body {
    Body::Snapshot(v1::Snapshot {
        inventory: Some(v1::Inventory {
            kubernetes_version: "v1.33.1".into(),
            node_count: 3,
            control_plane: Some(v1::ControlPlane { version: "0.1.0".into(), replicas: 1, ready_replicas: 1, components: vec![] }),
            namespaces: vec![v1::MeshedNamespace { name: "shop".into(), ..Default::default() }],
            pods,
            certificates: vec![v1::CertificateInfo {
                role: "issuer".into(),
                subject: "CN=issuer".into(),
                not_after_unix_ms: 4_000_000_000_000,
                ..Default::default()
            }],
        }),
    })
}

pub fn metrics(start_ms: i64, requests: u64, failures: u64) -> Body {
    Body::Metrics(v1::Metrics {
        window_start_unix_ms: start_ms,
        window_end_unix_ms: start_ms + 10_000,
        workloads: vec![v1::WorkloadMetrics {
            namespace: "shop".into(),
            workload: "Deployment/web".into(),
            requests,
            failures,
            latency_p50_ms: 2.0,
            latency_p95_ms: 8.0,
            latency_p99_ms: 20.0,
        }],
    })
}

/// A cluster with a registered agent.
pub async fn registered(app: &TestApp, owner: &Login, name: &str) -> (String, AgentId) {
    let created = app.create_cluster(owner, name, json!({})).await;
    let id = register(app, created["bootstrap_token"]["token"].as_str().unwrap()).await.unwrap();
    (created["cluster"]["id"].as_str().unwrap().to_owned(), id)
}

on_both_engines!(
    register_connect_report_and_see_it_in_the_api,
    bootstrap_tokens_and_csrs_are_checked,
    commands_reach_the_agent_and_results_come_back,
    an_agent_older_than_the_server_gets_kind_and_params,
    deleted_or_revoked_clusters_lose_their_stream_at_once,
    the_recheck_ends_streams_whose_certificate_became_invalid_unnoticed,
    agents_connecting_together_are_each_judged_by_their_own_certificate,
    stopping_the_server_ends_agent_streams_at_once,
    a_stopping_server_leaves_its_agents_shown_connected,
);

/// The cluster "prod", its agent's stream open with a snapshot stored and acknowledged.
async fn reporting(app: &TestApp, owner: &Login) -> (String, Stream) {
    let (cluster, id) = registered(app, owner, "prod").await;
    let mut stream = Stream::open(app, &id).await.unwrap();
    let seq = stream.report(snapshot(vec![pod("shop", "web-1", "Deployment/web", "0.1.0")])).await;
    stream.acked(seq).await;
    (cluster, stream)
}

/// A replica that stops (a rolling restart) tells its agents so and returns, rather than
/// waiting for streams that never end by themselves.
async fn stopping_the_server_ends_agent_streams_at_once(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ops@example.com").await;
    let (_, mut stream) = reporting(&app, &owner).await;
    let stopping = tokio::spawn(app.stop());
    let status = stream.ended().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("the server stops within 10 s with an agent connected").unwrap();
}

/// A replica stopping is not the agent going away: the agent reconnects elsewhere within
/// moments, so the cluster stays connected (unless it stays unheard past `stale_after_secs`)
/// and no "agent disconnected" alert fires on a rolling restart.
async fn a_stopping_server_leaves_its_agents_shown_connected(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ops@example.com").await;
    let (cluster, mut stream) = reporting(&app, &owner).await;
    let app = app.restart().await;
    assert_eq!(stream.ended().await.code(), Code::Unavailable);
    // Room for the stream's bookkeeping, which runs after the stream ends.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let owner = app.login("ops@example.com").await;
    let (_, c) = app.get(&format!("/api/v1/clusters/{cluster}"), &owner.access).await;
    assert_eq!(c["status"], "connected", "{c}");
}

async fn register_connect_report_and_see_it_in_the_api(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = registered(&app, &owner, "prod-eu-1").await;
    assert!(id.chain_pem.matches("BEGIN CERTIFICATE").count() == 2, "leaf and CA");

    let mut stream = Stream::open(&app, &id).await.unwrap();
    stream.report(snapshot(vec![pod("shop", "web-1", "Deployment/web", "0.1.0"), pod("shop", "web-2", "Deployment/web", "0.0.9")])).await;
    let minute = (app.state.clock.now_ms() / 60_000) * 60_000;
    stream.report(metrics(minute, 100, 2)).await;
    stream.report(metrics(minute + 10_000, 50, 0)).await;
    // A resent window (same window, new seq: its ack was lost) is not counted twice.
    stream.report(metrics(minute + 10_000, 50, 0)).await;
    let warn = v1::Event {
        id: "ev-1".into(),
        at_unix_ms: minute,
        r#type: "Warning".into(),
        namespace: "shop".into(),
        object: "Pod/web-1".into(),
        reason: "BackOff".into(),
        message: "restarting".into(),
    };
    stream.report(Body::Events(v1::Events { events: vec![warn.clone(), warn] })).await;
    let last =
        stream.report(Body::Delta(v1::Delta { removed_pods: vec![v1::PodRef { namespace: "shop".into(), name: "web-2".into() }], ..Default::default() })).await;
    stream.acked(last).await;

    let (_, c) = app.get(&format!("/api/v1/clusters/{cluster}"), &owner.access).await;
    assert_eq!(c["status"], "connected", "{c}");
    assert_eq!(c["agent_version"], "0.1.0-test");
    assert_eq!(c["kubernetes_version"], "v1.33.1");
    let (_, inv) = app.get(&format!("/api/v1/clusters/{cluster}/inventory"), &owner.access).await;
    assert_eq!(inv["pods"].as_array().unwrap().len(), 1, "{inv}");
    assert_eq!(inv["workloads"][0]["workload"], "Deployment/web");
    assert_eq!(inv["facts"]["node_count"], 3);
    assert_eq!(inv["facts"]["certificates"][0]["not_after"], "2096-10-02T07:06:40Z", "{inv}");
    let (_, m) = app.get(&format!("/api/v1/clusters/{cluster}/metrics"), &owner.access).await;
    assert_eq!(m["items"][0]["requests"], 150, "{m}");
    assert_eq!(m["items"][0]["failures"], 2);
    assert_eq!(m["items"][0]["minute"], crate::helpers::rfc3339(minute), "{m}");
    let (_, ev) = app.get(&format!("/api/v1/clusters/{cluster}/events"), &owner.access).await;
    assert_eq!(ev["items"].as_array().unwrap().len(), 1, "{ev}");
    assert_eq!(ev["items"][0]["at"], crate::helpers::rfc3339(minute), "{ev}");

    // The agent leaves: disconnected. Silence turns a connected agent stale, then disconnected.
    drop(stream);
    let path = format!("/api/v1/clusters/{cluster}");
    assert!(eventually(|| async { app.get(&path, &owner.access).await.1["status"] == "disconnected" }).await);
    let _stream = Stream::open(&app, &id).await.unwrap();
    assert!(eventually(|| async { app.get(&path, &owner.access).await.1["status"] == "connected" }).await);
    app.state.clock.advance(Duration::from_secs(31));
    assert_eq!(app.get(&path, &owner.access).await.1["status"], "stale");
    let (_, stale) = app.get("/api/v1/clusters?status=stale", &owner.access).await;
    assert_eq!(stale["items"].as_array().unwrap().len(), 1);
    app.state.clock.advance(Duration::from_secs(300));
    assert_eq!(app.get(&path, &owner.access).await.1["status"], "disconnected");
}

pub async fn eventually<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn bootstrap_tokens_and_csrs_are_checked(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let created = app.create_cluster(&owner, "c1", json!({})).await;
    let token = created["bootstrap_token"]["token"].as_str().unwrap().to_owned();

    let weak = rustls_pki_types::pem::PemObject::from_pem_slice(include_bytes!("weak-rsa1024.csr.pem"))
        .map(|d: rustls_pki_types::CertificateSigningRequestDer| d.as_ref().to_vec())
        .unwrap();
    // RSA of any size: the protocol names ECDSA P-256/P-384 and Ed25519 only.
    let rsa2048 = rustls_pki_types::pem::PemObject::from_pem_slice(include_bytes!("rsa2048.csr.pem"))
        .map(|d: rustls_pki_types::CertificateSigningRequestDer| d.as_ref().to_vec())
        .unwrap();
    let unsupported = "weak or unsupported key: RSA with 2048 bits; use ECDSA P-256/P-384 or Ed25519";
    for (csr, what) in [(weak, "weak"), (rsa2048.clone(), unsupported), (b"not a csr".to_vec(), "not valid DER")] {
        let err = client(&app, None)
            .await
            .register(RegisterRequest { bootstrap_token: token.clone(), csr_der: csr, agent_version: String::new() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(what), "{err:?}");
    }
    // A refused CSR did not spend the token.
    let id = register(&app, &token).await.unwrap();
    let reused = register(&app, &token).await.err().unwrap();
    assert_eq!((reused.code(), reused.message().contains("already used")), (Code::Unauthenticated, true), "{reused:?}");
    let unknown = register(&app, "mfb_nope").await.err().unwrap();
    assert_eq!(unknown.code(), Code::Unauthenticated);

    // Connect needs a client certificate, from the agent CA.
    let mut no_cert = client(&app, None).await;
    let (_tx, rx) = mpsc::channel::<AgentMessage>(1);
    assert_eq!(no_cert.connect(ReceiverStream::new(rx)).await.unwrap_err().code(), Code::Unauthenticated);
    let foreign = foreign_identity(created["cluster"]["id"].as_str().unwrap());
    let refused = match channel(app.state_gateway(), &app.state.pki.gateway_ca_pem, Some(&foreign)).await {
        Err(_) => true,
        Ok(ch) => {
            let (_tx, rx) = mpsc::channel::<AgentMessage>(1);
            AgentGatewayClient::new(ch).connect(ReceiverStream::new(rx)).await.is_err()
        }
    };
    assert!(refused, "a certificate from another CA was accepted");

    // Renew checks the key as Register does.
    let err = client(&app, Some(&id)).await.renew(v1::RenewRequest { csr_der: rsa2048 }).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, unsupported), "{err:?}");

    // Renew: a new certificate over mTLS, which then works.
    let (key, csr_der) = csr();
    let renewed = client(&app, Some(&id)).await.renew(v1::RenewRequest { csr_der }).await.unwrap().into_inner();
    let renewed = AgentId { key_pem: key.serialize_pem(), chain_pem: renewed.certificate.unwrap().chain_pem };
    let mut stream = Stream::open(&app, &renewed).await.unwrap();
    let seq = stream.report(snapshot(vec![])).await;
    stream.acked(seq).await;

    // Last, as it moves the service's clock (certificates signed after it would not yet be
    // valid in real time): bootstrap tokens expire after an hour.
    let (_, fresh) = app.post(&format!("/api/v1/clusters/{}/bootstrap-token", created["cluster"]["id"].as_str().unwrap()), &owner.access, json!({})).await;
    app.state.clock.advance(Duration::from_secs(3601));
    let expired = register(&app, fresh["token"].as_str().unwrap()).await.err().unwrap();
    assert_eq!((expired.code(), expired.message().contains("expired")), (Code::Unauthenticated, true), "{expired:?}");
}

/// A CA of the test's own.
fn test_ca() -> CaMaterial {
    mint::new_anchor(&CaProfile::new("test CA", Duration::from_secs(86400))).unwrap()
}

/// A leaf for a new key, valid for a day.
fn test_leaf(ca: &CaMaterial, uris: Vec<String>, hosts: Vec<String>, usage: Usage) -> (meshfleet_pki::KeyPair, String) {
    let key = mint::new_key().unwrap();
    let now = std::time::SystemTime::now();
    let profile = LeafProfile { common_name: String::new(), uris, hosts, usage, not_before: now - mint::BACKDATE, not_after: now + Duration::from_secs(86400) };
    let cert = mint::issue_leaf(&ca.signer().unwrap(), &key, &profile).unwrap();
    (key, cert.pem())
}

/// A certificate naming the cluster, signed by a CA the gateway never saw.
fn foreign_identity(cluster: &str) -> AgentId {
    let ca = test_ca();
    let uri = format!("spiffe://meshfleet/org/{}/cluster/{cluster}", uuid::Uuid::now_v7());
    let (key, cert_pem) = test_leaf(&ca, vec![uri], Vec::new(), Usage::Client);
    AgentId { key_pem: key.serialize_pem(), chain_pem: format!("{cert_pem}{}", ca.cert_pem) }
}

async fn commands_reach_the_agent_and_results_come_back(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = registered(&app, &owner, "c1").await;
    let commands = format!("/api/v1/clusters/{cluster}/commands");

    // Created while the agent is away: sent when it connects.
    let (status, early) = app.post(&commands, &owner.access, json!({ "kind": "collect-diagnostics" })).await;
    assert_eq!(status, StatusCode::CREATED, "{early}");
    let mut stream = Stream::open(&app, &id).await.unwrap();
    let first = stream.command().await;
    assert_eq!((first.id.as_str(), first.kind.as_str()), (early["id"].as_str().unwrap(), "collect-diagnostics"));
    assert_eq!(first.body, Some(v1::command::Body::CollectDiagnostics(v1::CollectDiagnostics {})));

    // Created while connected: pushed at once.
    let started = std::time::Instant::now();
    let (_, ping) = app.post(&commands, &owner.access, json!({ "kind": "ping" })).await;
    let second = stream.command().await;
    assert_eq!(second.id, ping["id"].as_str().unwrap());
    assert!(started.elapsed() < Duration::from_millis(900), "took {:?}", started.elapsed());

    let result = |c: &v1::Command, output: &str| {
        Body::CommandResult(v1::CommandResult {
            command_id: c.id.clone(),
            state: v1::CommandState::Succeeded as i32,
            message: "done".into(),
            output_json: output.into(),
            progress_percent: 100,
        })
    };
    let seq = stream.report(result(&second, r#"{"pong":true}"#)).await;
    stream.acked(seq).await;
    let (_, got) = app.get(&format!("{commands}/{}", second.id), &owner.access).await;
    assert_eq!((got["state"].as_str(), got["output"]["pong"].as_bool()), (Some("succeeded"), Some(true)), "{got}");

    // Unfinished commands are delivered again on reconnect; finished ones are not.
    drop(stream);
    let mut stream = Stream::open(&app, &id).await.unwrap();
    let again = stream.command().await;
    assert_eq!(again.id, first.id);
    let seq = stream.report(result(&again, "{}")).await;
    let extra = stream.acked(seq).await;
    assert!(extra.is_empty(), "{extra:?}");
    let (_, got) = app.get(&format!("{commands}/{}", first.id), &owner.access).await;
    assert_eq!(got["state"], "succeeded");
    assert_eq!(got["attempts"], 2);
    // A resent final result changes nothing.
    let seq = stream
        .report(Body::CommandResult(v1::CommandResult { command_id: first.id.clone(), state: v1::CommandState::Failed as i32, ..Default::default() }))
        .await;
    stream.acked(seq).await;
    assert_eq!(app.get(&format!("{commands}/{}", first.id), &owner.access).await.1["state"], "succeeded");

    let (status, body) = app.post(&commands, &owner.access, json!({ "kind": "format-disk" })).await;
    crate::helpers::assert_problem(status, &body, 422, "validation", Some("kind"));
    for (params, field) in [
        (json!({ "kind": "set-control-plane-version" }), "params.version"),
        (json!({ "kind": "restart-workloads", "params": { "batch_size": 0 } }), "params.batch_size"),
        (json!({ "kind": "restart-workloads", "params": { "selector": "app in (" } }), "params.selector"),
        (json!({ "kind": "restart-workloads", "params": { "force": true } }), "params.force"),
    ] {
        let (status, body) = app.post(&commands, &owner.access, params).await;
        crate::helpers::assert_problem(status, &body, 422, "validation", Some(field));
    }
    let (status, body) = app.post(&commands, &owner.access, json!({ "kind": "restart-workloads", "params": { "selector": "app=web", "batch_size": 2 } })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Another cluster's agent cannot settle this cluster's command, even in the same batch as
    // the rightful agent's progress report.
    let third = stream.command().await;
    let (_, other) = registered(&app, &owner, "c2").await;
    let mut intruder = Stream::open(&app, &other).await.unwrap();
    let forged = intruder.report(result(&third, r#"{"forged":true}"#));
    let running = Body::CommandResult(v1::CommandResult {
        command_id: third.id.clone(),
        state: v1::CommandState::Running as i32,
        progress_percent: 40,
        ..Default::default()
    });
    let (forged, own) = tokio::join!(forged, stream.report(running));
    intruder.acked(forged).await;
    stream.acked(own).await;
    let (_, got) = app.get(&format!("{commands}/{}", third.id), &owner.access).await;
    assert_eq!((got["state"].as_str(), got["progress"].as_i64(), got["output"].is_null()), (Some("running"), Some(40), true), "{got}");
}

/// A stream of an agent that predates typed commands: the frozen protocol's own client.
async fn open_frozen(app: &TestApp, id: &AgentId) -> (mpsc::Sender<old::AgentMessage>, tonic::Streaming<old::ServerMessage>) {
    let (tx, rx) = mpsc::channel(16);
    let hello = old::Hello { agent_version: "0.1.0-frozen".into(), kubernetes_version: "v1.33.1".into(), ..Default::default() };
    tx.send(old::AgentMessage { seq: 0, body: Some(old::agent_message::Body::Hello(hello)) }).await.unwrap();
    let ch = channel(app.state_gateway(), &app.state.pki.gateway_ca_pem, Some(id)).await.expect("TLS connection to the gateway");
    let rx = old::agent_gateway_client::AgentGatewayClient::new(ch).connect(ReceiverStream::new(rx)).await.unwrap().into_inner();
    (tx, rx)
}

async fn next_old(rx: &mut tonic::Streaming<old::ServerMessage>) -> old::server_message::Body {
    let message = tokio::time::timeout(Duration::from_secs(10), rx.message()).await.expect("the server answers within 10 s");
    message.unwrap().expect("the stream is open").body.unwrap()
}

/// An agent older than the server (the frozen protocol, over the real gateway) gets a typed
/// command's kind and JSON as servers always sent them, and its result is stored.
async fn an_agent_older_than_the_server_gets_kind_and_params(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = registered(&app, &owner, "c1").await;
    let commands = format!("/api/v1/clusters/{cluster}/commands");
    let params = json!({ "namespace": "shop", "selector": "app=web", "batch_size": 2 });
    let (status, created) = app.post(&commands, &owner.access, json!({ "kind": "restart-workloads", "params": params })).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    let (tx, mut rx) = open_frozen(&app, &id).await;
    let command = loop {
        if let old::server_message::Body::Command(c) = next_old(&mut rx).await {
            break c;
        }
    };
    assert_eq!((command.id.as_str(), command.kind.as_str()), (created["id"].as_str().unwrap(), "restart-workloads"));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&command.params_json).unwrap(), params);
    assert!(command.deadline_unix_ms > app.state.clock.now_ms());

    let result = old::CommandResult {
        command_id: command.id.clone(),
        state: old::CommandState::Succeeded as i32,
        message: "restarted 1 workloads".into(),
        output_json: r#"{"restarted":["shop/web"]}"#.into(),
        progress_percent: 100,
    };
    tx.send(old::AgentMessage { seq: 1, body: Some(old::agent_message::Body::CommandResult(result)) }).await.unwrap();
    loop {
        if let old::server_message::Body::Ack(a) = next_old(&mut rx).await {
            if a.seq >= 1 {
                break;
            }
        }
    }
    let (_, got) = app.get(&format!("{commands}/{}", command.id), &owner.access).await;
    assert_eq!((got["state"].as_str(), got["output"]["restarted"][0].as_str()), (Some("succeeded"), Some("shop/web")), "{got}");
}

async fn deleted_or_revoked_clusters_lose_their_stream_at_once(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;

    // A newer stream of the same cluster supersedes the older one.
    let (revoked, id) = registered(&app, &owner, "c1").await;
    let mut older = Stream::open(&app, &id).await.unwrap();
    let seq = older.report(snapshot(vec![])).await;
    older.acked(seq).await;
    let _newer = Stream::open(&app, &id).await.unwrap();
    assert_eq!(older.ended().await.code(), Code::Aborted);

    let started = std::time::Instant::now();
    let (status, _) = app.call(Method::POST, &format!("/api/v1/clusters/{revoked}/agent/revoke"), Some(&owner.access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut newer = _newer;
    assert_eq!(newer.ended().await.code(), Code::PermissionDenied);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(Stream::open(&app, &id).await.err().map(|s| s.code()), Some(Code::PermissionDenied));

    let (deleted, id) = registered(&app, &owner, "c2").await;
    let mut stream = Stream::open(&app, &id).await.unwrap();
    let seq = stream.report(snapshot(vec![])).await;
    stream.acked(seq).await;
    let (status, _) = app.call(Method::DELETE, &format!("/api/v1/clusters/{deleted}"), Some(&owner.access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(stream.ended().await.code(), Code::PermissionDenied);
    assert!(Stream::open(&app, &id).await.is_err());
}

/// New connections' certificates are checked in one query when they arrive together (a
/// rotation's calls, a fleet reconnecting): each still gets the answer for its own.
async fn agents_connecting_together_are_each_judged_by_their_own_certificate(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let mut agents = Vec::new();
    for i in 0..9 {
        let (cluster, id) = registered(&app, &owner, &format!("c{i}")).await;
        // Every third revoked, every third after that deleted, before it ever connects.
        let (method, path) = match i % 3 {
            1 => (Method::POST, format!("/api/v1/clusters/{cluster}/agent/revoke")),
            2 => (Method::DELETE, format!("/api/v1/clusters/{cluster}")),
            _ => (Method::GET, format!("/api/v1/clusters/{cluster}")),
        };
        let (status, _) = app.call(method, &path, Some(&owner.access), None).await;
        assert!(status.is_success(), "{status}");
        agents.push((i % 3 == 0, id));
    }
    // The checks themselves, queued at once so they share queries: a valid serial presented
    // for another cluster of the organization is not valid there.
    let keys: Vec<_> = agents
        .iter()
        .map(|(_, id)| {
            let der = meshfleet_pki::pem::certs_from_pem(id.chain_pem.as_bytes()).unwrap().swap_remove(0);
            let (peer, serial) = meshfleet_server::gateway::pki::peer_agent(der.as_ref()).unwrap();
            (peer.org_id, peer.cluster_id, serial)
        })
        .collect();
    let mut asked = keys.clone();
    let (org, _, serial) = keys[0].clone();
    asked.push((org, keys[3].1, serial));
    let checks = meshfleet_server::gateway::validity::CertificateChecks::start(app.state.db.clone(), app.state.clock.clone());
    let answers = futures::future::join_all(asked.into_iter().map(|key| checks.valid_until(key))).await;
    let valid: Vec<bool> = answers.into_iter().map(|a| a.unwrap().is_some()).collect();
    let expected: Vec<bool> = agents.iter().map(|(valid, _)| *valid).chain([false]).collect();
    assert_eq!(valid, expected);

    let opened = futures::future::join_all(agents.iter().map(|(_, id)| Stream::open(&app, id))).await;
    for ((valid, _), opened) in agents.iter().zip(opened) {
        match opened {
            Ok(mut stream) if *valid => {
                let seq = stream.report(snapshot(vec![])).await;
                stream.acked(seq).await;
            }
            Err(status) if !*valid => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
            other => panic!("valid: {valid}, opened: {:?}", other.map(|_| ())),
        }
    }
}

/// The fallback for a missed notification and for certificates that expire while connected:
/// the `certificate-recheck` job, run here directly rather than waiting for its 30 s tick.
async fn the_recheck_ends_streams_whose_certificate_became_invalid_unnoticed(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let (silently_revoked, id1) = registered(&app, &owner, "c1").await;
    let (_, id2) = registered(&app, &owner, "c2").await;
    let mut first = Stream::open(&app, &id1).await.unwrap();
    let mut second = Stream::open(&app, &id2).await.unwrap();

    // Revoked behind the service's back: no in-process cut, no NOTIFY.
    sqlx::query("UPDATE agent_certificates SET revoked_at = 1 WHERE cluster_id = $1").bind(&silently_revoked).execute(&app.state.db.pool).await.unwrap();
    meshfleet_server::gateway::recheck::recheck(app.state.clone()).await.unwrap();
    let ended = first.ended().await;
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    // Its certificate was remembered as valid when the stream opened; the re-check forgot it.
    assert_eq!(Stream::open(&app, &id1).await.err().map(|s| s.code()), Some(Code::PermissionDenied));
    // The other stream is untouched.
    let seq = second.report(snapshot(vec![])).await;
    second.acked(seq).await;

    // Its certificate expires while connected.
    app.state.clock.advance(app.state.config.agent_cert_ttl + Duration::from_secs(1));
    meshfleet_server::gateway::recheck::recheck(app.state.clone()).await.unwrap();
    assert_eq!(second.ended().await.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_flooding_agents_are_refused_and_counted() {
    let db = TestDb::new(Engine::Sqlite).await;
    let app = TestApp::spawn_with(db, |c| {
        c.gateway_rate_per_sec = 20.0;
        c.gateway_rate_burst = 20.0;
    })
    .await;
    let owner = app.owner("ada@example.com").await;
    let (_, id) = registered(&app, &owner, "c1").await;

    let cases: Vec<(Vec<AgentMessage>, Code, &str)> = vec![
        (vec![AgentMessage { seq: 1, body: None }], Code::InvalidArgument, "empty"),
        (vec![msg(5, snapshot(vec![])), msg(5, snapshot(vec![]))], Code::InvalidArgument, "seq"),
        (vec![msg(1, metrics(0, 1, 2))], Code::InvalidArgument, "metrics.window"),
        (
            vec![msg(1, Body::CommandResult(v1::CommandResult { command_id: "x".into(), ..Default::default() }))],
            Code::InvalidArgument,
            "command_result.command_id",
        ),
        (vec![msg(1, snapshot(vec![pod("", "", "", "")]))], Code::InvalidArgument, "pod"),
        (
            vec![msg(1, Body::Events(v1::Events { events: vec![v1::Event { id: "big".into(), message: "x".repeat(5 * 1024 * 1024), ..Default::default() }] }))],
            Code::OutOfRange,
            "oversized",
        ),
        ((1..=100).map(|n| msg(0, Body::Heartbeat(v1::Heartbeat::default())).with_seq(n)).collect(), Code::ResourceExhausted, "rate_limited"),
    ];
    for (messages, code, reason) in cases {
        let mut stream = Stream::open(&app, &id).await.unwrap();
        for m in messages {
            if stream.tx.send(m).await.is_err() {
                break;
            }
        }
        let status = stream.ended().await;
        assert!(status.code() == code || (reason == "oversized" && status.code() == Code::ResourceExhausted), "{reason}: {status:?}");
        let text = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
        assert!(text.contains(&format!("meshfleet_gateway_rejected_messages_total{{reason=\"{reason}\"}}")), "{reason} not counted:\n{text}");
    }
    // The gateway still serves well-behaved agents, once the flood's bucket has refilled
    // (20 a second: without the wait, a fast run finds it still empty and is refused).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut stream = Stream::open(&app, &id).await.unwrap();
    let seq = stream.report(snapshot(vec![])).await;
    stream.acked(seq).await;
}

trait WithSeq {
    fn with_seq(self, seq: u64) -> Self;
}

impl WithSeq for AgentMessage {
    fn with_seq(mut self, seq: u64) -> Self {
        self.seq = seq;
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_can_serve_certificates_given_as_files() {
    let files = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let (key, server_pem) = test_leaf(&ca, Vec::new(), vec!["127.0.0.1".to_owned()], Usage::Server);
    for (name, pem) in [("tls.crt", server_pem), ("tls.key", key.serialize_pem()), ("ca.crt", ca.cert_pem.clone())] {
        std::fs::write(files.path().join(name), pem).unwrap();
    }
    let db = TestDb::new(Engine::Sqlite).await;
    let app = TestApp::spawn_with(db, |c| {
        c.gateway_tls_cert = Some(files.path().join("tls.crt"));
        c.gateway_tls_key = Some(files.path().join("tls.key"));
        c.gateway_tls_ca = Some(files.path().join("ca.crt"));
    })
    .await;
    assert_eq!(app.state.pki.gateway_ca_pem, ca.cert_pem, "install manifests pin the given CA");
    let owner = app.owner("ada@example.com").await;
    let (_, id) = registered(&app, &owner, "c1").await;
    let mut stream = Stream::open(&app, &id).await.unwrap();
    let seq = stream.report(snapshot(vec![])).await;
    stream.acked(seq).await;
}
