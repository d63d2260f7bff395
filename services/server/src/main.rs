//! The `meshfleet-server` binary: reads configuration, sets up logging and runs the service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use meshfleet_server::config::{Config, ProcessEnv};
use meshfleet_server::{telemetry, Server};

// glibc's allocator was a fifth of the gateway's CPU when every cluster signed at once
// (BENCHMARKS.md, "the mesh's PKI at fleet scale").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Meshfleet: managed operations for service meshes.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (settings as in the README; the environment overrides it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://... (default: SQLite under ./meshfleet-data).
    #[arg(long)]
    database_url: Option<String>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
}

/// EX_USAGE from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let overrides: Vec<(&str, String)> =
        [("database_url", args.database_url), ("listen", args.listen)].into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
    let config = match Config::load(args.config.as_deref(), &ProcessEnv, &overrides) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Kept to the end: dropping it flushes the spans still queued for the collector.
    let _telemetry = match telemetry::init(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "meshfleet-server failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut server = Server::start(config).await?;
    let url = format!("http://{}", server.addr);
    println!("meshfleet-server {} listening on {url}", env!("CARGO_PKG_VERSION"));
    println!("  sign up:   curl -s {url}/api/v1/signup -H 'content-type: application/json' -d '{{\"email\":\"you@example.com\",\"password\":\"a long passphrase\",\"organization\":\"Acme\"}}'");
    println!("  API docs:  {url}/api/openapi.json    health: {url}/healthz    metrics: {url}/metrics");
    if let Some(gateway) = server.gateway_addr {
        println!("  agent gateway (gRPC, mTLS) on {gateway}");
    }
    let stop = server.stop_signal();
    let (signalled_tx, signalled) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(target: "meshfleet_server::shutdown", "shutting down");
        drop(stop);
        let _ = signalled_tx.send(std::time::Instant::now());
    });
    let grace = server.state.config.shutdown_grace;
    let drained = server.wait();
    tokio::pin!(drained);
    tokio::select! {
        // Stopped by a fatal error.
        result = &mut drained => result,
        Ok(at) = signalled => {
            // A drain that outlasts the grace is cut short: thousands of agent streams ending
            // at once kept a loaded replica alive for half a minute, past Kubernetes' grace.
            let result = tokio::time::timeout(grace, &mut drained).await.unwrap_or_else(|_| {
                tracing::warn!(target: "meshfleet_server::shutdown", grace_secs = grace.as_secs(), "still draining after the shutdown grace; exiting");
                Ok(())
            });
            tracing::info!(target: "meshfleet_server::shutdown", ms_since_signal = at.elapsed().as_millis() as u64, "stopped");
            result
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
