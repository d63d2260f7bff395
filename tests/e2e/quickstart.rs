//! The README's quickstart, run for real: the `meshfleet-server` binary with its defaults
//! (embedded SQLite under ./meshfleet-data) and the README's own shell block.

use std::process::{Child, Command};
use std::time::Duration;

use meshfleet_test_support::server::{ServerBin, ServerProcess};

/// The server binary in `dir`, with a clean MESHFLEET_* environment.
fn server(dir: &std::path::Path) -> Command {
    ServerBin::built().command(dir)
}

/// The server binary in `dir` on new local ports, with extra MESHFLEET_* settings.
fn start_server(dir: &std::path::Path, env: &[(&str, &str)]) -> ServerProcess {
    let mut cmd = server(dir);
    cmd.env("MESHFLEET_LISTEN", "127.0.0.1:0").env("MESHFLEET_GATEWAY_LISTEN", "127.0.0.1:0").envs(env.iter().copied());
    ServerProcess::start(cmd)
}

/// The README's sh block after `<!-- {marker}`.
fn readme_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let after = readme.split(&format!("<!-- {marker}")).nth(1).unwrap_or_else(|| panic!("README marks its {marker} block"));
    let block = after.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("a sh block follows the marker");
    block.to_owned()
}

fn readme_quickstart_script() -> String {
    readme_block("quickstart")
}

/// Runs the quickstart block with bash against the server at `address`, in `dir`.
fn run_quickstart(script: &str, address: &str, dir: &std::path::Path) -> std::process::Output {
    run_script(script.replace("127.0.0.1:8080", address), Command::new("bash").current_dir(dir))
}

fn run_script(script: String, bash: &mut Command) -> std::process::Output {
    bash.arg("-euo").arg("pipefail").arg("-c").arg(&script).output().expect("bash runs")
}

/// The install manifest's documents, parsed; panics unless it is YAML with the agent's objects.
fn install_manifest(dir: &std::path::Path) -> Vec<serde_yaml_ng::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(dir.join("install.yaml")).unwrap();
    let docs: Vec<serde_yaml_ng::Value> =
        serde_yaml_ng::Deserializer::from_str(&text).map(|d| serde_yaml_ng::Value::deserialize(d).expect("install.yaml is YAML")).collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in ["Namespace", "ServiceAccount", "Secret", "Deployment"] {
        assert!(kinds.contains(&kind), "no {kind} in install.yaml: {kinds:?}\n{text}");
    }
    docs
}

fn bootstrap_token(docs: &[serde_yaml_ng::Value]) -> String {
    let secret = docs.iter().find(|d| d["kind"].as_str() == Some("Secret")).unwrap();
    secret["stringData"]["MESHFLEET_BOOTSTRAP_TOKEN"].as_str().unwrap().to_owned()
}

#[test]
fn readme_quickstart_works_against_the_real_binary_and_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = start_server(dir.path(), &[]);
    let address = running.api.clone();
    let script = readme_quickstart_script();

    // The second run finds the account and the cluster in the same data folder.
    let mut tokens = Vec::new();
    for run in ["first", "second"] {
        let _ = std::fs::remove_file(dir.path().join("install.yaml"));
        let out = run_quickstart(&script, &address, dir.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{run} quickstart run failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.matches("\"name\": \"prod-eu-1\"").count(), 1, "{run} run: the cluster list does not show the one cluster:\n{stdout}");
        let token = bootstrap_token(&install_manifest(dir.path()));
        assert!(token.starts_with("mfb_"), "{token}");
        tokens.push(token);
    }
    assert_ne!(tokens[0], tokens[1], "each fetch of the manifest issues a fresh bootstrap token");
    assert!(dir.path().join("meshfleet-data/meshfleet.db").exists(), "the embedded database is under ./meshfleet-data");

    // A refusal is visible: the account exists with another password, so the sign-up the
    // block falls back to is refused, the run fails, and the server's reason is shown.
    let wrong = script.replace("a long passphrase", "another long passphrase");
    let out = run_quickstart(&wrong, &address, dir.path());
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a refused quickstart exited 0:\n{shown}");
    assert!(shown.contains("an account with this e-mail exists") && shown.contains("409"), "the server's reason is not shown:\n{shown}");

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

#[test]
fn logs_to_a_pipe_carry_no_colour_and_warn_about_loopback_addresses_handed_out() {
    use meshfleet_test_support::process::{terminate, Output};
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = server(dir.path());
    // Reachable from other machines, but public_url left to its default.
    cmd.env("MESHFLEET_LISTEN", "0.0.0.0:0").env("MESHFLEET_GATEWAY_LISTEN", "127.0.0.1:0").env_remove("NO_COLOR");
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let output = Output::capture(&mut child);
    let announced = std::iter::from_fn(|| output.stdout.recv_timeout(Duration::from_secs(60)).ok()).any(|line| line.contains("agent gateway"));
    terminate(&mut child, Duration::from_secs(10));
    let logs = output.tail();
    assert!(announced, "the server did not start:\n{logs}");
    assert!(logs.contains("WARN") && logs.contains("public_url defaults to http://0.0.0.0:"), "no warning about the loopback public_url:\n{logs}");
    assert!(!logs.contains('\x1b'), "colour codes in piped logs:\n{logs:?}");
}

#[test]
fn an_address_in_use_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = server(dir.path()).env("MESHFLEET_LISTEN", "127.0.0.1:0").env("MESHFLEET_GATEWAY_LISTEN", &addr).output().unwrap();
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains(&format!("binding the gateway address {addr}")), "the error does not name {addr}:\n{shown}");
}

/// Runs a walkthrough with the tools on `path` and `home` as HOME; panics unless it succeeds,
/// showing what it printed and the simulator's log. Returns its stdout, and that text.
fn run_walkthrough(run: &str, script: &str, dir: &std::path::Path, path: &str, home: &std::path::Path) -> (String, String) {
    let out = run_script(script.to_owned(), Command::new("bash").current_dir(dir).env("PATH", path).env("HOME", home));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let shown = format!("{stdout}\n{}\nsim.log:\n{}", String::from_utf8_lossy(&out.stderr), std::fs::read_to_string(dir.join("sim.log")).unwrap_or_default());
    assert!(out.status.success(), "{run} run failed ({}):\n{shown}", out.status);
    (stdout, shown)
}

/// The README's alerts walkthrough, after its quickstart, twice: the demo fleet (the real
/// `meshfleet-sim` binary) fires alerts that reach `meshfleet-receiver`, which verifies their
/// signatures with another implementation than the server's.
#[test]
fn readme_alerts_walkthrough_delivers_signed_events_and_again() {
    let (dir, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bins = meshfleet_test_support::process::build_bins("meshfleet-sim", &["meshfleet-sim", "meshfleet-receiver"]);
    let mut running = start_server(dir.path(), &[("MESHFLEET_ALERT_WEBHOOK_ALLOW", "127.0.0.1")]);
    let receiver = format!("127.0.0.1:{}", meshfleet_test_support::process::free_port());
    let script = format!("{}\n{}", readme_quickstart_script(), readme_block("alerts walkthrough"))
        .replace("127.0.0.1:8080", &running.api)
        .replace("127.0.0.1:9000", &receiver);
    let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());

    for run in ["first", "second"] {
        let (stdout, shown) = run_walkthrough(run, &script, dir.path(), &path, home.path());
        let deliveries: Vec<&str> = stdout.lines().filter(|l| l.starts_with("verified msg_")).collect();
        assert!(deliveries.iter().any(|l| l.contains(" alert.test ")), "{run} run: no verified test event:\n{shown}");
        if run == "first" {
            assert!(deliveries.iter().any(|l| l.contains(" alert.firing ")), "the demo fleet's alerts did not arrive:\n{shown}");
        }
        assert!(!stdout.contains("REJECTED") && !stdout.contains("\n0 alerts firing"), "{run} run:\n{shown}");
    }
    running.child.kill().unwrap();
    let _ = running.child.wait();
}

/// The README's rotation walkthrough, after its quickstart, twice: the demo fleet (the real
/// `meshfleet-sim` binary) gets issuers signed by the organization's anchor and goes through a
/// whole trust-anchor rotation; the second run, a restarted simulator with the issuers it saved,
/// through another.
#[test]
fn readme_rotation_walkthrough_rotates_the_demo_fleet_and_again() {
    let (dir, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bins = meshfleet_test_support::process::build_bins("meshfleet-sim", &["meshfleet-sim"]);
    let mut running = start_server(dir.path(), &[]);
    let script = format!("{}\n{}", readme_quickstart_script(), readme_block("rotation walkthrough")).replace("127.0.0.1:8080", &running.api);
    let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());

    let mut active = Vec::new();
    for run in ["first", "second"] {
        let (stdout, shown) = run_walkthrough(run, &script, dir.path(), &path, home.path());
        assert!(stdout.contains("\ndone: 10 of 11 clusters done\n"), "{run} run: the rotation did not finish over the demo fleet:\n{shown}");
        let anchors: Vec<&str> = stdout.lines().filter(|l| l.ends_with(" active") || l.ends_with(" inactive")).collect();
        let now_active: Vec<&str> = anchors.iter().filter(|l| l.ends_with(" active")).copied().collect();
        assert_eq!(now_active.len(), 1, "{run} run: one active anchor:\n{shown}");
        assert_eq!(anchors.len(), if run == "first" { 2 } else { 3 }, "{run} run: each rotation leaves the old anchor inactive:\n{shown}");
        active.push(now_active[0].to_owned());
    }
    assert_ne!(active[0], active[1], "the second run rotated again");
    // The simulator kept each cluster's issuer key with mode 0600, as it keeps identities.
    let state = home.path().join(".local/state/meshfleet-sim");
    let saved: Vec<_> = std::fs::read_dir(&state).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".pki.json")).collect();
    assert_eq!(saved.len(), 10, "{state:?}");
    use std::os::unix::fs::PermissionsExt;
    assert!(saved.iter().all(|e| e.metadata().unwrap().permissions().mode() & 0o777 == 0o600));
    running.child.kill().unwrap();
    let _ = running.child.wait();
}

/// The README's rollout walkthrough, after its quickstart, twice: two demo fleets (the real
/// `meshfleet-sim` binary), one healthy and one on which the new version fails requests; the
/// healthy one is upgraded in waves, the bad one's canary fails its gate, is rolled back, and
/// its rollout pauses with the other cluster untouched.
#[test]
fn readme_rollout_walkthrough_upgrades_the_demo_fleet_and_rolls_a_bad_canary_back_and_again() {
    let (dir, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bins = meshfleet_test_support::process::build_bins("meshfleet-sim", &["meshfleet-sim"]);
    std::fs::write(dir.path().join("releases.yaml"), "releases:\n- {version: 0.2.0, released_on: 2026-12-01}\n").unwrap();
    let mut running = start_server(dir.path(), &[("MESHFLEET_RELEASE_CATALOG", "releases.yaml")]);
    let script = format!("{}\n{}", readme_quickstart_script(), readme_block("rollout walkthrough")).replace("127.0.0.1:8080", &running.api);
    let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());

    for run in ["first", "second"] {
        let (stdout, shown) = run_walkthrough(run, &script, dir.path(), &path, home.path());
        let last_state = |prefix: &str| stdout.lines().rev().find(|l| l.contains(&format!(" {prefix}-0000="))).unwrap_or_default().to_owned();
        let good = last_state("good");
        assert!(good.starts_with("completed: ") && good.matches("=done").count() == 4, "{run} run: the healthy fleet was not upgraded:\n{shown}");
        let bad = last_state("bad");
        assert_eq!(bad, "paused: bad-0000=rolled_back bad-0001=pending", "{run} run: the bad canary was not rolled back alone:\n{shown}");
        assert!(stdout.contains("bad-0000: gate failed: success rate fell"), "{run} run: no failed gate with its values:\n{shown}");
        assert!(stdout.contains("\nno gate failed\n") && stdout.trim_end().ends_with("rollout aborted"), "{run} run:\n{shown}");
    }
    running.child.kill().unwrap();
    let _ = running.child.wait();
}

/// The README's command-line walkthrough, after its quickstart, twice, with the real `meshfleet`
/// binary (its session under the test's HOME).
#[test]
fn readme_cli_walkthrough_runs_as_written_and_again() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bins = meshfleet_test_support::process::build_bins("meshfleet-cli", &["meshfleet"]);
    let mut running = start_server(dir.path(), &[]);
    let script = format!("{}\n{}", readme_quickstart_script(), readme_block("cli walkthrough")).replace("127.0.0.1:8080", &running.api);
    let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());
    for run in ["first", "second"] {
        let (stdout, shown) = run_walkthrough(run, &script, dir.path(), &path, home.path());
        assert!(stdout.contains("staging-1") && stdout.contains("prod-eu-1"), "{run} run lists no clusters:\n{shown}");
        let mode = std::fs::metadata(dir.path().join("staging-1.yaml")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{run} run: the manifest holds a bootstrap token");
        assert!(std::fs::read_to_string(dir.path().join("meshfleet.bash")).unwrap().contains("meshfleet"), "{run} run: no completions");
    }
    running.child.kill().unwrap();
    let _ = running.child.wait();
}
