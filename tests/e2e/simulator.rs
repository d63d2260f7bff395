//! The demo fleet simulator as a user runs it: the `meshfleet-sim` binary against a real server.

use std::time::Duration;

use meshfleet_test_support::app::{Engine, TestApp, PASSWORD};
use meshfleet_test_support::process::{build_bins, clean_command, terminate, within, Output};

/// The `meshfleet-sim` binary as a user runs it from a checkout: agent identities (private keys)
/// go to the user's state directory, not the working folder, and its piped logs carry no colour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_binary_keeps_identities_in_the_state_directory_and_logs_plainly() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    app.owner("ada@example.com").await;
    let bin = tokio::task::spawn_blocking(|| build_bins("meshfleet-sim", &["meshfleet-sim"]).join("meshfleet-sim")).await.unwrap();
    let (home, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cmd = clean_command(bin);
    cmd.current_dir(work.path())
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .args(["--api", &app.base, "--email", "ada@example.com", "--password", PASSWORD, "--clusters", "1", "--status-interval", "1s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut sim = cmd.spawn().unwrap();
    let output = Output::capture(&mut sim);
    let identity = home.path().join(".local/state/meshfleet-sim/sim-0000.identity.json");
    let running = within(Duration::from_secs(30), || async { identity.exists() && output.tail().contains("connected 1/1") }).await;
    terminate(&mut sim, Duration::from_secs(10));
    let logs = output.tail();
    assert!(running.is_some(), "no identity at {} or no connected agent:\n{logs}", identity.display());
    assert!(logs.contains("registered"), "{logs}");
    assert!(!logs.contains('\x1b'), "colour codes in piped logs:\n{logs:?}");
    let left_in_work: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left_in_work.is_empty(), "the simulator wrote into the working folder: {left_in_work:?}");
}
