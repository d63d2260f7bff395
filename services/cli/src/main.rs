//! `meshfleet`: the command-line client of the Meshfleet API (see `meshfleet --help`).

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    meshfleet_cli::run(std::env::args_os()).await
}
