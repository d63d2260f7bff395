//! The real `meshfleet-server` binary as a child process, for tests that kill and restart it
//! or run several replicas.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::app::TestDb;
use crate::process::{build_bins, clean_command, stable_port, terminate};

/// Where the server binary is. The server's own tests pass Cargo's `CARGO_BIN_EXE_meshfleet-server`
/// (no second build); tests in other packages build it with [`ServerBin::built`].
#[derive(Debug, Clone)]
pub struct ServerBin(PathBuf);

impl ServerBin {
    pub fn at(path: impl Into<PathBuf>) -> ServerBin {
        ServerBin(path.into())
    }

    /// Builds the binary into this test binary's target directory, once per test process (a
    /// no-op when fresh).
    pub fn built() -> ServerBin {
        static BIN: OnceLock<PathBuf> = OnceLock::new();
        ServerBin(BIN.get_or_init(|| build_bins("meshfleet-server", &["meshfleet-server"]).join("meshfleet-server")).clone())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The server binary with a clean MESHFLEET_* environment, in `dir`.
    pub fn command(&self, dir: &Path) -> Command {
        let mut cmd = clean_command(&self.0);
        cmd.current_dir(dir);
        cmd
    }

    /// One of several server processes sharing the test PostgreSQL database `db` (and so one
    /// sealing key), in its own directory named `name`, with extra MESHFLEET_* settings
    /// (`MESHFLEET_ROLES` among them picks its roles).
    pub fn replica(&self, db: &TestDb, sealing_key: &str, name: &str, env: &[(&str, &str)]) -> ServerProcess {
        let dir = db.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = self.command(&dir);
        cmd.env("MESHFLEET_LISTEN", "127.0.0.1:0")
            .env("MESHFLEET_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("MESHFLEET_DATABASE_URL", &db.url)
            .env("MESHFLEET_SEALING_KEY", sealing_key)
            .envs(env.iter().copied());
        ServerProcess::start(cmd)
    }

    /// A server over `db` that a test can kill and start again as the same server (see
    /// [`Restartable`]), with extra MESHFLEET_* settings; not started yet.
    pub fn restartable(&self, db: TestDb, env: &[(&str, &str)]) -> Restartable {
        let dir = db.dir.path().display().to_string();
        let mut settings = vec![
            ("MESHFLEET_LISTEN".to_owned(), format!("127.0.0.1:{}", stable_port())),
            ("MESHFLEET_GATEWAY_LISTEN".to_owned(), format!("127.0.0.1:{}", stable_port())),
            ("MESHFLEET_DATABASE_URL".to_owned(), db.url.clone()),
            ("MESHFLEET_SEALING_KEY".to_owned(), meshfleet_server::secrets::Sealer::generate_key()),
            ("MESHFLEET_DATA_DIR".to_owned(), dir),
        ];
        settings.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Restartable { bin: self.clone(), db, settings, process: None }
    }

    /// Two replicas `a` and `b` on the test PostgreSQL database `db`, sharing a new sealing key.
    pub fn two_replicas(&self, db: &TestDb, env: &[(&str, &str)]) -> (ServerProcess, ServerProcess) {
        let sealing_key = meshfleet_server::secrets::Sealer::generate_key();
        (self.replica(db, &sealing_key, "a", env), self.replica(db, &sealing_key, "b", env))
    }
}

/// One server, started again after a kill as a restarted pod comes back: the same database,
/// sealing key, data directory and addresses (agents redial the gateway address they were
/// given; clients keep their URL and tokens).
pub struct Restartable {
    bin: ServerBin,
    pub db: TestDb,
    /// Every MESHFLEET_* setting, the fixed ports among them.
    settings: Vec<(String, String)>,
    process: Option<ServerProcess>,
}

impl Restartable {
    /// Starts the binary (it must not be running) and waits for it to announce its addresses.
    /// This blocks: from a runtime's worker, wrap it in `tokio::task::block_in_place`.
    pub fn start(&mut self) -> &ServerProcess {
        assert!(self.process.is_none(), "the server is running already");
        let mut cmd = self.bin.command(self.db.dir.path());
        cmd.envs(self.settings.iter().map(|(k, v)| (k, v)));
        self.process.insert(ServerProcess::start(cmd))
    }

    /// SIGKILL: the process ends at once, mid-whatever, as a crashed or evicted one does.
    pub fn kill(&mut self) {
        self.process.take().expect("the server runs").kill();
    }

    fn setting(&self, key: &str) -> &str {
        self.settings.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).expect("set by `restartable`")
    }

    /// The API's base URL, the same across restarts.
    pub fn url(&self) -> String {
        format!("http://{}", self.setting("MESHFLEET_LISTEN"))
    }
}

pub struct ServerProcess {
    pub child: Child,
    /// e.g. `127.0.0.1:41234`
    pub api: String,
    pub gateway: Option<String>,
}

impl ServerProcess {
    /// Starts the binary and waits for it to announce its addresses.
    pub fn start(mut cmd: Command) -> ServerProcess {
        // A process without the gateway role (MESHFLEET_ROLES) announces no gateway address.
        let roles = cmd.get_envs().find(|(k, _)| *k == "MESHFLEET_ROLES").and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()));
        let expects_gateway = roles.is_none_or(|roles| roles.contains("gateway"));
        let mut log = log_file();
        let stderr = log.as_ref().and_then(|f| f.try_clone().ok()).map_or_else(Stdio::null, Stdio::from);
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().expect("server starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                let _ = tx.send(line);
            }
        });
        let (mut api, mut gateway) = (None, None);
        while api.is_none() || (expects_gateway && gateway.is_none()) {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else { break };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                api = Some(rest.trim().to_owned());
            }
            if let Some(rest) = line.split("agent gateway (gRPC, mTLS) on ").nth(1) {
                gateway = Some(rest.trim().to_owned());
            }
        }
        ServerProcess { child, api: api.expect("the server announces its address"), gateway }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// SIGTERM, the graceful stop; SIGKILL if it has not exited after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        terminate(&mut self.child, grace);
    }

    /// SIGKILL: no graceful anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a server's output (its log) is kept: nowhere, or a new file in the directory
/// `MESHFLEET_TEST_SERVER_LOGS` names (to read what a benchmark's replicas said).
fn log_file() -> Option<std::fs::File> {
    let dir = std::env::var_os("MESHFLEET_TEST_SERVER_LOGS")?;
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    std::fs::File::create(std::path::Path::new(&dir).join(format!("meshfleet-server-{at}.log"))).ok()
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A replica on fixed ports (a balancer's backends), and its process while it runs: stopped
/// and started again, it serves the same addresses.
pub struct FixedReplica {
    pub name: &'static str,
    pub api: u16,
    pub gateway: u16,
    pub process: Option<ServerProcess>,
}

impl FixedReplica {
    pub fn new(name: &'static str) -> FixedReplica {
        FixedReplica { name, api: stable_port(), gateway: stable_port(), process: None }
    }

    /// Starts it with extra MESHFLEET_* settings; waiting for its announcement blocks, while
    /// the test's agents and balancer run on.
    pub fn start(&mut self, bin: &ServerBin, db: &TestDb, sealing_key: &str, env: &[(&str, &str)]) {
        let (listen, gateway) = (format!("127.0.0.1:{}", self.api), format!("127.0.0.1:{}", self.gateway));
        let mut env = env.to_vec();
        env.extend([("MESHFLEET_LISTEN", listen.as_str()), ("MESHFLEET_GATEWAY_LISTEN", gateway.as_str())]);
        self.process = Some(tokio::task::block_in_place(|| bin.replica(db, sealing_key, self.name, &env)));
    }

    /// Stops it with SIGTERM (SIGKILL after `grace`), or at once with SIGKILL when `grace` is
    /// None; returns how long it took.
    pub fn stop(&mut self, grace: Option<Duration>) -> Duration {
        let started = std::time::Instant::now();
        if let Some(mut p) = self.process.take() {
            tokio::task::block_in_place(|| match grace {
                Some(grace) => p.terminate(grace),
                None => p.kill(),
            });
        }
        started.elapsed()
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, |p| p.child.id())
    }
}
