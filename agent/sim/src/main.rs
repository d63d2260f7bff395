//! `meshfleet-sim`: the demo fleet and load generator. Parses flags, sets up logging and runs
//! `meshfleet_sim::run` until Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use meshfleet_sim::{self as sim, Auth, FleetConfig};
use secrecy::SecretString;

#[derive(Parser)]
#[command(version, about = "Runs N simulated meshfleet agents (real gRPC+mTLS clients) in one process")]
struct Args {
    /// Base URL of the meshfleet API.
    #[arg(long, env = "MESHFLEET_SIM_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Log in with this e-mail (and --password).
    #[arg(long, env = "MESHFLEET_SIM_EMAIL", requires = "password")]
    email: Option<String>,
    #[arg(long, env = "MESHFLEET_SIM_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// An API token instead of e-mail and password.
    #[arg(long, env = "MESHFLEET_SIM_TOKEN", hide_env_values = true, conflicts_with = "email")]
    token: Option<String>,
    /// Number of simulated clusters.
    #[arg(long, env = "MESHFLEET_SIM_CLUSTERS", default_value_t = 50)]
    clusters: usize,
    /// Clusters are named `<prefix>-0000`, `<prefix>-0001`, ...
    #[arg(long, env = "MESHFLEET_SIM_PREFIX", default_value = "sim")]
    prefix: String,
    /// Where agent identities (with their private keys) are kept between runs
    /// [default: $XDG_STATE_HOME/meshfleet-sim, or ~/.local/state/meshfleet-sim].
    #[arg(long, env = "MESHFLEET_SIM_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// How often each agent reports metrics, e.g. 10s, 500ms, 1m.
    #[arg(long, env = "MESHFLEET_SIM_METRICS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    metrics_interval: Duration,
    /// How often the status line is printed.
    #[arg(long, env = "MESHFLEET_SIM_STATUS_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    status_interval: Duration,
    /// Clusters created / registered concurrently at start-up.
    #[arg(long, env = "MESHFLEET_SIM_SETUP_CONCURRENCY", default_value_t = 16)]
    setup_concurrency: usize,
    /// The share of clusters (0 to 1) on which an upgrade goes badly: once their workloads run
    /// a proxy version other than the one they started with, they fail 30% of requests.
    #[arg(long, env = "MESHFLEET_SIM_BAD_UPGRADE_SHARE", default_value_t = 0.0, value_parser = parse_share)]
    bad_upgrade_share: f64,
}

fn parse_share(s: &str) -> Result<f64, String> {
    s.trim().parse::<f64>().ok().filter(|x| (0.0..=1.0).contains(x)).ok_or_else(|| format!("{s:?} is not a share from 0 to 1"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    meshfleet_agent::init_tracing("RUST_LOG");
    let args = Args::parse();
    let auth = match (args.token, args.email, args.password) {
        (Some(t), _, _) => Auth::Token(SecretString::from(t)),
        (None, Some(email), Some(p)) => Auth::Password { email, password: SecretString::from(p) },
        _ => {
            eprintln!("meshfleet-sim: give --email and --password, or --token (or MESHFLEET_SIM_EMAIL/PASSWORD/TOKEN)");
            return ExitCode::from(64);
        }
    };
    let Some(state_dir) = args.state_dir.or_else(|| sim::default_state_dir(|name| std::env::var_os(name))) else {
        eprintln!("meshfleet-sim: neither XDG_STATE_HOME nor HOME is set: give --state-dir (or MESHFLEET_SIM_STATE_DIR)");
        return ExitCode::from(64);
    };
    let config = FleetConfig {
        api_url: args.api,
        auth,
        clusters: args.clusters,
        prefix: args.prefix,
        state_dir,
        metrics_interval: args.metrics_interval,
        status_interval: args.status_interval,
        agent_version: format!("meshfleet-sim/{}", env!("CARGO_PKG_VERSION")),
        setup_concurrency: args.setup_concurrency,
        bad_upgrade_share: args.bad_upgrade_share,
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshfleet-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: FleetConfig) -> anyhow::Result<()> {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    let status = sim::run(config, ctrl_c).await.context("running the simulated fleet")?;
    println!("final: {status}");
    Ok(())
}
