//! The dashboard in real headless Chromium (driven over WebDriver): sign up, create a
//! cluster, copy the install command, start an agent and watch the cluster turn connected
//! without a reload; no console errors; viewers see no mutating controls; another
//! organization's cluster is a not-found page. Screenshots land in the test artifacts.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use meshfleet_agent::ClientConfig;
use meshfleet_client::Client as ApiClient;
use meshfleet_sim::{synthetic_cluster, SharedCluster};
use meshfleet_test_support::process::free_port;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::helpers::{Engine, TestApp, PASSWORD};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub(crate) struct Browser {
    pub(crate) client: Client,
    driver_url: String,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium session, or None (with a notice) where Chromium is not installed.
/// CI installs it, so there a missing browser is a failure, not a skip.
pub(crate) async fn browser() -> Option<Browser> {
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must install chromium and chromium-driver");
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "\nNOTE: the dashboard browser tests are SKIPPED: install chromium and chromium-driver to run them.\n");
        return None;
    }
    let port = free_port();
    let driver = Driver(Command::new(CHROMEDRIVER).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let driver_url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("{driver_url}/status")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                     format!("--user-data-dir={}", profile.path().display())],
        },
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    let caps: serde_json::Map<String, Value> = serde_json::from_value(caps).unwrap();
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver_url)
        .await
        .expect("a Chromium session");
    Some(Browser { client, driver_url, _driver: driver, _profile: profile })
}

impl Browser {
    pub(crate) async fn text(&self, css: &str) -> String {
        // A live update may replace the element between finding and reading it: find it again.
        for _ in 0..10 {
            let el = self.client.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(css)).await.unwrap();
            match el.text().await {
                Err(fantoccini::error::CmdError::Standard(e)) if e.error == fantoccini::error::ErrorStatus::StaleElementReference => continue,
                other => return other.unwrap(),
            }
        }
        panic!("{css} kept being replaced");
    }

    pub(crate) async fn fill(&self, css: &str, value: &str) {
        let el = self.client.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(css)).await.unwrap();
        el.clear().await.unwrap();
        el.send_keys(value).await.unwrap();
    }

    pub(crate) async fn click(&self, css: &str) {
        // As in `text`: a live update may replace the element between finding and clicking it.
        for _ in 0..10 {
            let el = self.client.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(css)).await.unwrap();
            match el.click().await {
                Err(fantoccini::error::CmdError::Standard(e)) if e.error == fantoccini::error::ErrorStatus::StaleElementReference => continue,
                other => return other.unwrap(),
            }
        }
        panic!("{css} kept being replaced");
    }

    pub(crate) async fn wait_url(&self, part: &str) {
        for _ in 0..100 {
            if self.client.current_url().await.unwrap().as_str().contains(part) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never reached {part}: at {}", self.client.current_url().await.unwrap());
    }

    /// Waits until `css` shows `want`, without navigating.
    pub(crate) async fn wait_text(&self, css: &str, want: &str, within: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if let Ok(el) = self.client.find(Locator::Css(css)).await {
                if el.text().await.unwrap_or_default().contains(want) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub(crate) async fn screenshot(&self, name: &str) {
        let dir = std::env::var_os("MESHFLEET_TEST_ARTIFACTS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("meshfleet-test-artifacts"))
            .join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), self.client.screenshot().await.unwrap()).unwrap();
    }

    /// Console errors and uncaught exceptions of the page so far.
    pub(crate) async fn errors(&self) -> Vec<String> {
        let mut errors: Vec<String> =
            serde_json::from_value(self.client.execute("return window.__mfErrors || ['app.js did not load']", vec![]).await.unwrap()).unwrap_or_default();
        let session = self.client.session_id().await.unwrap().unwrap_or_default();
        let log: Value = reqwest::Client::new()
            .post(format!("{}/session/{session}/se/log", self.driver_url))
            .json(&json!({ "type": "browser" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        for entry in log["value"].as_array().into_iter().flatten() {
            // Chromium logs every 4xx answer; the test provokes some on purpose (a refused
            // form, the not-found page). Those are shown to the user, not errors of the page.
            let message = entry["message"].as_str().unwrap_or("");
            if entry["level"] == "SEVERE" && !message.contains("the server responded with a status of 4") {
                errors.push(entry["message"].as_str().unwrap_or("").to_owned());
            }
        }
        errors
    }

    pub(crate) async fn assert_clean(&self, page: &str) {
        let errors = self.errors().await;
        assert!(errors.is_empty(), "console errors on {page}: {errors:?}");
    }

    /// Logs in through the log-in page and waits for the fleet.
    pub(crate) async fn log_in(&self, base: &str, email: &str) {
        self.client.goto(&format!("{base}/login")).await.unwrap();
        self.fill("#email", email).await;
        self.fill("#password", PASSWORD).await;
        self.click("button[type=submit]").await;
        self.wait_url("/fleet").await;
    }

    /// Logs out through the page header.
    pub(crate) async fn log_out(&self) {
        self.click("[data-logout]").await;
        self.wait_url("/login").await;
    }

    /// Asserts that the page at `path` offers no control that changes anything.
    pub(crate) async fn assert_read_only(&self, base: &str, path: &str) {
        self.client.goto(&format!("{base}{path}")).await.unwrap();
        let controls = self.client.find_all(Locator::Css("[data-mutates], form[data-api], [data-add-matcher]")).await.unwrap();
        assert!(controls.is_empty(), "{path}: a viewer sees {} mutating controls", controls.len());
        self.assert_clean(path).await;
    }
}

/// A user who is a viewer of `org` only (so the log-in page logs them in to it).
pub(crate) async fn viewer_of(app: &TestApp, org: &str, email: &str) {
    let viewer = meshfleet_server::domain::UserId::new();
    let org: meshfleet_server::domain::OrgId = org.parse().unwrap();
    let mut conn = app.state.db.pool.acquire().await.unwrap();
    let hash = meshfleet_server::secrets::hash_password(&meshfleet_server::domain::Password::parse(PASSWORD).unwrap());
    let email = email.parse().unwrap();
    meshfleet_server::store::accounts::create_user(&mut conn, viewer, &email, &hash, 0).await.unwrap();
    meshfleet_server::store::accounts::add_member(&mut conn, org, viewer, meshfleet_server::domain::Role::Viewer, 0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_connect_a_cluster_and_watch_it_go_live() {
    let Some(b) = browser().await else { return };
    let app = TestApp::spawn(Engine::Sqlite).await;
    let base = app.base.clone();

    // Sign up: the empty fleet explains what to do next.
    b.client.goto(&format!("{base}/signup")).await.unwrap();
    b.screenshot("signup").await;
    b.fill("#email", "ada@example.com").await;
    b.fill("#password", PASSWORD).await;
    b.fill("#organization", "Acme").await;
    b.click("button[type=submit]").await;
    b.wait_url("/fleet").await;
    assert!(b.text("main").await.contains("Your fleet is empty"));
    assert!(b.text("main").await.contains("meshfleet-sim"));
    b.screenshot("fleet-empty").await;
    b.assert_clean("the empty fleet").await;

    // A bad name is explained in words, not JSON.
    b.fill("#cluster-name", "prod-eu-1").await;
    b.fill("#cluster-labels", "env=prod, bad key=x").await;
    b.click("form[data-api='/api/v1/clusters'] button").await;
    assert!(b.wait_text(".form-error", "labels", Duration::from_secs(5)).await, "validation error shown");
    assert!(!b.text(".form-error").await.contains('{'));
    b.fill("#cluster-labels", "env=prod").await;
    b.click("form[data-api='/api/v1/clusters'] button").await;
    b.wait_url("/clusters/").await;
    let cluster_id = b.client.current_url().await.unwrap().path().rsplit('/').next().unwrap().to_owned();
    let command = b.text("#install-command").await;
    assert!(command.contains(&format!("/api/v1/clusters/{cluster_id}/install.yaml")) && command.contains("kubectl apply -f -"), "{command}");
    b.click("[data-copy]").await;
    assert!(b.wait_text("[data-copy]", "Copied", Duration::from_secs(3)).await);
    // The manifest mints a token, so the page fetches it with a POST and the CSRF token.
    b.click("[data-download]").await;
    assert!(b.wait_text("[data-download]", "Downloaded", Duration::from_secs(5)).await, "the manifest was not downloaded");
    assert_eq!(b.text("#live [data-status]").await, "pending");
    b.screenshot("cluster-pending").await;

    // An agent connects: the page turns connected by itself, with no reload.
    b.client.execute("window.__sameDocument = true", vec![]).await.unwrap();
    let owner = app.login("ada@example.com").await;
    let boot = ApiClient::with_token(&base, SecretString::from(owner.access.clone())).bootstrap(&cluster_id).await.unwrap();
    let identity = meshfleet_agent::register(&boot.gateway_address, &boot.ca_pem, boot.token.expose_secret(), "0.1.0-test").await.unwrap();
    let cluster = SharedCluster::new(synthetic_cluster(7));
    let handle = meshfleet_agent::spawn(ClientConfig::new(&boot.gateway_address, &boot.ca_pem), identity, Arc::new(cluster.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let driver = tokio::spawn(meshfleet_sim::drive(handle.reporter(), cluster, Duration::from_millis(300), stop_rx));
    let started = std::time::Instant::now();
    assert!(b.wait_text("#live [data-status]", "connected", Duration::from_secs(10)).await, "the page never showed the agent connected");
    let took = started.elapsed();
    assert_eq!(b.client.execute("return window.__sameDocument === true", vec![]).await.unwrap(), json!(true), "the page reloaded");
    assert!(b.wait_text("#live", "Deployment/", Duration::from_secs(10)).await, "workloads appear");
    b.screenshot("cluster-connected").await;
    b.assert_clean("the cluster page").await;
    eprintln!("cluster shown connected {took:?} after the agent started");

    b.client.goto(&format!("{base}/fleet")).await.unwrap();
    assert!(b.wait_text("tr[data-cluster='prod-eu-1'] [data-status]", "connected", Duration::from_secs(5)).await);
    b.screenshot("fleet").await;
    b.assert_clean("the fleet").await;

    b.client.goto(&format!("{base}/settings")).await.unwrap();
    b.fill("#token-name", "ci").await;
    b.click("form[data-api='/api/v1/tokens'] button").await;
    assert!(b.wait_text("output.secret", "mft_", Duration::from_secs(5)).await, "the new token is shown once");
    b.screenshot("settings").await;
    b.assert_clean("settings").await;

    // A viewer sees no mutating controls; another organization's cluster is not found.
    viewer_of(&app, &owner.org, "viewer@example.com").await;
    let other = app.owner("mallory@example.com").await;
    let foreign = app.create_cluster(&other, "secret-cluster", json!({})).await;
    b.log_out().await;
    b.log_in(&base, "viewer@example.com").await;
    assert!(b.text(".who").await.contains("(viewer)"));
    for path in ["/fleet".to_owned(), format!("/clusters/{cluster_id}"), "/settings".to_owned()] {
        b.assert_read_only(&base, &path).await;
    }
    b.client.goto(&format!("{base}/clusters/{}", foreign["cluster"]["id"].as_str().unwrap())).await.unwrap();
    assert!(b.text("main").await.contains("cluster not found"));
    b.screenshot("not-found").await;

    let _ = stop_tx.send(true);
    let _ = driver.await;
    handle.shutdown().await;
    b.client.close().await.unwrap();
}

crate::on_both_engines!(pages_render_with_live_data);

/// Every page renders on both engines with real agent data (no browser needed): the SQL
/// behind the overview differs between SQLite and PostgreSQL in small ways that matter.
async fn pages_render_with_live_data(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = crate::gateway::registered(&app, &owner, "prod-eu-1").await;
    let mut stream = crate::gateway::Stream::open(&app, &id).await.unwrap();
    stream.report(crate::gateway::snapshot(vec![crate::gateway::pod("shop", "web-1", "Deployment/web", "0.1.0")])).await;
    let minute = (app.state.clock.now_ms() / 60_000) * 60_000;
    let seq = stream.report(crate::gateway::metrics(minute, 100, 3)).await;
    stream.acked(seq).await;

    let session = app.dashboard_session("ada@example.com").await;
    assert!(session.set_cookie.contains("HttpOnly") && session.set_cookie.contains("SameSite=Lax"), "{}", session.set_cookie);
    let cookie = session.cookie.clone();
    for (path, want) in [("/fleet".to_owned(), "prod-eu-1"), (format!("/clusters/{cluster}"), "Deployment/web"), ("/settings".to_owned(), "ada@example.com")] {
        let resp = app.client.get(format!("{}{path}", app.base)).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let html = resp.text().await.unwrap();
        assert!(html.contains(want), "{path} lacks {want}");
    }
    // Mutations with the cookie need the page's CSRF token.
    let csrf = session.csrf.clone();
    let post = |token: Option<String>| {
        let mut req = app.client.post(format!("{}/api/v1/clusters", app.base)).header("cookie", &cookie).json(&json!({ "name": "via-cookie" }));
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        req.send()
    };
    assert_eq!(post(None).await.unwrap().status().as_u16(), 403);
    assert_eq!(post(Some("forged".into())).await.unwrap().status().as_u16(), 403);
    assert_eq!(post(Some(csrf)).await.unwrap().status().as_u16(), 201);
    // Without a session the pages send people to log in.
    let resp = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap().get(format!("{}/fleet", app.base)).send().await.unwrap();
    assert_eq!(resp.headers()["location"], "/login");
}

crate::on_both_engines!(settings_name_people_and_things_and_page_the_audit_log);

/// The audit log on the settings page says who and what in words (e-mails, cluster and token
/// names, even of a deleted cluster), comes in pages, and an owner is not offered to remove
/// their own membership.
async fn settings_name_people_and_things_and_page_the_audit_log(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let me = app.get("/api/v1/me", &owner.access).await.1["user"]["id"].as_str().unwrap().to_owned();
    let grace = app.member(&owner, "grace@example.com", "admin").await;
    let grace_id = app.get("/api/v1/me", &grace.access).await.1["user"]["id"].as_str().unwrap().to_owned();
    let kept = app.create_cluster(&owner, "prod-eu-1", json!({})).await["cluster"]["id"].as_str().unwrap().to_owned();
    let gone = app.create_cluster(&grace, "short-lived", json!({})).await["cluster"]["id"].as_str().unwrap().to_owned();
    let (status, _) = app.call(reqwest::Method::DELETE, &format!("/api/v1/clusters/{gone}"), Some(&owner.access), None).await;
    assert_eq!(status.as_u16(), 204);
    let (status, _) = app.post("/api/v1/tokens", &owner.access, json!({ "name": "ci-deploy", "role": "admin" })).await;
    assert_eq!(status.as_u16(), 201);
    // Enough entries for a second page.
    for _ in 0..50 {
        let (status, _) = app.post(&format!("/api/v1/clusters/{kept}/bootstrap-token"), &grace.access, json!({})).await;
        assert_eq!(status.as_u16(), 201);
    }
    let session = app.dashboard_session("ada@example.com").await;
    let get = async |path: String| app.client.get(format!("{}{path}", app.base)).header("cookie", &session.cookie).send().await.unwrap().text().await.unwrap();

    let first = get("/settings".into()).await;
    let audit = first.split_once("<h2>Audit log</h2>").unwrap().1;
    assert!(audit.contains("user <strong>grace@example.com</strong>") && audit.contains("cluster <strong>prod-eu-1</strong>"), "{audit}");
    assert!(!audit.contains(&grace_id) && !audit.contains(&kept), "raw ids on the first page: {audit}");
    assert_eq!(audit.matches("data-audit=").count(), 50);
    let older = audit.split("href=\"/settings?audit_before=").nth(1).expect("a link to older entries").split('"').next().unwrap().to_owned();

    let second = get(format!("/settings?audit_before={older}")).await;
    let audit = second.split_once("<h2>Audit log</h2>").unwrap().1;
    for words in
        ["user <strong>ada@example.com</strong>", "cluster <strong>short-lived</strong>", "API token <strong>ci-deploy</strong>", "organization <strong>"]
    {
        assert!(audit.contains(words), "{words} missing from {audit}");
    }
    assert!(!audit.contains(&me) && !audit.contains(&gone), "raw ids on the second page: {audit}");
    assert!(audit.contains("Newest entries") && !audit.contains("Older entries"), "{audit}");
    let bad = app.client.get(format!("{}/settings?audit_before=yesterday", app.base)).header("cookie", &session.cookie).send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    // Grace can be removed; the owner's own row offers no Remove.
    let members = first.split_once("<h2>Audit log</h2>").unwrap().0;
    assert!(members.contains(&format!("data-api=\"/api/v1/members/{grace_id}\" data-method=\"DELETE\"")), "{members}");
    assert!(!members.contains(&format!("data-api=\"/api/v1/members/{me}\" data-method=\"DELETE\"")), "{members}");
}

/// A dashboard left open does not hold a stopping server: its live updates end when the stop
/// begins (a graceful stop waited for them, so a replica with a dashboard open never exited on
/// SIGTERM by itself).
#[tokio::test]
async fn an_open_dashboard_does_not_hold_a_stopping_server() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    app.owner("ada@example.com").await;
    let session = app.dashboard_session("ada@example.com").await;
    let mut live = app.client.get(format!("{}/ui/live?view=fleet&shown=0", app.base)).header("cookie", &session.cookie).send().await.unwrap();
    assert_eq!(live.status().as_u16(), 200);
    assert!(live.chunk().await.unwrap().is_some(), "the first update arrives");
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;
    assert!(stopped.is_ok(), "the stop waited for the dashboard's live updates");
    let ended = tokio::time::timeout(Duration::from_secs(5), async { while let Ok(Some(_)) = live.chunk().await {} }).await;
    assert!(ended.is_ok(), "the live updates did not end");
}
