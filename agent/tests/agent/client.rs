use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use meshfleet_agent::v1::{self, agent_message::Body, command::Body as Command, server_message, Ack, CommandState};
use meshfleet_agent::{register, spawn, Agent, ClientConfig, Error, Identity, Report};
use meshfleet_agent_protocol::frozen::v1 as old;
use prost::Message;

use crate::gateway::{TestGateway, CLUSTER, ORG};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct TestAgent {
    executions: AtomicU64,
    /// What it was asked to run: (command id, typed command).
    executed: Mutex<Vec<(String, Command)>>,
}

impl Agent for TestAgent {
    fn kubernetes_version(&self) -> String {
        "v1.33.1".into()
    }
    fn snapshot(&self) -> v1::Inventory {
        v1::Inventory { kubernetes_version: "v1.33.1".into(), node_count: 3, ..Default::default() }
    }
    fn execute(&self, id: String, command: Command) -> BoxFuture<'static, v1::CommandResult> {
        self.executions.fetch_add(1, Ordering::SeqCst);
        let kind = command.kind();
        self.executed.lock().unwrap().push((id, command));
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            v1::CommandResult { state: CommandState::Succeeded as i32, output_json: format!("{{\"kind\":{kind:?}}}"), ..Default::default() }
        })
    }
}

fn config(gw: &TestGateway) -> ClientConfig {
    ClientConfig { backoff_initial: Duration::from_millis(20), backoff_max: Duration::from_millis(200), ..ClientConfig::new(&gw.url, &gw.ca_pem) }
}

async fn registered(gw: &TestGateway) -> Identity {
    register(&gw.url, &gw.ca_pem, "tok", "test").await.expect("register")
}

fn metrics(marker: i64) -> Report {
    Report::Metrics(v1::Metrics { window_start_unix_ms: marker, ..Default::default() })
}

fn metric_markers(msgs: &[v1::AgentMessage]) -> Vec<i64> {
    msgs.iter()
        .filter_map(|m| match &m.body {
            Some(Body::Metrics(x)) => Some(x.window_start_unix_ms),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn registered_agent_connects_and_sends_hello_then_snapshot() {
    let gw = TestGateway::start("tok").await;
    let id = registered(&gw).await;
    assert_eq!((id.org_id.as_str(), id.cluster_id.as_str()), (ORG, CLUSTER));
    let again = register(&gw.url, &gw.ca_pem, "tok", "test").await.unwrap_err();
    assert_eq!(again.code(), Some(tonic::Code::Unauthenticated), "a used token is refused: {again}");

    let h = spawn(config(&gw), id, Arc::new(TestAgent::default()));
    gw.wait_for("a snapshot", |r| r.messages.iter().any(|(_, m)| matches!(m.body, Some(Body::Snapshot(_))))).await;
    let s1 = gw.session(1);
    let Some(Body::Hello(hello)) = &s1[0].body else { panic!("first message is not Hello: {:?}", s1[0]) };
    assert_eq!(hello.kubernetes_version, "v1.33.1");
    // Its clock, for the service's clock-skew check.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((now - hello.sent_at_unix_ms).abs() < 60_000, "sent_at_unix_ms {}", hello.sent_at_unix_ms);
    let Some(Body::Snapshot(snap)) = &s1[1].body else { panic!("second message is not a Snapshot") };
    assert_eq!(snap.inventory.as_ref().unwrap().node_count, 3);
    assert!(h.wait_until(WAIT, |s| s.connected && s.buffered == 0 && s.last_acked_seq == s.last_sent_seq).await, "{:?}", h.stats());
    h.shutdown().await;
}

#[tokio::test]
async fn register_refuses_a_gateway_signed_by_another_ca() {
    let gw = TestGateway::start("tok").await;
    let other = TestGateway::start("tok").await;
    let err = register(&gw.url, &other.ca_pem, "tok", "test").await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(gw.recorded(|r| r.sessions == 0));
}

#[tokio::test]
async fn acked_reports_leave_the_buffer_and_unacked_ones_are_resent_after_a_cut() {
    let gw = TestGateway::start("tok").await;
    let h = spawn(config(&gw), registered(&gw).await, Arc::new(TestAgent::default()));
    assert!(h.wait_until(WAIT, |s| s.connected && s.buffered == 0).await);
    h.report(metrics(1));
    h.report(metrics(2));
    assert!(h.wait_until(WAIT, |s| s.buffered == 0 && s.last_acked_seq >= 3).await, "{:?}", h.stats());

    gw.set_auto_ack(false);
    for m in 3..=5 {
        h.report(metrics(m));
    }
    gw.wait_for("metrics 3..5", |r| r.messages.iter().filter(|(_, m)| matches!(m.body, Some(Body::Metrics(_)))).count() == 5).await;
    assert_eq!(h.stats().buffered, 3, "unacked reports stay buffered");

    gw.set_auto_ack(true);
    gw.cut_stream();
    assert!(h.wait_until(WAIT, |s| s.sessions == 2 && s.buffered == 0).await, "{:?}", h.stats());
    let s2 = gw.session(2);
    assert!(matches!(s2[0].body, Some(Body::Hello(_))));
    assert!(matches!(s2[1].body, Some(Body::Snapshot(_))), "fresh snapshot first");
    assert_eq!(metric_markers(&s2), [3, 4, 5], "exactly the unacked reports, in order");
    let seqs: Vec<u64> = s2.iter().filter(|m| m.seq > 0).map(|m| m.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq increases on the wire: {seqs:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn buffer_overflow_drops_the_oldest_and_counts_them() {
    // Nothing listens there: every report stays buffered.
    let cfg = ClientConfig { buffer_limit: 5, ..ClientConfig::new("https://127.0.0.1:9", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n") };
    let id =
        Identity { org_id: ORG.into(), cluster_id: CLUSTER.into(), chain_pem: String::new(), key_pem: String::new().into(), not_after_unix_ms: i64::MAX / 2 };
    let h = spawn(cfg, id, Arc::new(TestAgent::default()));
    for m in 0..12 {
        h.report(metrics(m));
    }
    let s = h.stats();
    assert_eq!((s.buffered, s.dropped, s.connected), (5, 7, false), "{s:?}");
    assert!(h.wait_until(WAIT, |s| s.last_error.is_some()).await);
    h.shutdown().await;
}

#[tokio::test]
async fn redelivered_command_is_executed_once_and_its_result_resent() {
    let gw = TestGateway::start("tok").await;
    let agent = Arc::new(TestAgent::default());
    let h = spawn(config(&gw), registered(&gw).await, agent.clone());
    assert!(h.wait_until(WAIT, |s| s.connected).await);
    let results =
        |r: &crate::gateway::Recorded| r.messages.iter().filter(|(_, m)| matches!(&m.body, Some(Body::CommandResult(c)) if c.command_id == "c1")).count();
    gw.command("c1", "ping");
    gw.command("c1", "ping"); // redelivered while running: nothing
    gw.wait_for("a result", |r| results(r) == 1).await;
    gw.command("c1", "ping"); // redelivered after it finished: the stored result again
    gw.wait_for("the stored result", |r| results(r) == 2).await;
    gw.cut_stream();
    assert!(h.wait_until(WAIT, |s| s.sessions == 2).await);
    gw.command("c1", "ping");
    gw.wait_for("the stored result after reconnect", |r| results(r) == 3).await;
    assert_eq!(agent.executions.load(Ordering::SeqCst), 1);
    assert_eq!(h.stats().commands_executed, 1);
    let Some(Body::Hello(hello)) = &gw.session(2)[0].body else { panic!() };
    assert_eq!(hello.last_command_id, "c1");
    let last = gw
        .session(1)
        .into_iter()
        .rev()
        .find_map(|m| match m.body {
            Some(Body::CommandResult(c)) => Some(c),
            _ => None,
        })
        .unwrap();
    assert_eq!(last.state(), CommandState::Succeeded);
    h.shutdown().await;
}

/// An agent newer than the server runs what an older server sends (kind and JSON, encoded as
/// that server did); a kind it does not know, from either side, is answered, never run.
#[tokio::test]
async fn commands_from_older_and_newer_servers_run_typed_or_are_answered_unsupported() {
    let gw = TestGateway::start("tok").await;
    let agent = Arc::new(TestAgent::default());
    let h = spawn(config(&gw), registered(&gw).await, agent.clone());
    assert!(h.wait_until(WAIT, |s| s.connected).await);
    let send_encoded = |bytes: Vec<u8>| gw.send(server_message::Body::Command(v1::Command::decode(bytes.as_slice()).unwrap()));
    let from_old_server = |id: &str, kind: &str, params_json: &str| {
        old::Command { id: id.into(), kind: kind.into(), params_json: params_json.into(), deadline_unix_ms: 0 }.encode_to_vec()
    };
    send_encoded(from_old_server("old-restart", "restart-workloads", r#"{"namespace":"shop","batch_size":2}"#));
    send_encoded(from_old_server("old-unknown", "upgrade-mesh", "{}"));
    send_encoded(from_old_server("old-bad", "set-control-plane-version", r#"{"version":"0.2.0","force":true}"#));
    // A newer server's command: a `body` variant this agent does not know (field 99), and its kind.
    let mut newer = v1::Command { id: "new-unknown".into(), kind: "upgrade-mesh".into(), params_json: "{}".into(), ..Default::default() }.encode_to_vec();
    newer.extend_from_slice(&[0x9a, 0x06, 0x00]);
    send_encoded(newer);
    // This server: typed, and `body` wins over the deprecated fields.
    let typed =
        v1::Command { id: "new-ping".into(), kind: "ping".into(), params_json: "{}".into(), body: Some(Command::Ping(v1::Ping {})), ..Default::default() };
    gw.send(server_message::Body::Command(typed));

    let results = |r: &crate::gateway::Recorded| {
        r.messages.iter().filter_map(|(_, m)| if let Some(Body::CommandResult(c)) = &m.body { Some(c.clone()) } else { None }).collect::<Vec<_>>()
    };
    gw.wait_for("five results", |r| results(r).len() == 5).await;
    let result = |id: &str| gw.recorded(results).into_iter().find(|c| c.command_id == id).unwrap();
    for id in ["old-restart", "new-ping"] {
        assert_eq!(result(id).state(), CommandState::Succeeded, "{id}");
    }
    for id in ["old-unknown", "new-unknown"] {
        let r = result(id);
        assert_eq!(r.state(), CommandState::Failed, "{id}");
        assert!(r.message.starts_with(r#"unsupported command kind "upgrade-mesh""#), "{id}: {}", r.message);
        assert_eq!(r.output_json, r#"{"unsupported":"upgrade-mesh"}"#, "{id}");
    }
    let bad = result("old-bad");
    assert_eq!(bad.state(), CommandState::Failed);
    assert!(bad.message.starts_with("bad parameters for set-control-plane-version: unknown field `force`"), "{}", bad.message);

    let restart = v1::RestartWorkloads { namespace: Some("shop".into()), batch_size: Some(2), ..Default::default() };
    let mut executed = agent.executed.lock().unwrap().clone();
    executed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(executed, [("new-ping".to_owned(), Command::Ping(v1::Ping {})), ("old-restart".to_owned(), Command::RestartWorkloads(restart))]);
    assert_eq!(h.stats().commands_executed, 5, "every command was answered");
    h.shutdown().await;
}

#[tokio::test]
async fn certificate_is_renewed_at_two_thirds_of_its_lifetime_and_saved() {
    let gw = TestGateway::start("tok").await;
    gw.set_cert_lifetime(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.json");
    let first = registered(&gw).await;
    let cfg = ClientConfig { identity_path: Some(path.clone()), ..config(&gw) };
    gw.set_cert_lifetime(Duration::from_secs(3600));
    let h = spawn(cfg, first.clone(), Arc::new(TestAgent::default()));
    assert!(h.wait_until(WAIT, |s| s.renewals == 1 && s.sessions >= 2 && s.connected).await, "{:?}", h.stats());
    let renewed = h.identity();
    assert_ne!(renewed.chain_pem, first.chain_pem);
    assert!(renewed.not_after_unix_ms > first.not_after_unix_ms + 60_000);
    assert_eq!(Identity::load(&path).unwrap().chain_pem, renewed.chain_pem);
    assert_eq!(gw.recorded(|r| r.renewals), 1);
    h.report(metrics(9));
    assert!(h.wait_until(WAIT, |s| s.buffered == 0 && s.last_acked_seq == s.last_sent_seq).await, "streams with the new certificate");
    h.shutdown().await;
}

#[tokio::test]
async fn refused_agent_keeps_retrying_and_shows_the_status() {
    let gw = TestGateway::start("tok").await;
    let id = registered(&gw).await;
    gw.set_deny(true);
    let h = spawn(config(&gw), id, Arc::new(TestAgent::default()));
    assert!(h.wait_until(WAIT, |s| s.last_error.as_deref().is_some_and(|e| e.contains("PermissionDenied"))).await, "{:?}", h.stats());
    assert!(!h.stats().connected);
    gw.set_deny(false);
    assert!(h.wait_until(WAIT, |s| s.connected && s.buffered == 0 && s.last_error.is_none()).await, "{:?}", h.stats());
    h.shutdown().await;
}

#[tokio::test]
async fn garbage_from_the_server_does_not_hurt() {
    let gw = TestGateway::start("tok").await;
    let h = spawn(config(&gw), registered(&gw).await, Arc::new(TestAgent::default()));
    assert!(h.wait_until(WAIT, |s| s.connected && s.buffered == 0).await);
    gw.set_auto_ack(false);
    h.report(metrics(1));
    gw.wait_for("the report", |r| r.messages.iter().any(|(_, m)| matches!(m.body, Some(Body::Metrics(_))))).await;
    gw.send(server_message::Body::Ack(Ack { seq: u64::MAX }));
    gw.command("", "ping");
    gw.command(&"x".repeat(10_000), "ping");
    assert!(h.wait_until(WAIT, |s| s.buffered == 0).await);
    assert_eq!(h.stats().last_acked_seq, 2, "an ack beyond what was sent counts only what was sent");
    h.report(metrics(2));
    gw.wait_for("the second report", |r| r.messages.iter().filter(|(_, m)| matches!(m.body, Some(Body::Metrics(_)))).count() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = h.stats();
    assert!(s.connected && s.commands_executed == 0 && s.buffered == 1, "{s:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn refused_reports_are_counted_and_not_resent() {
    let gw = TestGateway::start("tok").await;
    let h = spawn(config(&gw), registered(&gw).await, Arc::new(TestAgent::default()));
    assert!(h.wait_until(WAIT, |s| s.connected && s.buffered == 0).await);
    gw.set_auto_ack(false);
    h.report(metrics(1));
    gw.wait_for("the report", |r| r.messages.iter().any(|(_, m)| matches!(m.body, Some(Body::Metrics(_))))).await;
    let seq = h.stats().last_sent_seq;
    gw.send(server_message::Body::Refused(v1::Refused { seq, reason: "series".into(), message: "over the quota of 2000 series".into(), refused_items: 7 }));
    gw.send(server_message::Body::Ack(Ack { seq }));
    assert!(h.wait_until(WAIT, |s| s.buffered == 0 && s.refused == 1).await, "{:?}", h.stats());
    let s = h.stats();
    assert_eq!((s.refused_items, s.dropped), (7, 0), "{s:?}");
    assert!(s.last_refusal.as_deref().is_some_and(|r| r.contains("series") && r.contains("2000")), "{s:?}");
    // A new session resends what is unacknowledged: not the refused report.
    gw.set_auto_ack(true);
    gw.cut_stream();
    assert!(h.wait_until(WAIT, |s| s.sessions >= 2 && s.connected).await, "{:?}", h.stats());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metric_markers(&gw.session(2)), Vec::<i64>::new(), "the refused report was sent again");
    h.shutdown().await;
}

#[tokio::test]
async fn simulated_cluster_reports_and_answers_commands_through_a_real_client() {
    use meshfleet_sim::{drive, synthetic_cluster, SharedCluster};
    let gw = TestGateway::start("tok").await;
    let cluster = SharedCluster::new(synthetic_cluster(42));
    let h = spawn(config(&gw), registered(&gw).await, Arc::new(cluster.clone()));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let driver = tokio::spawn(drive(h.reporter(), cluster.clone(), Duration::from_millis(50), stop_rx));
    gw.wait_for("metrics", |r| r.messages.iter().filter(|(_, m)| matches!(m.body, Some(Body::Metrics(_)))).count() >= 3).await;
    gw.command("p1", "ping");
    gw.command("u1", "rotate-everything");
    let result = |id: &str| {
        gw.session(1).into_iter().find_map(|m| match m.body {
            Some(Body::CommandResult(c)) if c.command_id == id => Some(c),
            _ => None,
        })
    };
    gw.wait_for("both results", |r| r.messages.iter().filter(|(_, m)| matches!(m.body, Some(Body::CommandResult(_)))).count() == 2).await;
    assert_eq!(result("p1").unwrap().state(), CommandState::Succeeded);
    assert!(result("p1").unwrap().output_json.contains("\"pong\":true"));
    assert_eq!(result("u1").unwrap().state(), CommandState::Failed);
    let Some(Body::Snapshot(snap)) = &gw.session(1)[1].body else { panic!() };
    assert_eq!(snap.inventory.as_ref().unwrap().pods.len(), cluster.lock().inventory().pods.len());
    stop.send(true).unwrap();
    driver.await.unwrap();
    assert!(h.wait_until(WAIT, |s| s.buffered == 0).await);
    h.shutdown().await;
}
