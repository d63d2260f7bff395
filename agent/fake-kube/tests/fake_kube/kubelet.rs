//! The real kubelet (root only): a pod with an init step, a native sidecar, env and volumes
//! runs as processes in its own network namespace with its own IP; deleting it stops them and
//! removes the namespace; a failing init step is retried and reported; dropping the server
//! removes the pod network. Skipped with a message
//! when not root or `ip`, `iptables` or `python3` is missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meshfleet_fake_kube::{Config, FakeKube, KubeletConfig};
use serde_json::{json, Value};

fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).unwrap_or("?");
    if uid != "0" {
        return Some(format!("not root (uid {uid})"));
    }
    for tool in ["ip", "iptables", "python3"] {
        if !Command::new(tool).arg(if tool == "ip" { "-V" } else { "--version" }).output().is_ok_and(|o| o.status.success()) {
            return Some(format!("`{tool}` is not available"));
        }
    }
    None
}

/// Running (a zombie waiting for its reaper has stopped).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

fn sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

async fn start(logs: &Path) -> FakeKube {
    let kubelet = KubeletConfig { images: Default::default(), log_dir: logs.to_owned() };
    FakeKube::start_with(Config { kubelet: Some(kubelet), ..Config::default() }).await.unwrap()
}

async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn http_get(addr: &str) -> String {
    let mut tcp = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).unwrap();
    write!(tcp, "GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_a_sidecar_env_and_volumes_runs_in_its_own_network_namespace() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the kubelet test: {why}");
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let kube = start(logs.path()).await;
    kube.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "k"}, "data": {"greeting": "hello"}})).unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "k"}, "data": {"password": "czNjcjN0"}})).unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "k"}, "spec": {"ports": [{"port": 80}]}})).unwrap();
    // Mount points missing on the host are created there: under a directory of the test's own,
    // which the pod's uid 1234 may traverse.
    let mnt = tempfile::tempdir().unwrap();
    std::fs::set_permissions(mnt.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let at = |dir: &str| mnt.path().join(dir).display().to_string();
    let mount = |name: &str, dir: &str| json!({"name": name, "mountPath": at(dir)});
    // The app prints what it sees once the init step wrote its file and the sidecar serves.
    let files = [at("work/prepared"), at("settings/greeting"), at("creds/password"), at("token/t")].join(" ");
    let report = format!(
        "echo uid=$(id -u) name=$MY_NAME ip=$MY_IP ns=$MY_NS; for f in {files}; do cat $f; echo; done; grep web.k.svc.cluster.local /etc/hosts; exec sleep 600"
    );
    let prepare = format!("echo prepared > {}", at("work/prepared"));
    kube.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "k"}, "spec": {
        "serviceAccountName": "robot",
        "securityContext": {"runAsUser": 1234},
        "initContainers": [
            {"name": "prepare", "image": "shell", "command": ["sh", "-c", prepare], "volumeMounts": [mount("work", "work")],
             "securityContext": {"runAsUser": 0}},
            {"name": "web", "image": "python", "restartPolicy": "Always", "command": ["python3", "-m", "http.server", "8000"], "securityContext": {"runAsUser": 0},
             "readinessProbe": {"httpGet": {"path": "/", "port": "http"}}, "ports": [{"name": "http", "containerPort": 8000}]},
        ],
        "containers": [{"name": "app", "image": "shell", "command": ["sh", "-c", report],
            "env": [{"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
            "volumeMounts": [mount("work", "work"), mount("settings", "settings"), mount("creds", "creds"), mount("token", "token")]}],
        "volumes": [{"name": "work", "emptyDir": {}}, {"name": "settings", "configMap": {"name": "settings"}}, {"name": "creds", "secret": {"secretName": "creds"}},
                    {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "x"}}]}}],
    }}))
    .unwrap();

    // On a timeout, say where the pod stands and what its containers wrote.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pod = wait_for("the pod to be ready", Duration::from_secs(21), || {
        let pod = kube.get("v1", "Pod", "k", "p").unwrap();
        let logs: Vec<String> = std::fs::read_dir(logs.path()).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
        assert!(Instant::now() < deadline, "not ready: {pod:#}\nlogs: {logs:#?}");
        Some(pod).filter(ready)
    })
    .await;
    let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
    assert!(ip.starts_with("10.") && !ip.ends_with(".1"), "{ip}");
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 0, "{pod}");
    let netns = kube.pod_netns("k", "p").expect("the kubelet names the pod's namespace");
    let (_, addrs) = sh(&["ip", "-n", &netns, "-4", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("{ip}/32")), "{addrs}");
    // The sidecar listens in the pod, at the pod's IP, reachable from the host.
    assert!(http_get(&format!("{ip}:8000")).starts_with("HTTP/1.0 200"));

    let log = logs.path().join("k_p_app.log");
    let out = wait_for("the app's report", Duration::from_secs(10), || std::fs::read_to_string(&log).ok().filter(|s| s.contains("svc.cluster.local"))).await;
    assert!(out.contains(&format!("uid=1234 name=p ip={ip} ns=k")), "{out}");
    assert!(out.contains("prepared\n\nhello\ns3cr3t\nkubelet-"), "{out}");
    let token = out.lines().find(|l| l.starts_with("kubelet-")).expect("the projected token").trim().to_owned();
    let cluster_ip = kube.get("v1", "Service", "k", "web").unwrap()["spec"]["clusterIP"].as_str().unwrap().to_owned();
    assert!(out.contains(&format!("{cluster_ip}\tweb.k.svc web.k.svc.cluster.local")), "{out}");

    // The token is the pod's service account for TokenReview.
    let client = reqwest::Client::new();
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": ["x"]}});
    let answer: Value = client
        .post(format!("{}/apis/authentication.k8s.io/v1/tokenreviews", kube.url))
        .bearer_auth(&kube.admin_token)
        .json(&review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"]["user"]["username"], "system:serviceaccount:k:robot", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pod_stops_its_processes_and_dropping_the_server_removes_the_network() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the kubelet test: {why}");
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let kube = start(logs.path()).await;
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "k"},
        "spec": {"containers": [{"name": "app", "image": "shell", "command": ["sh", "-c", "sleep 600 & wait"]}]}})
    };
    kube.apply(pod("a")).unwrap();
    kube.apply(pod("b")).unwrap();
    wait_for("both pods ready", Duration::from_secs(20), || kube.get("v1", "Pod", "k", "a").filter(ready).and(kube.get("v1", "Pod", "k", "b").filter(ready)))
        .await;
    let (a, b) = (kube.pod_netns("k", "a").unwrap(), kube.pod_netns("k", "b").unwrap());
    let pids = |ns: &str| sh(&["ip", "netns", "pids", ns]).1.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let in_a = pids(&a);
    assert_eq!(in_a.len(), 2, "sh and its sleep: {in_a:?}");

    kube.delete("v1", "Pod", "k", "a").unwrap();
    wait_for("a's namespace removed", Duration::from_secs(10), || (!sh(&["ip", "netns", "list"]).1.contains(&a)).then_some(())).await;
    for pid in &in_a {
        assert!(!alive(pid), "process {pid} of the deleted pod still runs");
    }
    assert_eq!(pids(&b).len(), 2, "the other pod runs on");

    // A failing init step keeps its pod unready and is retried; a missing ConfigMap keeps a pod
    // Pending with the reason.
    kube.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c", "namespace": "k"},
        "spec": {"initContainers": [{"name": "fail", "image": "shell", "command": ["sh", "-c", "exit 3"]}],
                 "containers": [{"name": "app", "image": "shell", "command": ["sleep", "600"]}]}}))
        .unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "d", "namespace": "k"},
        "spec": {"containers": [{"name": "app", "image": "shell", "command": ["sleep", "600"], "volumeMounts": [{"name": "v", "mountPath": "/config"}]}],
                 "volumes": [{"name": "v", "configMap": {"name": "absent"}}]}}))
        .unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "e", "namespace": "k"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "job", "image": "shell", "command": ["true"]}]}}))
        .unwrap();
    wait_for("a run-once pod to succeed", Duration::from_secs(10), || kube.get("v1", "Pod", "k", "e").filter(|p| p["status"]["phase"] == "Succeeded")).await;
    let c = wait_for("the init step retried", Duration::from_secs(10), || {
        kube.get("v1", "Pod", "k", "c").filter(|p| p["status"]["initContainerStatuses"][0]["restartCount"].as_i64() >= Some(1))
    })
    .await;
    let init = &c["status"]["initContainerStatuses"][0];
    assert!([&init["state"], &init["lastState"]].iter().any(|s| s["terminated"]["exitCode"] == 3), "{c}");
    assert_eq!(c["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "PodInitializing", "{c}");
    assert!(!ready(&c) && c["status"]["phase"] == "Pending", "{c}");
    let d = kube.get("v1", "Pod", "k", "d").unwrap();
    assert!(d["status"]["conditions"][1]["message"].as_str().is_some_and(|m| m.contains("ConfigMap k/absent not found")), "{d}");

    let tag = b.split('-').next().unwrap().to_owned();
    let in_b = pids(&b);
    drop(kube);
    assert!(!sh(&["ip", "netns", "list"]).1.contains(&b));
    assert!(!sh(&["ip", "link", "show", &tag]).0, "the gateway link {tag} is gone");
    let (_, rules) = sh(&["iptables-save"]);
    assert!(!rules.contains(&tag.to_uppercase()), "rules of {tag} left:\n{rules}");
    for pid in &in_b {
        assert!(!alive(pid), "process {pid} survived the server");
    }
}
