//! Log-in, refresh-token rotation, log-out and `me`: what a client needs to keep a session.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{checked, Client, Reply, Result};

/// What a log-in or a refresh gives: an access token and the single-use refresh token.
#[derive(Deserialize)]
pub struct Tokens {
    pub access_token: SecretString,
    /// Lifetime of the access token in seconds.
    pub expires_in: i64,
    pub refresh_token: SecretString,
    pub organization_id: String,
    pub role: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub role: String,
}

/// Who the caller is (`GET /api/v1/me`).
#[derive(Debug, Clone, Deserialize)]
pub struct Me {
    /// The user's e-mail; none for an API token.
    #[serde(rename = "user", default, deserialize_with = "email")]
    pub email: Option<String>,
    pub api_token_id: Option<String>,
    pub organization: Organization,
}

fn email<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct User {
        email: String,
    }
    Ok(Option::<User>::deserialize(d)?.map(|u| u.email))
}

impl Client {
    /// Logs in with e-mail and password (`POST /api/v1/login`), keeping the refresh token.
    pub async fn login_tokens(base: &str, email: &str, password: &SecretString) -> Result<Tokens> {
        let c = Self::with_token(base, String::new().into());
        let body = serde_json::json!({ "email": email, "password": password.expose_secret() });
        Ok(c.send::<Tokens>("log in", c.http.post(c.url("/api/v1/login")).json(&body)).await?.value)
    }

    /// Rotates a refresh token (`POST /api/v1/token/refresh`); the one given stops working.
    pub async fn refresh(base: &str, refresh_token: &SecretString) -> Result<Tokens> {
        let c = Self::with_token(base, String::new().into());
        let body = serde_json::json!({ "refresh_token": refresh_token.expose_secret() });
        Ok(c.send::<Tokens>("refresh the session", c.http.post(c.url("/api/v1/token/refresh")).json(&body)).await?.value)
    }

    /// Who the token belongs to.
    pub async fn me(&self) -> Result<Reply<Me>> {
        self.get_reply("who am I", "/api/v1/me", &[]).await
    }

    /// Ends the user's session (`POST /api/v1/logout`): its access and refresh tokens stop
    /// working. API tokens have no session (revoke them instead).
    pub async fn logout(&self) -> Result<()> {
        let resp = self.authed(self.http.post(self.url("/api/v1/logout"))).send().await?;
        checked("log out", resp).await.map(drop)
    }
}
