//! meshfleet-proxy: parses configuration, sets up tracing and a small runtime, runs the proxy.
//! `meshfleet-proxy init` instead writes the iptables rules for transparent interception.
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Meshfleet mTLS sidecar proxy")]
struct Cli {
    #[command(flatten)]
    config: meshfleet_mesh::proxy::Config,
    /// Runtime worker threads; a sidecar should not take the node's cores.
    #[arg(long, env = "MESHFLEET_PROXY_WORKER_THREADS", default_value_t = 1)]
    worker_threads: usize,
}

fn main() -> ExitCode {
    // `meshfleet-proxy init ...` writes the interception rules and exits (an init container's job).
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        return init();
    }
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let code = if e.use_stderr() { 64 } else { 0 };
        let _ = e.print();
        std::process::exit(code);
    });
    meshfleet_mesh::init_tracing();
    // One worker runs on the current thread: no cross-thread wake-ups on the request path.
    let mut builder = match cli.worker_threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let result = builder.enable_all().build().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(meshfleet_mesh::proxy::run(cli.config)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshfleet-proxy: {e:#}");
            ExitCode::from(meshfleet_mesh::exit_code(&e))
        }
    }
}

fn init() -> ExitCode {
    let config = meshfleet_mesh::init::InitConfig::try_parse_from(std::env::args_os().skip(1)).unwrap_or_else(|e| {
        let code = if e.use_stderr() { 64 } else { 0 };
        let _ = e.print();
        std::process::exit(code);
    });
    match meshfleet_mesh::init::apply(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshfleet-proxy init: {e}");
            ExitCode::from(if matches!(e, meshfleet_mesh::init::InitError::Config(_)) { 64 } else { 1 })
        }
    }
}
