//! `login` and `logout`: the secret is read from standard input (never the command line, where
//! other users' `ps` would see it), checked with the API, and the session saved.

use std::io::Read;
use std::path::Path;

use meshfleet_client::{Client, Tokens};
use secrecy::SecretString;

use super::args::Login;
use super::error::Error;
use super::exit;
use super::output::{out, Output};
use super::session::Session;

pub async fn login(output: Output, dir: &Path, args: Login) -> Result<u8, Error> {
    let secret = read_secret()?;
    let url = args.url.trim_end_matches('/').to_owned();
    let session = match &args.email {
        Some(email) if args.password_stdin => session_of(&url, Client::login_tokens(&url, email, &secret).await?),
        _ => Session { url: url.clone(), access_token: secret, refresh_token: None, access_expires_at: None },
    };
    // Also checks an API token before it is kept.
    let me = Client::with_token(&url, session.access_token.clone()).me().await?;
    session.save(dir)?;
    output.show(&me, |me| {
        let who = me.email.as_deref().map_or_else(|| "an API token".to_owned(), |e| e.to_owned());
        format!("Logged in to {url} as {who} (organization {}, role {}).\n", me.organization.name, me.organization.role)
    });
    Ok(exit::OK)
}

/// The session a log-in or a refresh gives.
pub fn session_of(url: &str, t: Tokens) -> Session {
    let expires = chrono::Utc::now().timestamp() + t.expires_in;
    Session { url: url.to_owned(), access_token: t.access_token, refresh_token: Some(t.refresh_token), access_expires_at: Some(expires) }
}

/// Standard input, less one trailing line break (as `echo` and a terminal leave).
fn read_secret() -> Result<SecretString, Error> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|source| Error::Io { path: "<stdin>".into(), source })?;
    let trimmed = s.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&s);
    if trimmed.is_empty() {
        return Err(Error::Input("standard input is empty: pipe the password or token into `meshfleet login`".into()));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// Ends a password log-in's session on the server too (an API token stays valid: revoke it
/// in the API), then forgets it.
pub async fn logout(dir: &Path) -> Result<u8, Error> {
    let Some(session) = Session::load(dir)? else {
        eprintln!("Not logged in.");
        return Ok(exit::OK);
    };
    if session.refresh_token.is_some() {
        if let Err(e) = Client::with_token(&session.url, session.access_token).logout().await {
            // Expired or already ended: forgetting it is all that is left to do.
            eprintln!("note: the server did not end the session ({e}); forgetting it here");
        }
    }
    Session::remove(dir)?;
    out(&format!("Logged out of {}.\n", session.url));
    Ok(exit::OK)
}
