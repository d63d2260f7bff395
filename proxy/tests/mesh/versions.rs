//! One binary plays several releases: the proxy and the controller report the version given at
//! start (flag or `MESHFLEET_VERSION_OVERRIDE`) on their admin endpoint and build-info metric, the
//! controller's injector injects that version's proxy unless told another, and the test knobs
//! make a "bad next" that fails a share of requests or never gets ready (off by default).

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::injector::{injector_cert, review};
use crate::support::*;

async fn version_of(p: &Process) -> String {
    reqwest::get(format!("http://{}/version", p.addr("admin"))).await.unwrap().text().await.unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_and_the_controller_report_the_version_given_at_start() {
    let pki = Pki::new();
    injector_cert(&pki);
    let cert = format!("--injector-cert={}", pki.path("injector.crt").display());
    let key = format!("--injector-key={}", pki.path("injector.key").display());
    let controller = spawn_controller_with_env(
        &pki,
        &["--version-override=0.9.0-next", "--injector-addr=127.0.0.1:0", &cert, &key],
        &[("KUBECONFIG", &pki.path("no-such-kubeconfig"))],
    );
    assert_eq!(version_of(&controller).await, "0.9.0-next");
    assert_eq!(metric(&metrics(&controller).await, "controller_build_info", &[("version", "0.9.0-next")]), 1.0);

    // Its injector injects the proxy of the version it plays.
    let url = format!("https://localhost:{}/inject", controller.addr("injector").port());
    let client = reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(pki.anchor.cert_pem.as_bytes()).unwrap()).build().unwrap();
    let request = review("uid-1", json!({"meshfleet.io/inject": "enabled"}));
    let answer: Value = client.post(&url).header("content-type", "application/json").body(request.to_string()).send().await.unwrap().json().await.unwrap();
    let patch = base64::engine::general_purpose::STANDARD.decode(answer["response"]["patch"].as_str().unwrap()).unwrap();
    let mut pod = request["request"]["object"].clone();
    json_patch::patch(&mut pod, &serde_json::from_slice::<json_patch::Patch>(&patch).unwrap()).unwrap();
    let proxy = pod["spec"]["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "meshfleet-proxy").unwrap().clone();
    assert_eq!(proxy["image"], "meshfleet/proxy:0.9.0-next", "{pod}");

    // The proxy, by its environment; one without it reports the build's version.
    let app = spawn_app().await;
    let ready = pki.path("proxy-next.ready");
    let args: Vec<String> = [
        "--admin-addr=127.0.0.1:0".to_owned(),
        "--inbound-addr=127.0.0.1:0".to_owned(),
        format!("--inbound-forward={app}"),
        format!("--controller-addr={}", controller.addr("grpc")),
        format!("--trust-anchors={}", pki.path("bundle.crt").display()),
        format!("--token-file={}", pki.path("tok-b").display()),
    ]
    .into();
    let next = spawn(env!("CARGO_BIN_EXE_meshfleet-proxy"), &args, &[("MESHFLEET_VERSION_OVERRIDE", Path::new("0.9.0-next"))], &ready);
    wait_ready(&next).await;
    assert_eq!(version_of(&next).await, "0.9.0-next");
    assert_eq!(metric(&metrics(&next).await, "proxy_build_info", &[("version", "0.9.0-next")]), 1.0);
    let current = spawn_proxy(&pki, &controller, "tok-a", app, &[], &[]);
    wait_ready(&current).await;
    assert_eq!(version_of(&current).await, env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_release_fails_a_share_of_requests_or_never_gets_ready() {
    let pki = Pki::new();
    let controller = spawn_controller(&pki, &[]);
    let app = spawn_app().await;
    // The server side plays a release that fails 30% of the requests it receives.
    let bad = spawn_proxy(&pki, &controller, "tok-b", app, &[], &["--test-fail-share=0.3"]);
    let route = format!("127.0.0.1:0={}#spiffe://cluster.local/ns/api/sa/server", bad.addr("inbound"));
    let client_side = spawn_proxy(&pki, &controller, "tok-a", "127.0.0.1:1".parse().unwrap(), &[route], &[]);
    wait_ready(&client_side).await;
    wait_ready(&bad).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/status/200", client_side.outbound(0));
    let mut failed = 0;
    for _ in 0..400 {
        match http.get(&url).send().await.unwrap().status().as_u16() {
            200 => {}
            503 => failed += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    // 30% of 400 is 120; five standard deviations (~46) either side.
    assert!((74..=166).contains(&failed), "{failed} of 400 failed");
    let m = metrics(&bad).await;
    assert_eq!(metric(&m, "response_total", &[("direction", "inbound"), ("status_code", "503")]), f64::from(failed), "counted as failures: {m}");

    // A release that never gets ready: it holds its certificate, but /ready stays 503.
    let never = spawn_proxy(&pki, &controller, "tok-a", app, &[], &["--test-fail-readiness"]);
    let admin = never.addr("admin");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let id: Value = reqwest::get(format!("http://{admin}/identity")).await.unwrap().json().await.unwrap();
        if !id["leaf"].is_null() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no certificate: {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reqwest::get(format!("http://{admin}/ready")).await.unwrap().status(), 503);

    // Out of range: a configuration error (exit code 64), not a silently clamped knob.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_meshfleet-proxy"))
        .args(["--controller-addr=127.0.0.1:1", "--trust-anchors", &pki.path("bundle.crt").display().to_string(), "--test-fail-share=1.5"])
        .args(["--admin-addr=127.0.0.1:0", "--inbound-addr=127.0.0.1:0"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(64));
}
