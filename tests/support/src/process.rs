//! Running this workspace's binaries as processes from tests and benches: building another
//! package's binaries (Cargo only builds a package's own for its tests), stopping a process,
//! and waiting for what it should bring about.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Builds `bins` of `package` into the target directory and profile the calling test binary
/// runs from (a no-op when fresh) and returns that directory, where the binaries now are.
pub fn build_bins(package: &str, bins: &[&str]) -> PathBuf {
    // .../target/<profile>/deps/<test>-<hash> -> .../target/<profile>
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps").to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let mut cmd = Command::new(cargo);
    // Without the variables Cargo sets for the test process: build scripts track some of them
    // (ring: CARGO_MANIFEST_DIR), and a changed value would rebuild half the dependency graph
    // here and again in the next outer `cargo test`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo = ["MANIFEST_DIR", "MANIFEST_PATH", "CRATE_NAME", "BIN_NAME", "PRIMARY_PACKAGE", "TARGET_TMPDIR", "RUSTC_CURRENT_DIR"]
            .iter()
            .any(|k| key == format!("CARGO_{k}"));
        if key.starts_with("CARGO_PKG_") || key == "OUT_DIR" || set_by_cargo {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--quiet", "-p", package]);
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    cmd.arg("--target-dir").arg(target_dir).stdout(Stdio::null()).stderr(Stdio::piped());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build");
    assert!(out.status.success(), "cargo build -p {package} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    profile_dir
}

/// SIGTERM to this one process (never its group: that could reach the test runner and the
/// database), then SIGKILL if it is still running after `grace`.
pub fn terminate(child: &mut Child, grace: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// How long `check` took to hold, polled every 20 ms; None if it did not within `limit`.
pub async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// What a child process prints: its last lines (stdout and stderr), for error messages, and its
/// stdout lines as they come, for addresses it announces.
pub struct Output {
    tail: Arc<Mutex<VecDeque<String>>>,
    pub stdout: mpsc::Receiver<String>,
}

const TAIL_LINES: usize = 40;

impl Output {
    /// Takes the child's piped stdout and stderr (spawn it with both `Stdio::piped()`).
    pub fn capture(child: &mut Child) -> Output {
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, stdout) = mpsc::channel::<String>();
        let pipes: [(Option<Box<dyn Read + Send>>, bool); 2] = [
            (child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>), true),
            (child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>), false),
        ];
        for (pipe, is_stdout) in pipes {
            let Some(pipe) = pipe else { continue };
            let (tail, tx) = (tail.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if is_stdout {
                        let _ = tx.send(line.clone());
                    }
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    t.push_back(line);
                    if t.len() > TAIL_LINES {
                        t.pop_front();
                    }
                }
            });
        }
        Output { tail, stdout }
    }

    pub fn tail(&self) -> String {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// utime + stime of a process so far, in clock ticks (0 when it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // After the comm field, which may hold spaces: utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

pub fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf").arg("CLK_TCK").output().ok().and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100.0)
}

/// A command for `bin` that inherits no MESHFLEET_* variable: only what the caller sets
/// reaches the process.
pub fn clean_command(bin: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MESHFLEET_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A port free right now (a small race with other processes is accepted in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port free right now below the kernel's ephemeral ports (32,768 and up by default), for a
/// server that is stopped and started again on it: no outgoing connection can take it
/// meanwhile (a replica restarted among 30,000 agents' connections found its port taken).
pub fn stable_port() -> u16 {
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos() ^ std::process::id();
    for _ in 0..1000 {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let port = 20_000 + (seed >> 16) as u16 % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}
