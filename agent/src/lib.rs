//! The meshfleet agent library: the gateway client (register, stream reports, execute commands,
//! renew the certificate) and the in-cluster agent on Kubernetes (`k8s`). The fleet simulator,
//! which drives many such clients in one process, is its own crate (`agent/sim`).
//! It never logs key material or tokens.

pub mod backoff;
pub mod buffer;
pub mod client;
mod error;
pub mod identity;
pub mod k8s;
mod tls;

pub use client::{spawn, Agent, AgentHandle, ClientConfig, Report, Reporter, Stats};
pub use error::{Error, Result};
pub use identity::{register, renew, GatewayConnection, Identity};
pub use meshfleet_agent_protocol::v1;

/// Logging for the binaries: the filter from the environment variable `filter_var` (default
/// `info`), to stdout, coloured only on a terminal (unless NO_COLOR), so files and pipes get
/// plain text.
pub fn init_tracing(filter_var: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env(filter_var).unwrap_or_else(|_| "info".into());
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout).with_ansi(colour).init();
}
