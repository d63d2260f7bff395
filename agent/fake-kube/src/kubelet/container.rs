//! One container of a pod the kubelet runs: its process, what its status says, and its
//! readiness probe. The pod-level sequencing (init containers, restarts) is the kubelet's.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::RESTART_DELAY;

/// One container of a running pod.
pub(super) struct Container {
    pub name: String,
    pub spec: Value,
    /// An init container with `restartPolicy: Always` (a native sidecar).
    pub sidecar: bool,
    pub child: Option<Child>,
    pub started_at: String,
    pub restarts: u32,
    pub last_exit: Option<i32>,
    /// Why the last start failed, if it did.
    pub message: Option<String>,
    pub restart_at: Option<Instant>,
    pub ready: bool,
    pub probed_at: Option<Instant>,
}

impl Container {
    pub fn new(spec: &Value, init: bool) -> Container {
        Container {
            name: spec["name"].as_str().unwrap_or("").to_owned(),
            spec: spec.clone(),
            sidecar: init && spec.get("restartPolicy").and_then(Value::as_str) == Some("Always"),
            child: None,
            started_at: String::new(),
            restarts: 0,
            last_exit: None,
            message: None,
            restart_at: None,
            ready: false,
            probed_at: None,
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Reaps the process if it exited.
    pub fn reap(&mut self) {
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                self.last_exit = Some(status.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)));
                self.child = None;
                self.ready = false;
                self.restart_at = Some(Instant::now() + RESTART_DELAY);
            }
        }
    }

    pub fn status(&self) -> Value {
        let terminated = |code: i32| json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "message": self.message.as_deref().unwrap_or("")}});
        let (state, last) = match (&self.child, self.last_exit) {
            (Some(_), last) => (json!({"running": {"startedAt": self.started_at}}), last.map(terminated)),
            (None, Some(code)) => (terminated(code), None),
            (None, None) => (json!({"waiting": {"reason": "PodInitializing"}}), None),
        };
        json!({"name": self.name, "image": self.spec["image"], "imageID": "", "ready": self.ready, "started": self.running(),
            "restartCount": self.restarts, "state": state, "lastState": last.unwrap_or(json!({}))})
    }

    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // Each container leads a process group of its own: its children get the signal too.
            // SAFETY: kill(2) on a process group this kubelet started.
            unsafe { libc::kill(-(child.id() as i32), signal) };
        }
    }
}

/// A readiness probe this kubelet can run: `httpGet` (2xx/3xx passes) or `tcpSocket` (a
/// connection passes), at the pod's IP. Other kinds are not run (the container counts as ready).
pub(super) struct Probe {
    addr: SocketAddr,
    http_path: Option<String>,
}

impl Probe {
    pub fn of(container: &Value, ip: Ipv4Addr) -> Option<Probe> {
        let probe = container.get("readinessProbe")?;
        let (action, http) = match (probe.get("httpGet"), probe.get("tcpSocket")) {
            (Some(h), _) => (h, true),
            (None, Some(t)) => (t, false),
            _ => return None,
        };
        let port = match action.get("port")? {
            Value::Number(n) => n.as_u64()? as u16,
            Value::String(name) => {
                container.get("ports")?.as_array()?.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(name))?.get("containerPort")?.as_u64()? as u16
            }
            _ => return None,
        };
        let path = action.get("path").and_then(Value::as_str).unwrap_or("/").to_owned();
        Some(Probe { addr: SocketAddr::from((ip, port)), http_path: http.then_some(path) })
    }

    pub async fn passes(&self) -> bool {
        let timeout = Duration::from_secs(1);
        match &self.http_path {
            None => tokio::time::timeout(timeout, tokio::net::TcpStream::connect(self.addr)).await.is_ok_and(|r| r.is_ok()),
            Some(path) => {
                let client = reqwest::Client::builder().no_proxy().timeout(timeout).build();
                let Ok(client) = client else { return false };
                client.get(format!("http://{}{path}", self.addr)).send().await.is_ok_and(|r| r.status().is_success() || r.status().is_redirection())
            }
        }
    }
}
