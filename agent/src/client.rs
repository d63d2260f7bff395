//! The gateway client: one long-lived mTLS stream per agent that sends a fresh snapshot and every
//! unacknowledged report on each (re)connect, executes commands at most once per id, renews the
//! certificate at two thirds of its lifetime, and reconnects with jittered backoff. Nothing the
//! server sends may panic it, and `report` never blocks the caller.

mod commands;
mod session;

pub use commands::now_ms;
pub use commands::unsupported;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use meshfleet_agent_protocol::v1::{self, agent_message::Body};
use meshfleet_agent_protocol::MAX_MESSAGE_BYTES;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::buffer::ReportBuffer;
use crate::{GatewayConnection, Identity};

/// Room left under the gRPC cap for framing, so a report that passes this check always encodes.
const SIZE_SLACK: usize = 1024;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `https://gateway.example.com:8443`
    pub gateway_url: String,
    /// The gateway CA bundle (PEM); the only roots trusted.
    pub ca_pem: String,
    pub agent_version: String,
    /// Maximum number of unacknowledged reports kept; beyond it the oldest are dropped (counted
    /// in `Stats::dropped`).
    pub buffer_limit: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub heartbeat_interval: Duration,
    /// Where renewed identities are saved.
    pub identity_path: Option<PathBuf>,
}

impl ClientConfig {
    pub fn new(gateway_url: impl Into<String>, ca_pem: impl Into<String>) -> Self {
        ClientConfig {
            gateway_url: gateway_url.into(),
            ca_pem: ca_pem.into(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            buffer_limit: 10_000,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            identity_path: None,
        }
    }
}

/// What the client asks of the agent: the full inventory on every (re)connect, and command
/// execution.
pub trait Agent: Send + Sync + 'static {
    fn kubernetes_version(&self) -> String;
    fn snapshot(&self) -> v1::Inventory;
    /// Runs the command `id`; called at most once per command id per process (the client dedups
    /// and resends the stored result when the server redelivers). Commands the agent cannot read
    /// never get here: the client answers them. A kind this agent cannot run is answered with
    /// `unsupported`.
    fn execute(&self, id: String, command: v1::command::Body) -> BoxFuture<'static, v1::CommandResult>;
}

/// A report for the service. Snapshots are not reports the caller sends: the client takes one
/// from `Agent::snapshot` at the start of every session.
#[derive(Debug, Clone)]
pub enum Report {
    Delta(v1::Delta),
    Metrics(v1::Metrics),
    Events(v1::Events),
    /// A RUNNING result with progress for a command still executing (the final result is what
    /// `Agent::execute` returns).
    Progress(v1::CommandResult),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub connected: bool,
    /// Streams opened so far.
    pub sessions: u64,
    pub last_acked_seq: u64,
    pub last_sent_seq: u64,
    /// Reports waiting for an acknowledgement.
    pub buffered: usize,
    /// Reports lost to the buffer limit (or too large to send).
    pub dropped: u64,
    /// Reports the service refused, in whole or in part, for a quota of the cluster (it says
    /// so before acknowledging them; they are not resent), and the items (metric windows,
    /// events) it refused of them.
    pub refused: u64,
    pub refused_items: u64,
    /// The service's explanation of the latest refusal.
    pub last_refusal: Option<String>,
    pub commands_executed: u64,
    pub renewals: u64,
    pub last_error: Option<String>,
}

pub(crate) struct Shared {
    config: ClientConfig,
    agent: Arc<dyn Agent>,
    state: Mutex<State>,
    identity: Mutex<Identity>,
    /// Woken when a report is buffered, so the session sends it at once.
    wake: Notify,
    /// The open session's connection, for unary calls (SignIssuer) beside its stream.
    live: Mutex<Option<GatewayConnection>>,
}

struct State {
    buffer: ReportBuffer,
    stats: Stats,
    commands: commands::Commands,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update; the data is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current_identity(&self) -> Identity {
        self.identity.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_identity(&self, identity: Identity) {
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = identity;
    }

    /// Buffers a report and wakes the session; drops it (counted) if it could never be sent.
    fn push(&self, body: Body) {
        let size = body.encoded_len();
        let mut st = self.state();
        if size > MAX_MESSAGE_BYTES - SIZE_SLACK {
            // Sending it would fail the stream on every reconnect, forever.
            st.stats.dropped += 1;
            st.stats.last_error = Some(format!("dropped a report of {size} bytes: over the {MAX_MESSAGE_BYTES}-byte message cap"));
            return;
        }
        let (_, dropped) = st.buffer.push(body);
        st.stats.dropped += dropped;
        drop(st);
        self.wake.notify_one();
    }

    fn record_error(&self, error: impl std::fmt::Display) {
        self.state().stats.last_error = Some(error.to_string());
    }

    fn set_live(&self, connection: Option<GatewayConnection>) {
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = connection;
    }
}

/// The running client. Dropping it stops the client too, but `shutdown` waits for it.
pub struct AgentHandle {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Starts the client on the current tokio runtime.
pub fn spawn(config: ClientConfig, identity: Identity, agent: Arc<dyn Agent>) -> AgentHandle {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { buffer: ReportBuffer::new(config.buffer_limit), stats: Stats::default(), commands: commands::Commands::default() }),
        identity: Mutex::new(identity),
        wake: Notify::new(),
        live: Mutex::new(None),
        config,
        agent,
    });
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(session::run(shared.clone(), rx));
    AgentHandle { shared, shutdown, task }
}

/// A cheap, cloneable way to report and read stats without owning the handle (for tasks that
/// produce reports while the owner keeps the handle for shutdown).
#[derive(Clone)]
pub struct Reporter {
    shared: Arc<Shared>,
}

impl Reporter {
    /// The agent's current identity (it changes when the certificate is renewed).
    pub fn identity(&self) -> Identity {
        self.shared.current_identity()
    }

    /// Buffers a report (assigning its seq) until the gateway acknowledges it. Never blocks.
    pub fn report(&self, report: Report) {
        self.shared.push(match report {
            Report::Delta(d) => Body::Delta(d),
            Report::Metrics(m) => Body::Metrics(m),
            Report::Events(e) => Body::Events(e),
            Report::Progress(r) => Body::CommandResult(r),
        });
    }

    pub fn stats(&self) -> Stats {
        let st = self.shared.state();
        Stats { buffered: st.buffer.len(), ..st.stats.clone() }
    }

    /// The mesh issuer for `csr_der` while rotate-issuer command `command_id` is open: over the
    /// open session's connection, or a new one between sessions.
    pub async fn sign_issuer(&self, command_id: &str, csr_der: Vec<u8>) -> crate::Result<v1::SignIssuerResponse> {
        let live = self.shared.live.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let connection = match live {
            Some(c) => c,
            None => GatewayConnection::open(&self.shared.config.gateway_url, &self.shared.config.ca_pem, &self.identity()).await?,
        };
        connection.sign_issuer(command_id, csr_der).await
    }
}

impl AgentHandle {
    /// Buffers a report (assigning its seq) until the gateway acknowledges it. Never blocks.
    pub fn report(&self, report: Report) {
        self.reporter().report(report)
    }

    pub fn stats(&self) -> Stats {
        self.reporter().stats()
    }

    pub fn reporter(&self) -> Reporter {
        Reporter { shared: self.shared.clone() }
    }

    /// The current identity (it changes when the certificate is renewed).
    pub fn identity(&self) -> Identity {
        self.shared.current_identity()
    }

    /// Polls the stats until `pred` holds or `timeout` passes; true if it held.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes the stream (giving the gateway a moment to acknowledge what it received) and
    /// waits for the client to stop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}
