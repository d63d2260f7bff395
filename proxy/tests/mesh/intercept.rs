//! Transparent interception for real: two network namespaces (a client pod and a server pod)
//! joined by a veth pair, `meshfleet-proxy init` writing each one's nat rules, the controller and
//! the server's app in the server pod, and the proxies running as uid 2102 (the uid the rules
//! exempt, so a proxy's own dials leave the pod). The apps are plain TCP/HTTP in threads that
//! entered the namespaces with setns(2): they know nothing of the mesh. Root only; skipped with a
//! message elsewhere or when `ip`, `iptables` or `setpriv` is missing. A second test routes by
//! discovery instead of `--route`: the fake API server runs inside the server pod's namespace.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

const PROXY_UID: &str = "2102";
const CLIENT_IP: &str = "10.77.0.1";
const SERVER_IP: &str = "10.77.0.2";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/web/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/api/sa/server";

fn skip_reason() -> Option<String> {
    root_skip_reason(&["ip", "iptables", "setpriv"])
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces and their veth pair; deleted on drop, also when the test panics.
struct Pods {
    client: String,
    server: String,
}

impl Pods {
    fn create() -> Self {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let pods = Self { client: format!("mfc-{tag}"), server: format!("mfs-{tag}") };
        let (va, vb) = (format!("mfa{tag}"), format!("mfb{tag}"));
        sh(&["ip", "netns", "add", &pods.client]);
        sh(&["ip", "netns", "add", &pods.server]);
        sh(&["ip", "link", "add", &va, "type", "veth", "peer", "name", &vb]);
        sh(&["ip", "link", "set", &va, "netns", &pods.client]);
        sh(&["ip", "link", "set", &vb, "netns", &pods.server]);
        for (ns, dev, ip) in [(&pods.client, &va, CLIENT_IP), (&pods.server, &vb, SERVER_IP)] {
            sh(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pods
    }

    fn exec<'a>(ns: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        [&["ip", "netns", "exec", ns], rest].concat()
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that entered network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// A plain HTTP/1.1 server in `ns` on 0.0.0.0:`port` answering "hello from PORT".
fn serve_app(ns: &str, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("hello from {port}");
                let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("app listening");
}

/// GET `http://addr/path` from inside `ns` with a plain socket; the raw response, or the error.
fn get(ns: &str, addr: &str, path: &str) -> Result<String, String> {
    let (addr, path) = (addr.to_string(), path.to_string());
    in_netns(ns, move || {
        let mut tcp = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(tcp, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        match tcp.read_to_end(&mut out) {
            Ok(_) if !out.is_empty() => Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(_) => Err("closed without a response".into()),
            Err(e) => Err(e.to_string()),
        }
    })
    .join()
    .unwrap()
}

fn wait_ready_in(ns: &str, admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(ns, admin, "/ready").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "proxy in {ns} never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn init(ns: &str, extra: &[&str]) -> String {
    let bin = env!("CARGO_BIN_EXE_meshfleet-proxy");
    sh(&Pods::exec(ns, &[&[bin, "init", "--proxy-uid", PROXY_UID, "--inbound-port=4143", "--outbound-port=4140"], extra].concat()))
}

fn spawn_proxy_in(pki: &Pki, ns: &str, token: &str, controller: &str, extra: &[&str]) -> Process {
    let mut args: Vec<String> = ["netns", "exec", ns, "setpriv", &format!("--reuid={PROXY_UID}"), &format!("--regid={PROXY_UID}"), "--clear-groups"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(env!("CARGO_BIN_EXE_meshfleet-proxy").into());
    args.extend([
        "--admin-addr=127.0.0.1:4191".to_string(),
        "--inbound-addr=0.0.0.0:4143".to_string(),
        "--outbound-intercept=127.0.0.1:4140".to_string(),
        format!("--controller-addr={controller}"),
        format!("--trust-anchors={}", pki.path("bundle.crt").display()),
        format!("--token-file={}", pki.path(token).display()),
        "--detect-timeout-ms=300".to_string(),
        "--drain-timeout-secs=1".to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let proxy = spawn("ip", &args, &[], &pki.path(&format!("proxy-{ns}-{}.ready", rand::random::<u32>())));
    wait_ready_in(ns, "127.0.0.1:4191");
    proxy
}

/// `ip` arguments running the controller in `ns` on 4190 with the test PKI's issuer and tokens.
fn controller_in(pki: &Pki, ns: &str, extra: &[&str]) -> Vec<String> {
    ["netns", "exec", ns, env!("CARGO_BIN_EXE_meshfleet-controller"), "--grpc-addr=0.0.0.0:4190", "--admin-addr=127.0.0.1:0", "--verifier=file"]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .chain(
            [("--issuer-cert", "issuer.crt"), ("--issuer-key", "issuer.key"), ("--trust-bundle", "bundle.crt"), ("--tokens-file", "tokens.json")]
                .map(|(f, p)| format!("{f}={}", pki.path(p).display())),
        )
        .collect()
}

fn metrics_in(ns: &str) -> String {
    get(ns, "127.0.0.1:4191", "/metrics").unwrap()
}

#[test]
fn unmodified_client_reaches_server_over_mtls_through_intercepting_proxies() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the transparent-interception test: {why}");
        return;
    }
    let pods = Pods::create();
    let (c, s) = (pods.client.as_str(), pods.server.as_str());
    let pki = Pki::new();
    // The proxies run as uid 2102: they read the bundle and tokens and write ready files here.
    std::fs::set_permissions(pki.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();

    // Init, twice on the client side: the second run leaves the same rule set.
    init(s, &["--skip-inbound-ports=4190,4191,9090"]);
    let out = init(c, &["--skip-outbound-ports=25"]);
    assert!(out.contains("ran: iptables -t nat -A OUTPUT -p tcp -j MESHFLEET_OUTPUT"), "{out}");
    let rules = sh(&Pods::exec(c, &["iptables", "-t", "nat", "-S"]));
    let again = init(c, &["--skip-outbound-ports=25"]);
    assert!(again.contains("exists: iptables -t nat -A OUTPUT -p tcp -j MESHFLEET_OUTPUT"), "{again}");
    assert_eq!(sh(&Pods::exec(c, &["iptables", "-t", "nat", "-S"])), rules, "init is idempotent");
    assert!(rules.contains("-A MESHFLEET_OUTPUT -m owner --uid-owner 2102 -j RETURN"), "{rules}");

    // The server pod: its app on 8080 (meshed) and 9090 (skipped by its inbound rules), and the
    // controller on 4190 (also skipped), reachable from the client pod.
    serve_app(s, 8080);
    serve_app(s, 9090);
    let _controller = spawn("ip", &controller_in(&pki, s, &[]), &[], &pki.path("controller.ready"));

    let _server = spawn_proxy_in(&pki, s, "tok-b", "127.0.0.1:4190", &[]);
    let route = format!("--route={SERVER_IP}:8080#{SERVER_ID}");
    let client = spawn_proxy_in(&pki, c, "tok-a", &format!("{SERVER_IP}:4190"), &[&route]);

    // The unmodified client calls the server's address; both hops are intercepted.
    let resp = get(c, &format!("{SERVER_IP}:8080"), "/").unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("hello from 8080"), "{resp}");
    let m = metrics_in(s);
    let inbound = [("direction", "inbound"), ("tls", "true"), ("client_id", CLIENT_ID), ("target_addr", "127.0.0.1:8080")];
    assert_eq!(metric(&m, "request_total", &inbound), 1.0, "the server proxy saw the request over mTLS from the client's identity:\n{m}");
    assert_eq!(metric(&m, "inbound_tcp_authz_allow_total", &[("client_id", CLIENT_ID)]), 1.0, "{m}");
    let m = metrics_in(c);
    let outbound = [("direction", "outbound"), ("tls", "true"), ("server_id", SERVER_ID), ("target_addr", "10.77.0.2:8080")];
    assert_eq!(metric(&m, "request_total", &outbound), 1.0, "{m}");

    // No route for 9090: forwarded as plain TCP (the default), past the server's proxy.
    let resp = get(c, &format!("{SERVER_IP}:9090"), "/").unwrap();
    assert!(resp.ends_with("hello from 9090"), "{resp}");
    let m = metrics_in(c);
    assert_eq!(
        metric(&m, "tcp_open_total", &[("direction", "outbound"), ("peer", "dst"), ("tls", "no_identity"), ("target_addr", "10.77.0.2:9090")]),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&metrics_in(s), "request_total", &[]), 1.0, "unmeshed traffic did not pass the server's proxy");

    // With --unmeshed refuse the same call is closed; the meshed one still works.
    drop(client);
    let _client = spawn_proxy_in(&pki, c, "tok-a", &format!("{SERVER_IP}:4190"), &[&route, "--unmeshed=refuse"]);
    let refused = get(c, &format!("{SERVER_IP}:9090"), "/");
    assert!(refused.is_err(), "unmeshed destination answered: {refused:?}");
    let resp = get(c, &format!("{SERVER_IP}:8080"), "/").unwrap();
    assert!(resp.ends_with("hello from 8080"), "{resp}");
    assert_eq!(metric(&metrics_in(s), "request_total", &inbound), 2.0);
}

/// The fake API server bound inside network namespace `ns` (its own runtime on a thread there),
/// so a controller in that namespace reaches it on loopback. Stops when the sender drops.
fn fake_kube_in(ns: &str) -> (std::sync::Arc<meshfleet_fake_kube::FakeKube>, std::sync::mpsc::Sender<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let kube = std::sync::Arc::new(rt.block_on(meshfleet_fake_kube::FakeKube::start()).unwrap());
        tx.send(kube.clone()).unwrap();
        // Drive the server until the test is done with it.
        rt.block_on(async move {
            while matches!(stopped.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    });
    (rx.recv_timeout(Duration::from_secs(10)).expect("fake API server started"), stop)
}

/// With `--destination` and no `--route`, an unmodified client's call to a Service's cluster IP
/// is resolved by the controller (watching the fake API server) to the server pod's endpoint
/// and goes there over mTLS, checked against the pod's identity.
#[test]
fn an_intercepted_call_to_a_cluster_ip_is_resolved_and_sent_over_mtls() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the transparent-interception discovery test: {why}");
        return;
    }
    const CLUSTER_IP: &str = "10.96.0.10";
    let pods = Pods::create();
    let (c, s) = (pods.client.as_str(), pods.server.as_str());
    let pki = Pki::new();
    std::fs::set_permissions(pki.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    init(s, &["--skip-inbound-ports=4190,4191"]);
    init(c, &[]);
    // Service IPs are routed out of the pod (kube-proxy would take them from there).
    sh(&["ip", "-n", c, "route", "add", "10.96.0.0/16", "via", SERVER_IP]);
    serve_app(s, 8080);

    // The cluster: the server pod (its IP the server namespace's) behind a Service.
    let (kube, _stop) = fake_kube_in(s);
    kube.apply(serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "api", "labels": {"app": "web", "meshfleet.io/proxy-version": meshfleet_mesh::VERSION}},
        "spec": {"serviceAccountName": "server", "containers": [{"name": "app", "image": "app"}]}, "status": {"podIP": SERVER_IP}}))
    .unwrap();
    kube.apply(serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "api"},
        "spec": {"clusterIP": CLUSTER_IP, "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}))
        .unwrap();
    let kubeconfig = pki.path("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, &kube.admin_token).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kube.list("discovery.k8s.io/v1", "EndpointSlice", Some("api")).iter().any(|s| s["endpoints"][0]["conditions"]["ready"] == true) {
        assert!(Instant::now() < deadline, "the pod never became a ready endpoint");
        std::thread::sleep(Duration::from_millis(50));
    }

    let _controller = spawn("ip", &controller_in(&pki, s, &["--discovery"]), &[("KUBECONFIG", &kubeconfig)], &pki.path("controller.ready"));
    let _server = spawn_proxy_in(&pki, s, "tok-b", "127.0.0.1:4190", &[]);
    let controller = format!("{SERVER_IP}:4190");
    let _client = spawn_proxy_in(&pki, c, "tok-a", &controller, &[&format!("--destination={controller}"), "--unmeshed=refuse"]);

    let resp = get(c, &format!("{CLUSTER_IP}:80"), "/").unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("hello from 8080"), "{resp}");
    let m = metrics_in(s);
    let inbound = [("direction", "inbound"), ("tls", "true"), ("client_id", CLIENT_ID)];
    assert_eq!(metric(&m, "request_total", &inbound), 1.0, "the server proxy saw the request over mTLS from the client's identity:\n{m}");
    let m = metrics_in(c);
    let outbound = [("direction", "outbound"), ("tls", "true"), ("target_addr", "10.96.0.10:80")];
    assert_eq!(metric(&m, "request_total", &outbound), 1.0, "{m}");
    assert_eq!(metric(&m, "tcp_open_total", &[("peer", "dst"), ("tls", "true"), ("server_id", SERVER_ID), ("target_addr", "10.77.0.2:8080")]), 1.0, "{m}");

    // An IP discovery does not know is still `--unmeshed` (refused here).
    assert!(get(c, "10.96.0.99:80", "/").is_err());
}
