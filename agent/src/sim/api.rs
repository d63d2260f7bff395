//! The few meshfleet REST calls the simulator needs: log in, find or create clusters, and read
//! the bootstrap Secret out of a cluster's install manifest. Tokens are kept in `SecretString`
//! and never logged.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::SimError;

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterRef {
    pub id: String,
    pub name: String,
}

/// What an agent needs to register, from the `meshfleet-agent-bootstrap` Secret.
pub struct Bootstrap {
    pub token: SecretString,
    pub gateway_address: String,
    pub ca_pem: String,
}

#[derive(Deserialize)]
struct Page {
    items: Vec<ClusterRef>,
    next_cursor: Option<String>,
}

impl ApiClient {
    pub fn with_token(base: &str, token: SecretString) -> Self {
        ApiClient { http: reqwest::Client::new(), base: base.trim_end_matches('/').to_owned(), token }
    }

    pub async fn login(base: &str, email: &str, password: &SecretString) -> Result<Self, SimError> {
        #[derive(Deserialize)]
        struct Token {
            access_token: SecretString,
        }
        let c = Self::with_token(base, String::new().into());
        let resp = c.http.post(c.url("/api/v1/login")).json(&serde_json::json!({ "email": email, "password": password.expose_secret() })).send().await?;
        let t: Token = checked("log in", resp).await?.json().await?;
        Ok(ApiClient { token: t.access_token, ..c })
    }

    /// Every cluster of the organization, following cursors.
    pub async fn list_clusters(&self) -> Result<Vec<ClusterRef>, SimError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("limit", "500".to_owned())];
            query.extend(cursor.take().map(|c| ("cursor", c)));
            let resp = self.http.get(self.url("/api/v1/clusters")).bearer_auth(self.token.expose_secret()).query(&query).send().await?;
            let page: Page = checked("list clusters", resp).await?.json().await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    pub async fn create_cluster(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<ClusterRef, SimError> {
        #[derive(Deserialize)]
        struct Created {
            cluster: ClusterRef,
        }
        let resp = self
            .http
            .post(self.url("/api/v1/clusters"))
            .bearer_auth(self.token.expose_secret())
            .json(&serde_json::json!({ "name": name, "labels": labels }))
            .send()
            .await?;
        let created: Created = checked(&format!("create cluster {name}"), resp).await?.json().await?;
        Ok(created.cluster)
    }

    /// Fetches the install manifest (which issues a fresh bootstrap token) and takes the
    /// bootstrap Secret's values from it.
    pub async fn bootstrap(&self, cluster_id: &str) -> Result<Bootstrap, SimError> {
        let resp = self.http.get(self.url(&format!("/api/v1/clusters/{cluster_id}/install.yaml"))).bearer_auth(self.token.expose_secret()).send().await?;
        let yaml = checked("install manifest", resp).await?.text().await?;
        parse_bootstrap(&yaml)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

async fn checked(what: &str, resp: reqwest::Response) -> Result<reqwest::Response, SimError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let mut body = resp.text().await.unwrap_or_default();
    body.truncate(500);
    Err(SimError::Api { what: what.to_owned(), status, body })
}

/// Reads MESHFLEET_BOOTSTRAP_TOKEN, MESHFLEET_GATEWAY_ADDRESS and MESHFLEET_GATEWAY_CA from the
/// Secret `meshfleet-agent-bootstrap` (stringData) of a multi-document manifest.
pub fn parse_bootstrap(yaml: &str) -> Result<Bootstrap, SimError> {
    let bad = |m: &str| SimError::Manifest(m.to_owned());
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| SimError::Manifest(e.to_string()))?;
        let is_secret = value["kind"].as_str() == Some("Secret") && value["metadata"]["name"].as_str() == Some("meshfleet-agent-bootstrap");
        if !is_secret {
            continue;
        }
        let data = &value["stringData"];
        let get = |k: &str| data[k].as_str().map(str::to_owned).ok_or_else(|| bad(&format!("the bootstrap Secret has no stringData.{k}")));
        return Ok(Bootstrap {
            token: get("MESHFLEET_BOOTSTRAP_TOKEN")?.into(),
            gateway_address: get("MESHFLEET_GATEWAY_ADDRESS")?,
            ca_pem: get("MESHFLEET_GATEWAY_CA")?,
        });
    }
    Err(bad("no Secret meshfleet-agent-bootstrap in the manifest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_values_come_from_the_secret() {
        let yaml = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: meshfleet-system\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: meshfleet-agent-bootstrap\n  namespace: meshfleet-system\nstringData:\n  MESHFLEET_BOOTSTRAP_TOKEN: mfb_secret\n  MESHFLEET_GATEWAY_ADDRESS: https://127.0.0.1:8443\n  MESHFLEET_GATEWAY_CA: |\n    -----BEGIN CERTIFICATE-----\n    MIIB\n    -----END CERTIFICATE-----\n";
        let b = parse_bootstrap(yaml).unwrap();
        assert_eq!(b.token.expose_secret(), "mfb_secret");
        assert_eq!(b.gateway_address, "https://127.0.0.1:8443");
        assert!(b.ca_pem.starts_with("-----BEGIN CERTIFICATE-----\nMIIB\n"));
        assert!(matches!(parse_bootstrap("kind: Namespace\n"), Err(SimError::Manifest(_))));
    }
}
