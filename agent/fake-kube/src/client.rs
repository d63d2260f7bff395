//! A tiny kubectl for the fake API server, over its HTTP API (so admission webhooks run, as for
//! `kubectl apply`): apply multi-document YAML, and wait for Deployments to be ready. Used by
//! the binary's `apply` and `wait` commands; it reads the kubeconfig the binary wrote.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::resources::{by_kind, def};
use crate::{fold_string_data, Error, Result};

/// The server and token of a kubeconfig's first cluster and user.
pub struct Client {
    server: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn from_kubeconfig(yaml: &str) -> Result<Client> {
        let kc: Value = serde_yaml_ng::from_str(yaml).map_err(|e| Error::Client(e.to_string()))?;
        let field = |p: &str| kc.pointer(p).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| Error::Client(format!("kubeconfig without {p}")));
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().map_err(|e| Error::Client(e.to_string()))?;
        Ok(Client { server: field("/clusters/0/cluster/server")?, token: field("/users/0/user/token")?, http })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.server)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| Error::Client(e.to_string()))?;
        let code = resp.status().as_u16();
        Ok((code, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Creates each object of the YAML, or replaces it if it exists; returns `kind/name` lines.
    pub async fn apply_yaml(&self, yaml: &str) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let obj = fold_string_data(Value::deserialize(doc).map_err(|e| Error::Invalid(e.to_string()))?);
            if obj.is_null() {
                continue;
            }
            let api_version = obj["apiVersion"].as_str().unwrap_or("");
            let kind = obj["kind"].as_str().unwrap_or("");
            let d = def(by_kind(api_version, kind).ok_or_else(|| Error::UnknownKind { api_version: api_version.into(), kind: kind.into() })?);
            let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            let base = if d.group.is_empty() { "/api/v1".to_owned() } else { format!("/apis/{}/{}", d.group, d.version) };
            let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
            let collection = if d.namespaced { format!("{base}/namespaces/{ns}/{}", d.plural) } else { format!("{base}/{}", d.plural) };
            let (mut code, mut answer) = self.call(reqwest::Method::POST, &collection, Some(&obj)).await?;
            if code == 409 {
                (code, answer) = self.call(reqwest::Method::PUT, &format!("{collection}/{name}"), Some(&obj)).await?;
            }
            if !(200..300).contains(&code) {
                return Err(Error::Client(format!("{kind} {name}: {}", answer["message"].as_str().unwrap_or("refused"))));
            }
            done.push(format!("{}/{name}", d.kind.to_lowercase()));
        }
        Ok(done)
    }

    /// Waits until the Deployment has all its replicas ready and updated; returns its ready
    /// pods' `name podIP`.
    pub async fn wait_deployment(&self, namespace: &str, name: &str, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, d) = self.call(reqwest::Method::GET, &format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}"), None).await?;
            let want = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            let status = |f: &str| d.pointer(&format!("/status/{f}")).and_then(Value::as_i64).unwrap_or(0);
            if d.get("spec").is_some() && status("readyReplicas") == want && status("updatedReplicas") == want && status("replicas") == want {
                let labels = d.pointer("/spec/selector/matchLabels").and_then(Value::as_object).cloned().unwrap_or_default();
                let (_, pods) = self.call(reqwest::Method::GET, &format!("/api/v1/namespaces/{namespace}/pods"), None).await?;
                let ready = pods["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| labels.iter().all(|(k, v)| p.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v)) && crate::sim::is_ready(p));
                return Ok(ready
                    .map(|p| format!("{} {}", p["metadata"]["name"].as_str().unwrap_or(""), p["status"]["podIP"].as_str().unwrap_or("")))
                    .collect());
            }
            if Instant::now() >= deadline {
                let why = json!({"replicas": want, "status": d.get("status")});
                return Err(Error::Client(format!("deployment {namespace}/{name} not ready after {timeout:?}: {why}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
