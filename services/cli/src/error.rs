//! What can go wrong in a command, and how it is told: an API refusal as its problem's title,
//! detail and fields, never a raw body; every error exits with `exit::ERROR`.

use std::fmt::Write;
use std::path::PathBuf;

use meshfleet_client::Problem;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] meshfleet_client::Error),
    #[error("not logged in: run `meshfleet login` first (or set MESHFLEET_TOKEN and MESHFLEET_URL)")]
    NotLoggedIn,
    #[error("the session cannot be renewed ({0}): run `meshfleet login` again")]
    SessionEnded(String),
    #[error("MESHFLEET_TOKEN is set without MESHFLEET_URL, the API to use it with")]
    TokenWithoutUrl,
    #[error("no config directory: set MESHFLEET_CONFIG_DIR, XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a session this CLI wrote ({reason}): log in again")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no cluster named {0:?}")]
    NoSuchCluster(String),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Kubectl(String),
}

/// The error as printed on standard error, `error: ` first.
pub fn report(e: &Error) -> String {
    match e {
        Error::Api(meshfleet_client::Error::Api { what, status, problem: Some(p), .. }) => problem(what, *status, p),
        Error::Api(meshfleet_client::Error::Api { what, status, problem: None, .. }) => {
            format!("error: {what}: the API answered {status} without a problem document (is the URL that of a Meshfleet API?)")
        }
        Error::Api(meshfleet_client::Error::Http(e)) => {
            let mut out = format!("error: cannot reach the API: {e}");
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let _ = write!(out, ": {s}");
                source = s.source();
            }
            out
        }
        other => format!("error: {other}"),
    }
}

/// `error: <title> (<status>)`, then the detail and each offending field on its own line.
fn problem(what: &str, status: u16, p: &Problem) -> String {
    let mut out = format!("error: {what}: {} ({status})", p.title);
    if let Some(detail) = &p.detail {
        let _ = write!(out, "\n  {detail}");
    }
    for f in &p.errors {
        let line = format!("{}: {}", f.field, f.message);
        if p.detail.as_deref() != Some(line.as_str()) {
            let _ = write!(out, "\n  field {line}");
        }
    }
    out
}
