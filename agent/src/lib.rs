//! The meshfleet agent library: the gateway client (register, stream reports, execute commands,
//! renew the certificate), the in-cluster agent on Kubernetes (`k8s`), and the fleet simulator
//! that drives many such clients in one process.
//! It never logs key material or tokens.

pub mod backoff;
pub mod buffer;
pub mod client;
mod error;
pub mod identity;
pub mod k8s;
pub mod sim;
mod tls;

pub use client::{spawn, Agent, AgentHandle, ClientConfig, Report, Reporter, Stats};
pub use error::{Error, Result};
pub use identity::{register, renew, Identity};
pub use meshfleet_agent_proto::v1;
