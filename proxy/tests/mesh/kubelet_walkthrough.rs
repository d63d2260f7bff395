//! The README's "mesh in the fake API server" walkthrough, run with bash as written, twice in a
//! row (it must stop what it started, and the kubelet must leave nothing behind): the fake API
//! server's kubelet runs the controller and two injected workloads, and the proxies' metrics
//! show mTLS between them. Root only; skipped with a message elsewhere or without `ip`,
//! `iptables`, `curl` or `python3`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::root_skip_reason;
use crate::walkthrough::{free_port, ports, readme_block, rewrite_ports, run_bash};

/// The fake API server's binary. Another package's binaries are not built for these tests, so
/// cargo builds it, into a target directory of its own: in this one its dependencies would be
/// built with other features than this package's tests use, and each run would rebuild both.
fn build_fake_kube(bins: &Path) -> PathBuf {
    let target_dir = bins.parent().unwrap().join("kubelet-walkthrough");
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "--quiet", "-p", "meshfleet-fake-kube", "--bin", "meshfleet-fake-kube", "--target-dir"]).arg(&target_dir);
    let profile = if bins.ends_with("release") { "release" } else { "debug" };
    if profile == "release" {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "building meshfleet-fake-kube failed");
    target_dir.join(profile).join("meshfleet-fake-kube")
}

#[test]
fn readme_kubelet_walkthrough_shows_mtls_between_two_meshed_workloads_twice() {
    if let Some(why) = root_skip_reason(&["ip", "iptables", "curl", "python3"]) {
        eprintln!("skipping the kubelet walkthrough: {why}");
        return;
    }
    let bins = Path::new(env!("CARGO_BIN_EXE_meshfleet-proxy")).parent().unwrap();
    let fake_kube = build_fake_kube(bins);
    let script = readme_block("<!-- kubelet walkthrough");
    let map: HashMap<u16, u16> = ports(&script).iter().map(|&p| (p, free_port())).collect();
    let repo = tempfile::tempdir().unwrap();
    let state = repo.path().join("mesh");
    assert!(script.contains("D=/tmp/meshfleet-kube;"), "{script}");
    let script = rewrite_ports(&script, &map).replace("D=/tmp/meshfleet-kube;", &format!("D={};", state.display()));
    // A checkout whose target/release holds the binaries under test; CARGO_TARGET_DIR unset.
    let release = repo.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    for bin in [bins.join("meshfleet-proxy"), bins.join("meshfleet-controller"), fake_kube] {
        std::os::unix::fs::symlink(&bin, release.join(bin.file_name().unwrap())).unwrap();
    }

    for run in ["first", "second"] {
        let (ok, output) = run_bash(&script, repo.path(), Duration::from_secs(120));
        let logs = std::fs::read_to_string(state.join("fake-kube.log")).unwrap_or_default();
        assert!(ok, "{run} run of the kubelet walkthrough failed:\n{output}\nfake-kube:\n{logs}");
        let inbound = output.lines().find(|l| l.starts_with("request_total{") && l.contains(r#"direction="inbound""#));
        let inbound = inbound.unwrap_or_else(|| panic!("{run} run: no inbound request_total on the web proxy:\n{output}"));
        assert!(inbound.contains(r#"client_id="spiffe://cluster.local/ns/demo/sa/client""#) && inbound.contains(r#"tls="true""#), "{run} run: {inbound}");
        let count: f64 = inbound.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count > 0.0, "{run} run: {inbound}");
        let outbound = output.lines().find(|l| l.starts_with("tcp_open_total{") && l.contains(r#"server_id="spiffe://cluster.local/ns/demo/sa/web""#));
        assert!(outbound.is_some_and(|l| l.contains(r#"tls="true""#)), "{run} run: the client proxy did not dial the web's identity:\n{output}");
        assert!(output.contains("demo_web-") && output.contains("_meshfleet-proxy.log"), "{run} run: no pod logs listed:\n{output}");
    }
    let netns = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    assert!(!netns.contains("mfk"), "pod namespaces left behind:\n{netns}");
}
