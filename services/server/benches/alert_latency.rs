//! Alert latency: from the agent report that makes a finding true to the first delivery attempt
//! at a local webhook receiver, next to the same report's ingest acknowledgement (the baseline,
//! measured on the same reports), on SQLite and (when configured) PostgreSQL.
//!
//! Goal (issue 12, "Performance"): p99 under 2 s with no group wait.
//!
//! Run:   cargo bench -p meshfleet-server --bench alert_latency
//! With PostgreSQL: MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres (or
//! MESHFLEET_BENCH_POSTGRES_URL). Knobs: MESHFLEET_BENCH_ROUNDS (fire/resolve rounds per engine,
//! default 100).
//!
//! Method. The server runs in this process (`Server::start`, as the dashboard bench), with its
//! default cadences: rules evaluated every second (`alert_evaluation_ms` 1000), the delivery job
//! every 250 ms, first attempt at once (`alert_retry_schedule` starts at 0 s). Settings changed:
//! `alert_webhook_allow=127.0.0.1` (the receiver is local) and `alert_resolve_delay_ms=0` (so a
//! round resolves at the next evaluation). One webhook channel points at an axum receiver on
//! 127.0.0.1:0 that timestamps each request as soon as its body is read. The organization's
//! `control_plane` rule is set to `for_seconds: 0`. One cluster's agent is a raw gRPC+mTLS client
//! (registered through the gateway, its own key and certificate) that sent a healthy snapshot.
//! Each round waits a random 0-1 s (so reports land at every phase of the evaluation tick),
//! sends a Delta whose facts say the control plane has 0 of 3 replicas ready, and times (a) the
//! Ack covering it and (b) the receiver's first `alert.firing` for the rule; then sends a Delta
//! with 3 of 3 ready and waits for the `alert.resolved`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use meshfleet_agent::Identity;
use meshfleet_agent_protocol::v1::agent_gateway_client::AgentGatewayClient;
use meshfleet_agent_protocol::v1::{self, agent_message::Body, server_message, AgentMessage, ServerMessage};
use meshfleet_agent_protocol::MAX_MESSAGE_BYTES;
use meshfleet_client::Client;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use support::{ms, pct, Receipt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const GOAL_P99: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(30);
const DAY_MS: i64 = 86_400_000;

fn tls_endpoint(gateway: SocketAddr, ca_pem: &str, id: &Identity) -> anyhow::Result<Endpoint> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("127.0.0.1")
        .identity(tonic::transport::Identity::from_pem(&id.chain_pem, id.key_pem.expose_secret()));
    Ok(Endpoint::from_shared(format!("https://{gateway}"))?.tls_config(tls)?.connect_timeout(Duration::from_secs(10)).tcp_nodelay(true))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A synthetic cluster's inventory with nothing else to alert on: current proxies, certificates
/// valid for a year, and the control plane's ready replicas as given.
fn inventory(ready: u32) -> v1::Inventory {
    let mut inv = meshfleet_sim::synthetic_cluster(7).inventory();
    for pod in &mut inv.pods {
        pod.proxy_version = "0.1.0".into();
        pod.ready = true;
    }
    for cert in &mut inv.certificates {
        cert.not_after_unix_ms = now_ms() + 365 * DAY_MS;
    }
    let cp = inv.control_plane.get_or_insert_with(Default::default);
    cp.version = "0.1.0".into();
    cp.replicas = 3;
    cp.ready_replicas = ready;
    inv
}

struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    rx: tonic::Streaming<ServerMessage>,
    seq: u64,
}

impl Agent {
    async fn connect(gateway: SocketAddr, ca_pem: &str, id: &Identity) -> anyhow::Result<Agent> {
        let channel = tls_endpoint(gateway, ca_pem, id)?.connect().await.context("mTLS connection")?;
        let mut client = AgentGatewayClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(16);
        let hello = v1::Hello { agent_version: "0.1.0-bench".into(), kubernetes_version: "v1.33.1".into(), sent_at_unix_ms: now_ms(), ..Default::default() };
        tx.send(AgentMessage { seq: 0, body: Some(Body::Hello(hello)) }).await?;
        let rx = client.connect(ReceiverStream::new(rx)).await.map_err(|s| anyhow!("connect: {s}"))?.into_inner();
        let mut agent = Agent { tx, rx, seq: 0 };
        agent.send(Body::Snapshot(v1::Snapshot { inventory: Some(inventory(3)) })).await?;
        Ok(agent)
    }

    /// Sends one report and returns when its Ack arrived.
    async fn send(&mut self, body: Body) -> anyhow::Result<Instant> {
        self.seq += 1;
        self.tx.send(AgentMessage { seq: self.seq, body: Some(body) }).await?;
        loop {
            match tokio::time::timeout(WAIT, self.rx.message()).await.context("no Ack within 30 s")? {
                Ok(Some(ServerMessage { body: Some(server_message::Body::Ack(a)) })) if a.seq >= self.seq => return Ok(Instant::now()),
                Ok(Some(_)) => {}
                Ok(None) => bail!("the server closed the stream"),
                Err(s) => bail!("stream: {s}"),
            }
        }
    }

    async fn control_plane(&mut self, ready: u32) -> anyhow::Result<Instant> {
        self.send(Body::Delta(v1::Delta { facts: Some(inventory(ready)), ..Default::default() })).await
    }
}

/// The next `event_type` the receiver gets about the control plane rule, and when.
async fn next_event(got: &mut mpsc::UnboundedReceiver<Receipt>, event_type: &str) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = tokio::time::timeout(left, got.recv()).await.with_context(|| format!("no {event_type} within 30 s"))?.context("receiver gone")?;
        let event: Value = serde_json::from_str(&r.body)?;
        if event["type"] == event_type && event["alert"]["rule"] == "control_plane" {
            return Ok(r.at);
        }
    }
}

struct Rounds {
    ack: Vec<Duration>,
    delivery: Vec<Duration>,
    resolved: Vec<Duration>,
    load: (f64, f64),
}

async fn run(engine: &str, rounds: usize) -> anyhow::Result<Rounds> {
    let dir = tempfile::tempdir()?;
    let (url, pg) = support::database(engine, dir.path()).await?;
    let server =
        support::start_in_process(&url, dir.path(), &[("MESHFLEET_ALERT_WEBHOOK_ALLOW", "127.0.0.1"), ("MESHFLEET_ALERT_RESOLVE_DELAY_MS", "0")]).await?;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let (token, _) = support::owner(&http, &base).await?;
    let (got_tx, mut got) = mpsc::unbounded_channel();
    let hook = support::receiver(false, got_tx).await?;
    support::webhook_channel(&http, &base, &token, "on-call", &hook).await?;
    http_put(&http, &format!("{base}/api/v1/alert-rules/control_plane"), &token, json!({ "enabled": true, "for_seconds": 0 })).await?;

    let created = support::http_json(
        http.post(format!("{base}/api/v1/clusters")).bearer_auth(&token).json(&json!({ "name": "bench", "labels": { "env": "bench" } })),
        "create cluster",
    )
    .await?;
    let cluster_id = created["cluster"]["id"].as_str().context("no cluster id")?;
    // The install manifest's bootstrap token (it replaces the one the cluster was created with).
    let boot = Client::with_token(&base, SecretString::from(token.clone())).bootstrap(cluster_id).await.map_err(|e| anyhow!("install manifest: {e}"))?;
    let ca_pem = boot.ca_pem.clone();
    let gateway = server.gateway_addr.context("no gateway")?;
    let id = meshfleet_agent::register(&format!("https://{gateway}"), &ca_pem, boot.token.expose_secret(), "0.1.0-bench").await?;
    let mut agent = Agent::connect(gateway, &ca_pem, &id).await?;

    let mut out = Rounds { ack: Vec::new(), delivery: Vec::new(), resolved: Vec::new(), load: (support::loadavg(), 0.0) };
    for i in 0..rounds {
        let pause = rand::thread_rng().gen_range(0..1000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let sent = Instant::now();
        let acked = agent.control_plane(0).await?;
        let delivered = next_event(&mut got, "alert.firing").await?;
        out.ack.push(acked - sent);
        out.delivery.push(delivered - sent);
        let cleared = Instant::now();
        agent.control_plane(3).await?;
        let resolved = next_event(&mut got, "alert.resolved").await?;
        out.resolved.push(resolved - cleared);
        if (i + 1) % 25 == 0 {
            eprintln!("  [{engine}] {} rounds, load {:.2}", i + 1, support::loadavg());
        }
    }
    out.load.1 = support::loadavg();
    drop(agent);
    server.stop().await?;
    if let Some(pg) = pg {
        support::drop_pg_db(&pg).await;
    }
    Ok(out)
}

async fn http_put(http: &reqwest::Client, url: &str, token: &str, body: Value) -> anyhow::Result<()> {
    support::http_json(http.put(url).bearer_auth(token).json(&body), "PUT").await.map(drop)
}

fn row(engine: &str, what: &str, samples: &mut [Duration]) {
    samples.sort();
    println!(
        "| {engine} | {what} | {} | {} | {} | {} | {} |",
        samples.len(),
        ms(pct(samples, 50.0)),
        ms(pct(samples, 95.0)),
        ms(pct(samples, 99.0)),
        ms(*samples.last().unwrap_or(&Duration::ZERO))
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds: usize = support::env_num("MESHFLEET_BENCH_ROUNDS").unwrap_or(if quick { 3 } else { 100 });
    println!(
        "alert_latency: {rounds} rounds per engine; evaluation every 1 s, delivery job every 250 ms (defaults); {} cores, load {:.2}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        support::loadavg()
    );
    let mut results = Vec::new();
    for engine in support::engines() {
        results.push((engine, run(engine, rounds).await?));
    }
    println!("| engine | from the report to | rounds | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    for (engine, r) in &mut results {
        row(engine, "its ingest Ack (baseline)", &mut r.ack);
        row(engine, "first delivery attempt at the receiver", &mut r.delivery);
        row(engine, "(clearing report to alert.resolved at the receiver)", &mut r.resolved);
    }
    for (engine, r) in &results {
        let p99 = pct(&r.delivery, 99.0);
        let verdict = if p99 < GOAL_P99 { "PASS" } else { "FAIL" };
        println!("[{engine}] goal: report to first delivery p99 < 2 s: {verdict} ({} ms); load average {:.2} -> {:.2}", ms(p99), r.load.0, r.load.1);
    }
    Ok(())
}
