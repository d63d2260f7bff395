//! meshfleet-client: a typed client of the Meshfleet REST API (`/api/v1`). It speaks the API as
//! the OpenAPI document describes it and knows nothing of the server's code, so it can be used
//! wherever the API is: by the fleet simulator, by end-to-end tests, by the CLI. Tokens are kept
//! in `SecretString` and never logged; errors carry the API's problem+json.

mod accounts;
mod alerts;
mod certificates;
mod manifest;
mod reply;
mod rollouts;
mod types;

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use accounts::{Me, Organization, Tokens};
pub use alerts::{Alert, AlertFilter, AlertPage, MatchOp, Matcher, NewSilence, Silence};
pub use certificates::{Anchor, ClusterCertificates, HeldCertificate, NextExpiry, NextExpiryView, ProxyLeaves, SignedIssuer, Trust};
pub use manifest::{parse_bootstrap, Bootstrap};
pub use reply::Reply;
pub use rollouts::{ClusterRun, Plan, PlannedCluster, Rollout, RolloutAction, RolloutRequest, Skipped, Wave};
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
    /// The API answered with JSON this client cannot read (a server of another version).
    #[error("the API's answer has an unexpected shape: {0}")]
    Decode(#[from] serde_json::Error),
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
        let tokens = Self::login_tokens(base, email, password).await?;
        Ok(Self::with_token(base, tokens.access_token))
    }

    /// Signs up a user with a new organization (`POST /api/v1/signup`), then logs them in.
    pub async fn signup(base: &str, email: &str, password: &SecretString, organization: &str) -> Result<Self> {
        let c = Self::with_token(base, String::new().into());
        let body = serde_json::json!({ "email": email, "password": password.expose_secret(), "organization": organization });
        let _: Reply<serde_json::Value> = c.send("sign up", c.http.post(c.url("/api/v1/signup")).json(&body)).await?;
        Self::login(base, email, password).await
    }

    /// The token the client acts with (for a caller that also speaks HTTP itself).
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    /// Every cluster of the organization, following cursors (`GET /api/v1/clusters`).
    pub async fn list_clusters(&self) -> Result<Vec<Cluster>> {
        Ok(self.clusters().await?.value)
    }

    /// Every cluster of the organization, with the API's JSON of them all as one array.
    pub async fn clusters(&self) -> Result<Reply<Vec<Cluster>>> {
        #[derive(Deserialize)]
        struct Page {
            items: Vec<serde_json::Value>,
            next_cursor: Option<String>,
        }
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("limit", "500".to_owned())];
            query.extend(cursor.take().map(|c| ("cursor", c)));
            let page: Page = self.get("list clusters", "/api/v1/clusters", &query).await?;
            items.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Reply::from_json(serde_json::Value::Array(items)),
            }
        }
    }

    /// One cluster (`GET /api/v1/clusters/{id}`).
    pub async fn cluster(&self, cluster_id: &str) -> Result<Reply<Cluster>> {
        self.get_reply("get cluster", &format!("/api/v1/clusters/{cluster_id}"), &[]).await
    }

    /// Deletes a cluster (`DELETE /api/v1/clusters/{id}`).
    pub async fn delete_cluster(&self, cluster_id: &str) -> Result<()> {
        let resp = self.authed(self.http.delete(self.url(&format!("/api/v1/clusters/{cluster_id}")))).send().await?;
        checked("delete cluster", resp).await.map(drop)
    }

    /// Creates a cluster; the answer carries its one-time bootstrap token.
    pub async fn create_cluster(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<Created> {
        Ok(self.create_cluster_reply(name, labels).await?.value)
    }

    /// Creates a cluster, with the API's JSON of it (which holds the bootstrap token).
    pub async fn create_cluster_reply(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<Reply<Created>> {
        let body = serde_json::json!({ "name": name, "labels": labels });
        self.send(&format!("create cluster {name}"), self.authed(self.http.post(self.url("/api/v1/clusters"))).json(&body)).await
    }

    /// The install manifest of a cluster (which issues a fresh bootstrap token), as YAML.
    pub async fn install_manifest(&self, cluster_id: &str) -> Result<String> {
        self.install_manifest_for(cluster_id, &[]).await
    }

    /// The install manifest, with the namespaces opted into the mesh (`meshed_namespaces`).
    pub async fn install_manifest_for(&self, cluster_id: &str, meshed_namespaces: &[String]) -> Result<String> {
        let mut request = self.authed(self.http.get(self.url(&format!("/api/v1/clusters/{cluster_id}/install.yaml"))));
        if !meshed_namespaces.is_empty() {
            request = request.query(&[("meshed_namespaces", meshed_namespaces.join(","))]);
        }
        Ok(checked("install manifest", request.send().await?).await?.text().await?)
    }

    /// The bootstrap Secret's values from a fresh install manifest of the cluster.
    pub async fn bootstrap(&self, cluster_id: &str) -> Result<Bootstrap> {
        parse_bootstrap(&self.install_manifest(cluster_id).await?)
    }

    /// A cluster's health and findings (`GET /api/v1/clusters/{id}/health`).
    pub async fn cluster_health(&self, cluster_id: &str) -> Result<ClusterHealth> {
        Ok(self.cluster_health_reply(cluster_id).await?.value)
    }

    /// A cluster's health, with the API's JSON of it.
    pub async fn cluster_health_reply(&self, cluster_id: &str) -> Result<Reply<ClusterHealth>> {
        self.get_reply("cluster health", &format!("/api/v1/clusters/{cluster_id}/health"), &[]).await
    }

    /// The organization's fleet health (`GET /api/v1/fleet/health`).
    pub async fn fleet_health(&self) -> Result<FleetHealth> {
        Ok(self.fleet_health_reply().await?.value)
    }

    /// The fleet health, with the API's JSON of it.
    pub async fn fleet_health_reply(&self) -> Result<Reply<FleetHealth>> {
        self.get_reply("fleet health", "/api/v1/fleet/health", &[]).await
    }

    async fn get<T: DeserializeOwned>(&self, what: &str, path: &str, query: &[(&str, String)]) -> Result<T> {
        Ok(self.get_reply(what, path, query).await?.value)
    }

    async fn get_reply<T: DeserializeOwned>(&self, what: &str, path: &str, query: &[(&str, String)]) -> Result<Reply<T>> {
        self.send(what, self.authed(self.http.get(self.url(path))).query(query)).await
    }

    /// Sends the request; a success's body is read as `T` and kept as the API's JSON.
    async fn send<T: DeserializeOwned>(&self, what: &str, request: reqwest::RequestBuilder) -> Result<Reply<T>> {
        Reply::from_json(checked(what, request.send().await?).await?.json().await?)
    }

    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.bearer_auth(self.token.expose_secret())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
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
