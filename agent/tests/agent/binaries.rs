//! The real binaries: `meshfleet-fake-kube` serving a mesh and writing a kubeconfig, and
//! `meshfleet-agent` finding the cluster through that kubeconfig (`KUBECONFIG`), exactly as an
//! operator would try it by hand. Children are stopped by their own pid.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quiet(cmd: &mut Command) -> &mut Command {
    let log = std::env::var_os("TEST_LOG").is_some();
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MESHFLEET_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdout(Stdio::null()).stderr(if log { Stdio::inherit() } else { Stdio::null() })
}

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: meshfleet-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {meshfleet.io/inject: enabled}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: app, image: "example/web:1"}
      - {name: meshfleet-proxy, image: "meshfleet/proxy:0.1.0"}
"#;

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().unwrap().get(url).send().await.ok()?;
    Some((r.status().as_u16(), r.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_runs_against_the_fake_kube_binary_through_its_kubeconfig() {
    let fake_bin = tokio::task::spawn_blocking(|| {
        meshfleet_test_support::process::build_bins("meshfleet-fake-kube", &["meshfleet-fake-kube"]).join("meshfleet-fake-kube")
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, manifest) = (dir.path().join("kubeconfig"), dir.path().join("mesh.yaml"));
    std::fs::File::create(&manifest).unwrap().write_all(MESH.as_bytes()).unwrap();
    let _fake = Killed(quiet(Command::new(fake_bin).arg("--kubeconfig").arg(&kubeconfig).arg("--manifest").arg(&manifest)).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "the fake API server wrote no kubeconfig");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Bad configuration: every problem reported, exit code 64.
    let out = quiet(&mut Command::new(env!("CARGO_BIN_EXE_meshfleet-agent"))).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MESHFLEET_GATEWAY_ADDRESS is required"));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_meshfleet-agent"));
    quiet(&mut agent)
        .env("KUBECONFIG", &kubeconfig)
        .env("MESHFLEET_GATEWAY_ADDRESS", "https://127.0.0.1:1")
        .env("MESHFLEET_GATEWAY_CA", "unused: no gateway in this test")
        .env("MESHFLEET_POD_NAME", "agent-bin")
        .env("MESHFLEET_POD_NAMESPACE", "meshfleet-system")
        .env("MESHFLEET_AGENT_LISTEN", format!("127.0.0.1:{port}"))
        .env("MESHFLEET_LEASE_DURATION_MS", "3000")
        .env("MESHFLEET_LEASE_RENEW_MS", "200")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut agent = Killed(agent.spawn().unwrap());
    let logs = meshfleet_test_support::process::Output::capture(&mut agent.0);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = get(&format!("{base}/readyz")).await.is_some_and(|(s, _)| s == 200);
        let metrics = get(&format!("{base}/metrics")).await.map(|(_, t)| t).unwrap_or_default();
        if ready && metrics.contains("\nmeshfleet_agent_meshed_pods 2\n") && metrics.contains("\nmeshfleet_agent_leader 1\n") {
            break;
        }
        assert!(Instant::now() < deadline, "the agent binary never saw the mesh: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let client = kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap()).unwrap();
    let leases: kube::Api<Lease> = kube::Api::namespaced(client, "meshfleet-system");
    let holder = || async { leases.get("meshfleet-agent").await.unwrap().spec.unwrap().holder_identity };
    assert_eq!(holder().await.as_deref(), Some("agent-bin"));

    // SIGTERM (to the agent's own pid): a graceful exit that releases the Lease.
    let pid = agent.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert_eq!(holder().await, None, "the Lease was released");
    // Logs to a pipe are plain text: no colour codes.
    let logs = logs.tail();
    assert!(logs.contains("meshfleet-agent started"), "{logs}");
    assert!(!logs.contains('\x1b'), "colour codes in piped logs:\n{logs:?}");
}
