//! The open-source mesh Meshfleet operates. `controller` is a cluster's identity CA (signs proxy
//! leaf certificates, serves the trust bundle); `proxy` is the mTLS sidecar with golden metrics.
//! Both stand alone: neither needs the Meshfleet agent or service to run.

pub mod admin;
pub mod controller;
pub mod destination;
pub mod drain;
pub mod identity;
pub mod init;
pub mod proxy;
pub mod ready;
pub mod tls;

/// The version both binaries report in `/version` and their build-info metric.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Sets up `tracing` for a binary: `RUST_LOG` filter, plain text to stderr, coloured only on a
/// terminal (and without NO_COLOR), so log files and pipes carry no escape codes.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colour).with_writer(std::io::stderr).try_init();
}

/// Bad configuration, with every problem found rather than the first. Binaries exit 64 on it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// The process exit code for an error from `run`: 64 (EX_USAGE) for configuration, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<ConfigError>().is_some() {
        64
    } else {
        1
    }
}
