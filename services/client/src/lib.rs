//! meshfleet-client: a typed client of the Meshfleet REST API (`/api/v1`). It speaks the API as
//! the OpenAPI document describes it and knows nothing of the server's code, so it can be used
//! wherever the API is: by the fleet simulator, by end-to-end tests, by the CLI. Tokens are kept
//! in `SecretString` and never logged; errors carry the API's problem+json.

mod manifest;
mod types;

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use manifest::{parse_bootstrap, Bootstrap};
pub use types::{Cluster, ClusterHealth, Created, CreatedToken, Finding, FleetHealth, HealthSummary, Problem, ProblemField};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HTTP request to the API failed")]
    Http(#[from] reqwest::Error),
    /// The API refused: its problem+json when it sent one, else the start of the body.
    #[error("{what}: the API answered {status}: {}", problem.as_ref().map_or(body.as_str(), |p| p.detail.as_deref().unwrap_or(&p.title)))]
    Api { what: String, status: u16, problem: Option<Box<Problem>>, body: String },
    #[error("install manifest: {0}")]
    Manifest(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client acting with one access or API token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: SecretString,
}

impl Client {
    /// A client with a token from elsewhere (an API token, or an access token).
    pub fn with_token(base: &str, token: SecretString) -> Self {
        Client { http: reqwest::Client::new(), base: base.trim_end_matches('/').to_owned(), token }
    }

    /// Logs in with e-mail and password (`POST /api/v1/login`).
    pub async fn login(base: &str, email: &str, password: &SecretString) -> Result<Self> {
        let c = Self::with_token(base, String::new().into());
        let body = serde_json::json!({ "email": email, "password": password.expose_secret() });
        let t: Token = c.send("log in", c.http.post(c.url("/api/v1/login")).json(&body)).await?;
        Ok(Client { token: t.access_token, ..c })
    }

    /// Signs up a user with a new organization (`POST /api/v1/signup`), then logs them in.
    pub async fn signup(base: &str, email: &str, password: &SecretString, organization: &str) -> Result<Self> {
        let c = Self::with_token(base, String::new().into());
        let body = serde_json::json!({ "email": email, "password": password.expose_secret(), "organization": organization });
        let _: serde_json::Value = c.send("sign up", c.http.post(c.url("/api/v1/signup")).json(&body)).await?;
        Self::login(base, email, password).await
    }

    /// The token the client acts with (for a caller that also speaks HTTP itself).
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    /// Every cluster of the organization, following cursors (`GET /api/v1/clusters`).
    pub async fn list_clusters(&self) -> Result<Vec<Cluster>> {
        #[derive(Deserialize)]
        struct Page {
            items: Vec<Cluster>,
            next_cursor: Option<String>,
        }
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("limit", "500".to_owned())];
            query.extend(cursor.take().map(|c| ("cursor", c)));
            let page: Page = self.get("list clusters", "/api/v1/clusters", &query).await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Creates a cluster; the answer carries its one-time bootstrap token.
    pub async fn create_cluster(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<Created> {
        let body = serde_json::json!({ "name": name, "labels": labels });
        self.send(&format!("create cluster {name}"), self.authed(self.http.post(self.url("/api/v1/clusters"))).json(&body)).await
    }

    /// The install manifest of a cluster (which issues a fresh bootstrap token), as YAML.
    pub async fn install_manifest(&self, cluster_id: &str) -> Result<String> {
        let resp = self.authed(self.http.get(self.url(&format!("/api/v1/clusters/{cluster_id}/install.yaml")))).send().await?;
        Ok(checked("install manifest", resp).await?.text().await?)
    }

    /// The bootstrap Secret's values from a fresh install manifest of the cluster.
    pub async fn bootstrap(&self, cluster_id: &str) -> Result<Bootstrap> {
        parse_bootstrap(&self.install_manifest(cluster_id).await?)
    }

    /// A cluster's health and findings (`GET /api/v1/clusters/{id}/health`).
    pub async fn cluster_health(&self, cluster_id: &str) -> Result<ClusterHealth> {
        self.get("cluster health", &format!("/api/v1/clusters/{cluster_id}/health"), &[]).await
    }

    /// The organization's fleet health (`GET /api/v1/fleet/health`).
    pub async fn fleet_health(&self) -> Result<FleetHealth> {
        self.get("fleet health", "/api/v1/fleet/health", &[]).await
    }

    async fn get<T: DeserializeOwned>(&self, what: &str, path: &str, query: &[(&str, String)]) -> Result<T> {
        self.send(what, self.authed(self.http.get(self.url(path))).query(query)).await
    }

    async fn send<T: DeserializeOwned>(&self, what: &str, request: reqwest::RequestBuilder) -> Result<T> {
        Ok(checked(what, request.send().await?).await?.json().await?)
    }

    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.bearer_auth(self.token.expose_secret())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

#[derive(Deserialize)]
struct Token {
    access_token: SecretString,
}

/// The response if it succeeded; otherwise an `Error::Api` with the problem the API sent.
async fn checked(what: &str, resp: reqwest::Response) -> Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let mut body = resp.text().await.unwrap_or_default();
    let problem = serde_json::from_str(&body).ok();
    body.truncate(500);
    Err(Error::Api { what: what.to_owned(), status, problem, body })
}
