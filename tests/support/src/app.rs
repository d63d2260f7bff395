//! TestApp: a real server on 127.0.0.1:0 over its own database (a temporary SQLite file, or
//! a fresh PostgreSQL database when MESHFLEET_TEST_POSTGRES_URL is set), and a client of its
//! API (`ApiClient`, which also serves a server run as a process).

use std::io::Write;
use std::sync::Once;

use meshfleet_server::config::Config;
use meshfleet_server::secrets::Sealer;
use meshfleet_server::{AppState, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub use meshfleet_server::db::Engine;

/// Runs each named `async fn(Engine)` as two tests: `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::app::Engine::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::app::postgres_url().is_some() {
                    super::$name($crate::app::Engine::Postgres).await
                }
            }
        }
    )*};
}

/// The admin URL of the test PostgreSQL, or None (and a notice, once, on the real stderr:
/// libtest captures print macros but not direct writes).
pub fn postgres_url() -> Option<String> {
    static NOTICE: Once = Once::new();
    let url = std::env::var("MESHFLEET_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty());
    if url.is_none() {
        NOTICE.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "\nNOTE: the PostgreSQL suite is SKIPPED (its tests pass vacuously): set MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres to run it.\n"
            );
        });
    }
    url
}

pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg: Option<(String, String)>, // (admin url, database name), dropped with the TestDb
}

impl TestDb {
    pub async fn new(engine: Engine) -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        match engine {
            Engine::Sqlite => TestDb { url: meshfleet_server::db::sqlite_url_in(dir.path()).unwrap(), dir, pg: None },
            Engine::Postgres => {
                let admin = postgres_url().expect("MESHFLEET_TEST_POSTGRES_URL");
                let name = format!("meshfleet_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::any::install_default_drivers();
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.expect("connect to test PostgreSQL");
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                TestDb { url: format!("{base}/{name}"), dir, pg: Some((admin, name)) }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs outside any runtime guarantee; use a private one on its own thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    if let Ok(mut conn) = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
                    }
                });
            })
            .join();
        }
    }
}

pub struct TestApp {
    /// Its API's client; the app derefs to it (`app.get(...)`, `app.base`).
    pub api: ApiClient,
    pub gateway: Option<std::net::SocketAddr>,
    pub state: AppState,
    pub db: TestDb,
    server: Option<Server>,
}

pub fn test_config(db: &TestDb) -> Config {
    let mut env = vec![
        ("MESHFLEET_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("MESHFLEET_GATEWAY_LISTEN".into(), "127.0.0.1:0".into()),
        ("MESHFLEET_DATABASE_URL".into(), db.url.clone()),
        ("MESHFLEET_DATA_DIR".into(), db.dir.path().display().to_string()),
        ("MESHFLEET_SEALING_KEY".into(), Sealer::generate_key()),
        ("MESHFLEET_DB_MAX_CONNECTIONS".into(), "4".into()),
    ];
    if std::env::var_os("TEST_LOG").is_some() {
        env.push(("MESHFLEET_LOG".into(), "debug".into()));
    }
    Config::load(None, &env, &[]).expect("test configuration is valid")
}

impl TestApp {
    pub async fn spawn(engine: Engine) -> TestApp {
        let db = TestDb::new(engine).await;
        Self::spawn_with(db, |_| {}).await
    }

    pub async fn spawn_with(db: TestDb, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config(&db);
        tweak(&mut config);
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = meshfleet_server::telemetry::init(&config);
        }
        let server = Server::start(config).await.expect("server starts");
        TestApp { api: ApiClient::new(format!("http://{}", server.addr)), gateway: server.gateway_addr, state: server.state.clone(), db, server: Some(server) }
    }

    /// The gateway's address (the test configuration always runs the gateway).
    pub fn state_gateway(&self) -> std::net::SocketAddr {
        self.gateway.expect("the test server runs the gateway")
    }

    /// Stops the server and starts it again on the same addresses, database and sealing key,
    /// as a restarted replica comes back.
    pub async fn restart(self) -> TestApp {
        let listen = self.base.trim_start_matches("http://").parse().expect("the API address");
        let (gateway, sealing_key) = (self.gateway, self.state.config.sealing_key.clone());
        let db = self.stop().await;
        Self::spawn_with(db, |c| {
            c.listen = listen;
            c.gateway_listen = gateway.unwrap_or(c.gateway_listen);
            c.sealing_key = sealing_key;
        })
        .await
    }

    pub async fn stop(mut self) -> TestDb {
        if let Some(s) = self.server.take() {
            s.stop().await.unwrap();
        }
        self.db
    }
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

/// A client of one server's API at `base` (`http://127.0.0.1:PORT`), with the calls tests make.
#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    pub client: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: impl Into<String>) -> ApiClient {
        ApiClient { base: base.into(), client: reqwest::Client::new() }
    }

    /// Sends a request; `body` as JSON when given. Returns the status and the parsed body
    /// (Null when empty, a string when not JSON).
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn post_anonymous(&self, path: &str, body: Value) -> Value {
        let (status, body) = self.call(Method::POST, path, None, Some(body)).await;
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// Signs up a new user with a new organization and logs in.
    pub async fn owner(&self, email: &str) -> Login {
        let (status, body) = self
            .call(Method::POST, "/api/v1/signup", None, Some(json!({ "email": email, "password": PASSWORD, "organization": format!("org of {email}") })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.login(email).await
    }

    pub async fn login(&self, email: &str) -> Login {
        let (status, body) = self.call(Method::POST, "/api/v1/login", None, Some(json!({ "email": email, "password": PASSWORD }))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Login::from(&body)
    }

    /// A user with `role` in `owner`'s organization (signed up with an organization of their own).
    pub async fn member(&self, owner: &Login, email: &str, role: &str) -> Login {
        let own = self.owner(email).await;
        let (status, body) = self.post("/api/v1/members", &owner.access, json!({ "email": email, "role": role })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) =
            self.call(Method::POST, "/api/v1/login", None, Some(json!({ "email": email, "password": PASSWORD, "organization_id": owner.org }))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let _ = own;
        Login::from(&body)
    }

    /// Logs in to the dashboard: the session cookie (`name=value`) and its CSRF token.
    pub async fn dashboard_session(&self, email: &str) -> DashboardSession {
        let resp = self.client.post(format!("{}/ui/session", self.base)).json(&json!({ "email": email, "password": PASSWORD })).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 204);
        let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let csrf = meshfleet_server::secrets::csrf_token(cookie.split_once('=').unwrap().1);
        DashboardSession { set_cookie, cookie, csrf }
    }

    /// A dashboard page's HTML, as the browser with this session cookie gets it.
    pub async fn page(&self, cookie: &str, path: &str) -> String {
        let resp = self.client.get(format!("{}{path}", self.base)).header("cookie", cookie).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        resp.text().await.unwrap()
    }

    pub async fn create_cluster(&self, who: &Login, name: &str, labels: Value) -> Value {
        let (status, body) = self.post("/api/v1/clusters", &who.access, json!({ "name": name, "labels": labels })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

pub struct DashboardSession {
    /// The whole Set-Cookie header the log-in answered.
    pub set_cookie: String,
    /// What a browser sends back: `mf_session=...`.
    pub cookie: String,
    pub csrf: String,
}

pub const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone)]
pub struct Login {
    pub access: String,
    pub refresh: String,
    pub org: String,
}

impl From<&Value> for Login {
    fn from(v: &Value) -> Self {
        Login {
            access: v["access_token"].as_str().unwrap().to_owned(),
            refresh: v["refresh_token"].as_str().unwrap().to_owned(),
            org: v["organization_id"].as_str().unwrap().to_owned(),
        }
    }
}
