//! What a newcomer runs first: the README's local walkthrough, taken from proxy/README.md and
//! run with bash against the built binaries, twice in a row (it must stop what it started); and
//! a listener that cannot bind, which must say which address it wanted.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::Pki;

/// The shell block after the README's `marker` (e.g. `<!-- walkthrough`).
pub(crate) fn readme_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme.split(marker).nth(1).expect("README marks its walkthrough block");
    let block = after.split("```sh\n").nth(1).and_then(|b| b.split("\n```").next());
    block.expect("a sh block follows the marker").to_owned()
}

/// Every port the walkthrough listens on or dials (`127.0.0.1:P`, `localhost:P`).
pub(crate) fn ports(script: &str) -> Vec<u16> {
    let mut found: Vec<u16> = ["127.0.0.1:", "localhost:"]
        .iter()
        .flat_map(|host| script.split(host).skip(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// The script with each port in `map` replaced wherever it stands as a number after `:` or a
/// space (one pass, so a new port is never rewritten again).
pub(crate) fn rewrite_ports(script: &str, map: &HashMap<u16, u16>) -> String {
    let mut out = String::with_capacity(script.len());
    let mut rest = script;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let len = rest[start..].find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len() - start);
        let (before, digits) = (&rest[..start], &rest[start..start + len]);
        out.push_str(before);
        let after_separator = before.ends_with(':') || before.ends_with(' ');
        match digits.parse::<u16>().ok().and_then(|p| map.get(&p)).filter(|_| after_separator) {
            Some(new) => out.push_str(&new.to_string()),
            None => out.push_str(digits),
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `script` with `bash -euo pipefail` in `dir`, in a process group of its own so that
/// whatever it started can be stopped if it hangs.
pub(crate) fn run_bash(script: &str, dir: &Path, limit: Duration) -> (bool, String) {
    let out_path = dir.join("walkthrough.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            // The group is the one made for this script: bash and what it started, nothing else.
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(s) => (s.success(), format!("exit {s}\n{output}")),
        None => (false, format!("timed out after {limit:?}\n{output}")),
    }
}

#[test]
fn readme_walkthrough_runs_as_written_twice() {
    let script = readme_block("<!-- walkthrough");
    let readme_ports = ports(&script);
    for taken in [8080, 8443] {
        assert!(!readme_ports.contains(&taken), "the walkthrough uses {taken}, a meshfleet-server default: {readme_ports:?}");
    }
    // Free ports instead of the README's, so the test does not depend on what else runs here.
    let map: HashMap<u16, u16> = readme_ports.iter().map(|&p| (p, free_port())).collect();
    let repo = tempfile::tempdir().unwrap();
    let state = repo.path().join("mesh");
    assert!(script.contains("D=/tmp/meshfleet-mesh;"), "{script}");
    let script = rewrite_ports(&script, &map).replace("D=/tmp/meshfleet-mesh;", &format!("D={};", state.display()));
    // A checkout whose target/release holds the binaries under test; CARGO_TARGET_DIR unset.
    let bins = Path::new(env!("CARGO_BIN_EXE_meshfleet-proxy")).parent().unwrap();
    std::fs::create_dir_all(repo.path().join("target")).unwrap();
    std::os::unix::fs::symlink(bins, repo.path().join("target/release")).unwrap();

    for run in ["first", "second"] {
        let (ok, output) = run_bash(&script, repo.path(), Duration::from_secs(120));
        assert!(ok, "{run} run of the walkthrough failed:\n{output}");
        assert!(output.to_ascii_uppercase().contains("<!DOCTYPE HTML"), "{run} run: the app's page did not come through:\n{output}");
        assert!(output.contains("request_total{"), "{run} run: no request_total on proxy B:\n{output}");
        assert!(output.contains("spiffe://cluster.local/ns/web/sa/frontend"), "{run} run: proxy A's identity not shown:\n{output}");
        assert!(!output.contains("\x1b["), "{run} run: colour codes in piped logs:\n{output:?}");
    }
}

#[test]
fn a_listener_that_cannot_bind_names_its_address() {
    let pki = Pki::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let file = |name: &str| pki.path(name).display().to_string();
    let controller = Command::new(env!("CARGO_BIN_EXE_meshfleet-controller"))
        .args(["--verifier", "file", "--tokens-file", &file("tokens.json"), "--issuer-cert", &file("issuer.crt"), "--issuer-key", &file("issuer.key")])
        .args(["--trust-bundle", &file("bundle.crt"), "--grpc-addr", &addr, "--admin-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let proxy = Command::new(env!("CARGO_BIN_EXE_meshfleet-proxy"))
        .args(["--controller-addr", "127.0.0.1:1", "--trust-anchors", &file("bundle.crt"), "--token-file", &file("tok-a")])
        .args(["--admin-addr", "127.0.0.1:0", "--inbound-addr", &addr])
        .output()
        .unwrap();
    for (what, out) in [("controller gRPC", controller), ("proxy inbound", proxy)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(&format!("address {addr}")) && stderr.contains("in use"), "{what}: the error does not name {addr}:\n{stderr}");
    }
}
