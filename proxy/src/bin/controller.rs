//! meshfleet-controller: parses configuration, sets up tracing, runs the controller.
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Meshfleet mesh identity controller", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: meshfleet_mesh::controller::Config,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Write a development trust anchor and issuer into DIR, then exit.
    DevCerts { dir: std::path::PathBuf },
    /// Print the manifest that installs the controller in a cluster (YAML, to stdout), then exit.
    Install(meshfleet_mesh::controller::install::InstallArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let code = if e.use_stderr() { 64 } else { 0 };
        let _ = e.print();
        std::process::exit(code);
    });
    meshfleet_mesh::init_tracing();
    let result = match cli.command {
        Some(Command::DevCerts { dir }) => meshfleet_mesh::controller::write_dev_certs(&dir),
        Some(Command::Install(args)) => install(&args),
        None => meshfleet_mesh::controller::run(cli.config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshfleet-controller: {e:#}");
            ExitCode::from(meshfleet_mesh::exit_code(&e))
        }
    }
}

fn install(args: &meshfleet_mesh::controller::install::InstallArgs) -> anyhow::Result<()> {
    use meshfleet_mesh::controller::install;
    let material = args.material()?;
    let missing = install::prerequisites(args, &material);
    if !missing.is_empty() {
        eprintln!("meshfleet-controller install: not rendered, must exist before the controller becomes ready (create them, or pass --trust-anchors-file and --issuer-cert-file/--issuer-key-file, or --dev-certs):");
        for m in missing {
            eprintln!("  {m}");
        }
    }
    print!("{}", install::render(args, &material));
    Ok(())
}
