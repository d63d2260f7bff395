//! The `meshfleet` binary as a user runs it, against a real server: logging in (the password on
//! standard input, the session private), clusters, connecting one, the fleet's health as an exit
//! code, alerts' silences, rollouts, problems shown as their title and detail, completions.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use meshfleet_test_support::app::{Engine, Login, TestApp, TestDb, PASSWORD};
use meshfleet_test_support::process::clean_command;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const EMAIL: &str = "ada@example.com";

/// One user's `meshfleet`: its own config directory and home, and nothing inherited.
struct Cli {
    home: tempfile::TempDir,
    base: String,
    env: Vec<(String, String)>,
}

/// What a run of the binary left.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

impl Cli {
    fn new(app: &TestApp) -> Cli {
        Cli { home: tempfile::tempdir().unwrap(), base: app.base.clone(), env: Vec::new() }
    }

    fn config_dir(&self) -> PathBuf {
        self.home.path().join("config")
    }

    fn session_file(&self) -> PathBuf {
        self.config_dir().join("session.json")
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, None).await
    }

    async fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = tokio::process::Command::from(clean_command(env!("CARGO_BIN_EXE_meshfleet")));
        cmd.args(args)
            .env("HOME", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env("MESHFLEET_CONFIG_DIR", self.config_dir())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("meshfleet runs");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).await.unwrap();
        }
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.expect("meshfleet finishes").unwrap();
        Run { code: out.status.code().expect("exited"), stdout: String::from_utf8(out.stdout).unwrap(), stderr: String::from_utf8(out.stderr).unwrap() }
    }

    /// Runs `args` until `done` holds of the run (for at most 30 s), and returns the last run.
    async fn run_until(&self, args: &[&str], done: impl Fn(&Run) -> bool) -> Run {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.run(args).await;
            if done(&run) || Instant::now() > deadline {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Logs in as the owner, the password on standard input.
    async fn login(&self) -> Run {
        self.run_with(&["login", "--url", &self.base, "--email", EMAIL, "--password-stdin"], Some(&format!("{PASSWORD}\n"))).await
    }
}

/// A server with an owner, and their `meshfleet` logged in.
async fn logged_in(app: &TestApp) -> (Login, Cli) {
    let owner = app.owner(EMAIL).await;
    let cli = Cli::new(app);
    cli.login().await.ok();
    (owner, cli)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_keeps_a_private_session_read_from_stdin_and_logout_forgets_it() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let owner = app.owner(EMAIL).await;
    let cli = Cli::new(&app);
    assert_eq!(cli.run(&["clusters", "list"]).await.code, 3, "no session yet");

    let wrong = cli.run_with(&["login", "--url", &app.base, "--email", EMAIL, "--password-stdin"], Some("not the password\n")).await;
    assert_eq!(wrong.code, 3, "{wrong:?}");
    assert!(wrong.stderr.contains("Authentication is required (401)"), "{wrong:?}");
    assert!(!cli.session_file().exists());

    let login = cli.login().await.ok();
    assert!(login.stdout.contains(EMAIL) && login.stdout.contains("owner"), "{login:?}");
    let mode = std::fs::metadata(cli.session_file()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the session is the user's alone");
    let saved = std::fs::read_to_string(cli.session_file()).unwrap();
    assert!(saved.contains(&app.base) && !saved.contains(PASSWORD), "the URL and tokens are kept, never the password: {saved}");
    cli.run(&["clusters", "list"]).await.ok();

    // Logging out ends the session on the server: its token stops working there too.
    let token = serde_json::from_str::<Value>(&saved).unwrap()["access_token"].as_str().unwrap().to_owned();
    assert!(cli.run(&["logout"]).await.ok().stdout.contains("Logged out"));
    assert!(!cli.session_file().exists());
    assert_eq!(app.get("/api/v1/clusters", &token).await.0.as_u16(), 401);
    let after = cli.run(&["clusters", "list"]).await;
    assert!(after.code == 3 && after.stderr.contains("not logged in"), "{after:?}");

    // An API token works as well, and MESHFLEET_URL gives the URL.
    let (_, created) = app.post("/api/v1/tokens", &owner.access, json!({ "name": "ci", "role": "admin" })).await;
    let mut ci = Cli::new(&app);
    ci.env.push(("MESHFLEET_URL".into(), app.base.clone()));
    let login = ci.run_with(&["login", "--token-stdin"], Some(created["token"].as_str().unwrap())).await.ok();
    assert!(login.stdout.contains("an API token"), "{login:?}");
    ci.run(&["clusters", "list"]).await.ok();
}

/// A password log-in's session outlives its access token: the CLI renews it with the refresh
/// token (here on every run: the token lives 1 s, less than the CLI's margin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_access_token_is_renewed_with_the_refresh_token() {
    let app = TestApp::spawn_with(TestDb::new(Engine::Sqlite).await, |c| c.access_token_ttl = Duration::from_secs(1)).await;
    let (_, cli) = logged_in(&app).await;
    let session = || serde_json::from_str::<Value>(&std::fs::read_to_string(cli.session_file()).unwrap()).unwrap();
    let before = session();
    cli.run(&["clusters", "list"]).await.ok();
    let renewed = session();
    assert_ne!(before["refresh_token"], renewed["refresh_token"], "rotated");
    assert_eq!(std::fs::metadata(cli.session_file()).unwrap().permissions().mode() & 0o777, 0o600);

    // Two at once renew it one after the other: neither presents a refresh token already used
    // (which the server would take for a replay, ending the session).
    let runs = tokio::join!(cli.run(&["clusters", "list"]), cli.run(&["status"]));
    assert_eq!((runs.0.code, runs.1.code), (0, 0), "{runs:?}");

    // A session the server ended cannot be renewed: the CLI says to log in again.
    let fresh = app.post_anonymous("/api/v1/token/refresh", json!({ "refresh_token": session()["refresh_token"] })).await;
    let (status, _) = app.post("/api/v1/logout", fresh["access_token"].as_str().unwrap(), json!({})).await;
    assert_eq!(status.as_u16(), 204);
    let ended = cli.run(&["clusters", "list"]).await;
    assert!(ended.code == 3 && ended.stderr.contains("log in"), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_are_created_listed_shown_and_deleted_in_tables_and_json() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let (_, cli) = logged_in(&app).await;

    let created = cli.run(&["clusters", "create", "prod-eu-1", "--label", "env=prod", "--label", "region=eu-west-1"]).await.ok();
    assert!(created.stdout.contains("Created cluster prod-eu-1"), "{created:?}");
    let json = cli.run(&["--output", "json", "clusters", "create", "dev-1"]).await.ok().json();
    assert_eq!(json["cluster"]["status"], "pending", "the API's JSON: {json}");
    let dev = json["cluster"]["id"].as_str().unwrap().to_owned();

    let table = cli.run(&["clusters", "list"]).await.ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("STATUS"), "{table}");
    assert!(lines[1].starts_with("dev-1 ") && lines[2].starts_with("prod-eu-1 "), "{table}");
    assert!(lines[2].contains("env=prod,region=eu-west-1") && lines[2].contains("pending"), "{table}");
    let listed = cli.run(&["clusters", "list", "--output", "json"]).await.ok().json();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dev-1", "prod-eu-1"]);
    assert!(listed[0]["created_at"].is_string(), "every field the API sent: {listed}");

    let shown = cli.run(&["clusters", "get", "prod-eu-1"]).await.ok().stdout;
    assert!(shown.contains("Name:       prod-eu-1") && shown.contains("Labels:     env=prod,region=eu-west-1"), "{shown}");
    let by_id = cli.run(&["clusters", "get", &dev, "--output", "json"]).await.ok().json();
    assert_eq!((by_id["name"].as_str(), by_id["throttled"].is_array()), (Some("dev-1"), true), "{by_id}");

    assert!(cli.run(&["clusters", "delete", "prod-eu-1"]).await.ok().stdout.contains("Deleted cluster prod-eu-1"));
    cli.run(&["clusters", "delete", &dev]).await.ok();
    assert_eq!(cli.run(&["clusters", "list", "--output", "json"]).await.ok().json(), json!([]));
    let gone = cli.run(&["clusters", "get", "prod-eu-1"]).await;
    assert!(gone.code == 3 && gone.stderr.contains("no cluster named \"prod-eu-1\""), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_show_the_problem_title_detail_and_field_and_bad_usage_is_64() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let (_, cli) = logged_in(&app).await;

    let bad = cli.run(&["clusters", "create", "Not_A_DNS_Label"]).await;
    assert_eq!(bad.code, 3, "{bad:?}");
    assert!(bad.stderr.starts_with("error: create cluster Not_A_DNS_Label: The request has invalid fields (422)\n  name: "), "{bad:?}");
    assert!(!bad.stderr.contains('{') && bad.stdout.is_empty(), "no raw body: {bad:?}");
    cli.run(&["clusters", "create", "taken"]).await.ok();
    let taken = cli.run(&["clusters", "create", "taken"]).await;
    assert!(taken.code == 3 && taken.stderr.contains("Conflict (409)") && taken.stderr.contains("field name: "), "{taken:?}");

    let mut away = Cli::new(&app);
    away.env = vec![("MESHFLEET_URL".into(), "http://127.0.0.1:1".into()), ("MESHFLEET_TOKEN".into(), "mft_x".into())];
    let unreachable = away.run(&["status"]).await;
    assert!(unreachable.code == 3 && unreachable.stderr.contains("cannot reach the API"), "{unreachable:?}");

    let usage = cli.run(&["clusters", "create"]).await;
    assert_eq!(usage.code, 64, "{usage:?}");
    assert_eq!(cli.run(&["alerts", "silence", "--matcher", "novalue", "--duration", "1h", "--comment", "x"]).await.code, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_writes_the_manifest_privately_or_pipes_it_to_kubectl() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let (_, mut cli) = logged_in(&app).await;
    cli.run(&["clusters", "create", "prod-eu-1"]).await.ok();

    let stdout = cli.run(&["connect", "prod-eu-1", "--meshed-namespace", "shop"]).await.ok().stdout;
    assert!(stdout.contains("name: meshfleet-agent-bootstrap") && stdout.contains("namespace: shop"), "{stdout}");
    let file = cli.home.path().join("install.yaml");
    let wrote = cli.run(&["connect", "prod-eu-1", "-o", file.to_str().unwrap()]).await.ok();
    assert!(wrote.stdout.is_empty() && wrote.stderr.contains("kubectl apply -f"), "{wrote:?}");
    assert!(std::fs::read_to_string(&file).unwrap().contains("MESHFLEET_BOOTSTRAP_TOKEN"));
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "the manifest holds a token");

    let record = cli.home.path().join("kubectl");
    let kubectl = fake_kubectl(cli.home.path(), &record, 0);
    cli.env.push(("MESHFLEET_KUBECTL".into(), kubectl.display().to_string()));
    cli.run(&["connect", "prod-eu-1", "--apply"]).await.ok();
    assert_eq!(std::fs::read_to_string(record.with_extension("args")).unwrap().trim(), "apply -f -");
    let applied = std::fs::read_to_string(record.with_extension("stdin")).unwrap();
    assert!(applied.contains("kind: Secret") && applied.contains("MESHFLEET_BOOTSTRAP_TOKEN"), "{applied}");

    let failing = fake_kubectl(cli.home.path(), &record, 1);
    cli.env.push(("MESHFLEET_KUBECTL".into(), failing.display().to_string()));
    let failed = cli.run(&["connect", "prod-eu-1", "--apply"]).await;
    assert!(failed.code == 3 && failed.stderr.contains("apply failed"), "{failed:?}");
}

/// A kubectl that records its arguments and standard input beside `record`, then exits `code`.
fn fake_kubectl(dir: &Path, record: &Path, code: i32) -> PathBuf {
    let path = dir.join(format!("kubectl-{code}"));
    let script = format!("#!/bin/sh\necho \"$@\" > '{r}.args'\ncat > '{r}.stdin'\nexit {code}\n", r = record.display());
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_show_the_trust_anchors_next_expiry_and_a_clusters_certificates() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let (owner, cli) = logged_in(&app).await;
    let none = cli.run(&["certs"]).await.ok().stdout;
    assert!(none.starts_with("Trust domain: cluster.local") && none.contains("No trust anchor yet.") && none.contains("Next expiry: none known"), "{none}");

    let (status, anchor) = app.post("/api/v1/trust-anchors", &owner.access, json!({ "common_name": "acme root" })).await;
    assert_eq!(status.as_u16(), 201, "{anchor}");
    let fingerprint = anchor["fingerprint"].as_str().unwrap();
    let table = cli.run(&["certs"]).await.ok().stdout;
    let row = table.lines().find(|l| l.starts_with(&fingerprint[..16])).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("active") && row.contains("generated") && row.ends_with("CN=acme root"), "{table}");
    assert!(table.contains("Next expiry: trust-anchor of the organization, "), "{table}");
    let json = cli.run(&["certs", "--output", "json"]).await.ok().json();
    assert_eq!(json["trust_anchors"]["anchors"][0]["fingerprint"], fingerprint, "{json}");
    assert_eq!(json["next_expiry"]["next"]["kind"], "trust-anchor", "{json}");

    cli.run(&["clusters", "create", "prod-eu-1"]).await.ok();
    let cluster = cli.run(&["certs", "prod-eu-1"]).await.ok().stdout;
    assert!(cluster.starts_with("Cluster prod-eu-1") && cluster.contains("no certificate yet") && cluster.contains("Proxies: 0 pods"), "{cluster}");
    assert_eq!(cli.run(&["certs", "prod-eu-1", "--output", "json"]).await.ok().json()["bundle"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_listed_and_a_silence_is_created_with_its_matchers() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let (owner, cli) = logged_in(&app).await;
    let listed = cli.run(&["alerts", "list"]).await.ok();
    assert!(listed.stdout.starts_with("SEVERITY"), "{listed:?}");
    assert_eq!(cli.run(&["alerts", "list", "--output", "json"]).await.ok().json()["items"], json!([]));

    let args = ["alerts", "silence", "--matcher", "cluster=prod-eu-1", "--matcher", "alertname=~agent|certificate_expiry"];
    let created = cli
        .run(&[&args[..], &["--matcher", "env!=dev", "--matcher", "severity!~info", "--duration", "2h", "--comment", "planned maintenance"]].concat())
        .await
        .ok();
    assert!(created.stdout.starts_with("Created silence ") && created.stdout.contains("(active)"), "{created:?}");

    let (_, page) = app.get("/api/v1/silences", &owner.access).await;
    let silence = &page["items"][0];
    assert_eq!(
        silence["matchers"],
        json!([
            { "name": "cluster", "op": "=", "value": "prod-eu-1" },
            { "name": "alertname", "op": "=~", "value": "agent|certificate_expiry" },
            { "name": "env", "op": "!=", "value": "dev" },
            { "name": "severity", "op": "!~", "value": "info" },
        ])
    );
    assert_eq!(silence["comment"], "planned maintenance");
    let span = |field: &str| secs(silence[field].as_str().unwrap());
    let window = span("ends_at") - span("starts_at");
    assert!((7190..=7210).contains(&window), "two hours: {silence}");

    let refused = cli.run(&["alerts", "silence", "--matcher", "cluster=~", "--duration", "1h", "--comment", "everything"]).await;
    assert!(refused.code == 3 && refused.stderr.contains("(422)"), "a silence must not mute everything: {refused:?}");
}

fn secs(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_0_for_an_informed_fleet_and_2_once_an_agent_is_lost() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let (_, cli) = logged_in(&app).await;
    let empty = cli.run(&["status"]).await.ok();
    assert!(empty.stdout.starts_with("Fleet: 0 critical"), "{empty:?}");

    // A cluster no agent has connected to yet is only information.
    cli.run(&["clusters", "create", "waiting"]).await.ok();
    let pending = cli.run(&["status"]).await.ok();
    assert!(pending.stdout.contains("1 pending") && pending.stdout.contains("no agent connected yet"), "{pending:?}");
    assert_eq!(cli.run(&["status", "waiting", "--output", "json"]).await.ok().json()["health"], "pending");

    // An agent that connected, then went away, is critical.
    let dir = tempfile::tempdir().unwrap();
    let stop = fleet(&app, "sim", dir.path());
    connected(&cli, "sim-0000").await;
    drop(stop);
    let last = cli.run_until(&["status"], |r| r.code == 2).await;
    assert_eq!(last.code, 2, "{last:?}");
    assert!(last.stdout.contains("sim-0000") && last.stdout.contains("critical") && last.stdout.contains("agent disconnected"), "{last:?}");
    assert_eq!(cli.run(&["status", "sim-0000"]).await.code, 2);
    assert_eq!(cli.run(&["status", "waiting"]).await.code, 0, "one cluster's status is its own");
}

/// The demo simulator running `<prefix>-0000`, one connected cluster, until the sender drops.
fn fleet(app: &TestApp, prefix: &str, dir: &Path) -> tokio::sync::oneshot::Sender<()> {
    let config = meshfleet_sim::FleetConfig {
        api_url: app.base.clone(),
        auth: meshfleet_sim::Auth::Password { email: EMAIL.into(), password: SecretString::from(PASSWORD.to_owned()) },
        clusters: 1,
        prefix: prefix.into(),
        state_dir: dir.join(prefix),
        metrics_interval: Duration::from_millis(200),
        status_interval: Duration::from_secs(60),
        agent_version: "meshfleet-sim/0.1.0".into(),
        setup_concurrency: 1,
        bad_upgrade_share: 0.0,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(meshfleet_sim::run(config, async move {
        let _ = stopped.await;
    }));
    stop
}

/// Waits until `meshfleet clusters get NAME` shows it connected.
async fn connected(cli: &Cli, name: &str) {
    let up = cli.run_until(&["clusters", "get", name, "--output", "json"], |c| c.code == 0 && c.json()["status"] == "connected").await;
    assert!(up.code == 0 && up.json()["status"] == "connected", "{name} never connected: {up:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_planned_started_paused_and_followed_on_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.yaml");
    std::fs::write(&catalog, "releases:\n- {version: 0.2.0, released_on: 2026-12-01}\n").unwrap();
    let app = TestApp::spawn_with(TestDb::new(Engine::Sqlite).await, |c| c.release_catalog = Some(catalog.clone())).await;
    let (_, cli) = logged_in(&app).await;
    let _fleet = fleet(&app, "sim", dir.path());
    connected(&cli, "sim-0000").await;
    cli.run(&["clusters", "create", "waiting"]).await.ok();

    // The simulated cluster's control plane reports its version shortly after it connects.
    let plan = cli.run_until(&["upgrades", "plan", "--version", "0.2.0"], |r| r.stdout.contains("1 clusters in 1 waves")).await.ok().stdout;
    let row = plan.lines().find(|l| l.contains("sim-0000")).unwrap_or_else(|| panic!("{plan}"));
    assert!(row.starts_with("1 ") && row.contains("canary") && row.ends_with("0.2.0"), "{plan}");
    assert!(plan.contains("Left alone:") && plan.lines().any(|l| l.starts_with("waiting ")), "the pending cluster is left alone: {plan}");
    let selected = cli.run(&["upgrades", "plan", "--version", "0.2.0", "--selector", "none=here", "--output", "json"]).await.ok().json();
    assert_eq!((selected["target_version"].as_str(), selected["waves"].as_array().map(Vec::len)), (Some("0.2.0"), Some(0)), "{selected}");
    let unknown = cli.run(&["upgrades", "plan", "--version", "9.9.9"]).await;
    assert!(unknown.code == 3 && unknown.stderr.contains("target_version: 9.9.9 is not in the release catalog"), "{unknown:?}");

    let started = cli.run(&["upgrades", "start", "--version", "0.2.0", "--output", "json"]).await.ok().json();
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["state"], "running");
    assert!(cli.run(&["upgrades", "pause", &id]).await.ok().stdout.contains("is paused"));
    let status = cli.run(&["upgrades", "status", &id]).await.ok().stdout;
    assert!(status.starts_with(&format!("Rollout {id} to 0.2.0: paused")) && status.contains("sim-0000"), "{status}");
    let all = cli.run(&["upgrades", "status"]).await.ok().stdout;
    assert!(all.lines().nth(1).is_some_and(|l| l.starts_with(&id) && l.contains("paused")), "{all}");
    assert!(cli.run(&["upgrades", "resume", &id]).await.ok().stdout.contains("is running"));
    let again = cli.run(&["upgrades", "resume", &id]).await;
    assert!(again.code == 3 && again.stderr.contains("Conflict (409)"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_has_examples_and_exit_codes_and_completions_are_printed() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let cli = Cli::new(&app);
    let help = cli.run(&["--help"]).await.ok().stdout;
    assert!(help.contains("Exit codes:") && help.contains("64  bad usage"), "{help}");
    for command in [&["status"][..], &["clusters", "create"], &["alerts", "silence"], &["upgrades", "plan"], &["connect"]] {
        let help = cli.run(&[command, &["--help"]].concat()).await.ok().stdout;
        assert!(help.contains("Example"), "{command:?}: {help}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = cli.run(&["completions", shell]).await.ok().stdout;
        assert!(script.contains("meshfleet") && script.contains("clusters"), "{shell}: {script}");
    }
}
