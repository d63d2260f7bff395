//! The README's quickstart, run for real: the `meshfleet-server` binary with its defaults
//! (embedded SQLite under ./meshfleet-data) and the README's own shell block.

use std::process::{Child, Command};
use std::time::Duration;

use crate::process::{command as server, ServerProcess};

fn readme_quickstart_script() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let after = readme.split("<!-- quickstart").nth(1).expect("README marks its quickstart block");
    let block = after.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("a sh block follows the marker");
    block.to_owned()
}

#[test]
fn readme_quickstart_works_against_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = server(dir.path());
    cmd.env("MESHFLEET_LISTEN", "127.0.0.1:0").env("MESHFLEET_GATEWAY_LISTEN", "127.0.0.1:0");
    let mut running = ServerProcess::start(cmd);
    let address = running.api.clone();

    let script = readme_quickstart_script().replace("127.0.0.1:8080", &address);
    let out = Command::new("bash").arg("-euo").arg("pipefail").arg("-c").arg(&script).current_dir(dir.path()).output().expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "quickstart failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"name\": \"prod-eu-1\""), "the cluster list does not show the cluster:\n{stdout}");
    let manifest = std::fs::read_to_string(dir.path().join("install.yaml")).unwrap();
    assert!(manifest.contains("kind: Deployment") && manifest.contains("mfb_"), "{manifest}");
    assert!(dir.path().join("meshfleet-data/meshfleet.db").exists(), "the embedded database is under ./meshfleet-data");

    // SIGTERM: a graceful, successful exit.
    Command::new("kill").arg("-TERM").arg(running.child.id().to_string()).status().unwrap();
    let status = wait_with_timeout(&mut running.child, Duration::from_secs(20));
    assert!(status.success(), "exit after SIGTERM: {status}");
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < limit, "the process did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_configuration_is_reported_at_once_with_exit_code_64() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meshfleet.toml"), "listen = 8080\nnot_a_setting = 1\n").unwrap();
    let out = server(dir.path())
        .args(["--config", "meshfleet.toml", "--database-url", "mysql://nope"])
        .env("MESHFLEET_LOG_FORMAT", "xml")
        .env("MESHFLEET_ACCESS_TOKEN_TTL_SECS", "-5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["listen", "not_a_setting", "--database-url", "MESHFLEET_LOG_FORMAT", "access_token_ttl_secs"] {
        assert!(stderr.contains(needle), "{needle} not reported:\n{stderr}");
    }
}
