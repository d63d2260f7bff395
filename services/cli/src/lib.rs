//! meshfleet-cli: the `meshfleet` command. It speaks to the API only through
//! `meshfleet-client`, keeps the session in the user's config directory, prints tables or the
//! API's JSON, and tells through its exit code what a script needs to know (`exit`).

mod accounts;
mod alerts;
mod args;
mod certs;
mod clusters;
mod connect;
mod error;
mod output;
mod session;
mod status;
mod upgrades;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use meshfleet_client::Client;
use secrecy::SecretString;

use args::{Cli, Command};
use error::Error;
use output::Output;
use session::{RefreshLock, Session};

/// The exit codes, as `meshfleet --help` lists them.
pub mod exit {
    pub const OK: u8 = 0;
    /// `status` found warnings.
    pub const WARNING: u8 = 1;
    /// `status` found something critical.
    pub const CRITICAL: u8 = 2;
    /// The API refused or could not be reached, or there is no session.
    pub const ERROR: u8 = 3;
    /// Bad usage (EX_USAGE).
    pub const USAGE: u8 = 64;
}

/// Runs the command line `args` (the program's name first) and returns its exit code.
pub async fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    match dispatch(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{}", error::report(&e));
            ExitCode::from(exit::ERROR)
        }
    }
}

/// What every command that calls the API gets: how to print, and a client acting for the user.
pub(crate) struct Ctx {
    pub output: Output,
    pub client: Client,
}

async fn dispatch(cli: Cli) -> Result<u8, Error> {
    let output = cli.output;
    let ctx = || acting(output);
    match cli.command {
        Command::Login(login) => accounts::login(output, &config_dir()?, login).await,
        Command::Logout => accounts::logout(&config_dir()?).await,
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "meshfleet", &mut out);
            output::out(&String::from_utf8_lossy(&out));
            Ok(exit::OK)
        }
        Command::Clusters(c) => clusters::run(&ctx().await?, c).await,
        Command::Connect(c) => connect::run(&ctx().await?, c).await,
        Command::Status(s) => status::run(&ctx().await?, s).await,
        Command::Certs(c) => certs::run(&ctx().await?, c).await,
        Command::Alerts(a) => alerts::run(&ctx().await?, a).await,
        Command::Upgrades(u) => upgrades::run(&ctx().await?, u).await,
    }
}

fn config_dir() -> Result<PathBuf, Error> {
    session::config_dir(|name| std::env::var_os(name)).ok_or(Error::NoConfigDir)
}

/// A client acting with MESHFLEET_TOKEN when set, else with the saved session, whose access
/// token is first renewed with its refresh token when it is about to expire.
async fn acting(output: Output) -> Result<Ctx, Error> {
    let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(token) = var("MESHFLEET_TOKEN") {
        let url = var("MESHFLEET_URL").ok_or(Error::TokenWithoutUrl)?;
        return Ok(Ctx { output, client: Client::with_token(&url, SecretString::from(token)) });
    }
    let dir = config_dir()?;
    let mut session = Session::load(&dir)?.ok_or(Error::NotLoggedIn)?;
    let now = || chrono::Utc::now().timestamp();
    if session.expiring(now()) {
        let _lock = RefreshLock::acquire(&dir).await?;
        // Another `meshfleet` may have renewed it while this one waited for the lock.
        session = Session::load(&dir)?.ok_or(Error::NotLoggedIn)?;
        if let (true, Some(refresh)) = (session.expiring(now()), &session.refresh_token) {
            let tokens = Client::refresh(&session.url, refresh).await.map_err(|e| match e {
                meshfleet_client::Error::Api { status: 401, problem, .. } => {
                    Error::SessionEnded(problem.and_then(|p| p.detail).unwrap_or_else(|| "the refresh token was refused".into()))
                }
                e => e.into(),
            })?;
            session = accounts::session_of(&session.url, tokens);
            session.save(&dir)?;
        }
    }
    Ok(Ctx { output, client: Client::with_token(&session.url, session.access_token) })
}
