//! A fleet of agents for the gateway benches: clusters created through the API and an agent
//! registered for each through the gateway (own P-256 key, CSR and certificate), and the
//! open-files limit such a fleet needs (each agent is a socket in every process it crosses).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use futures::{StreamExt, TryStreamExt};
use meshfleet_agent::Identity;
use meshfleet_agent_protocol::v1::agent_gateway_client::AgentGatewayClient;
use meshfleet_agent_protocol::v1::RegisterRequest;
use meshfleet_client::Client;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::{http_json, owner};

const SETUP_CONCURRENCY: usize = 32;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Fleet {
    pub ca_pem: String,
    pub identities: Vec<Identity>,
}

/// (soft, hard) open-file limits of this process; the processes it starts inherit them.
pub fn nofile_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or("");
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (nums.first().copied().unwrap_or(1024), nums.get(1).copied().unwrap_or(1024))
}

/// Raises the open-files limit to `want` (only root may go above the hard limit), or else the
/// soft limit to the hard one; with `prlimit`, so no libc dependency.
pub fn raise_nofile(want: u64) -> (u64, u64) {
    let (soft, hard) = nofile_limits();
    let pid = std::process::id().to_string();
    if want > hard {
        let _ = Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={want}:{want}")]).stderr(std::process::Stdio::null()).status();
    }
    let (soft_now, hard_now) = nofile_limits();
    if soft_now < hard_now.max(soft) {
        let _ = Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={hard_now}:{hard_now}")]).status();
    }
    nofile_limits()
}

pub fn tls_endpoint(gateway: SocketAddr, ca_pem: &str, id: Option<&Identity>) -> anyhow::Result<Endpoint> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("127.0.0.1");
    if let Some(id) = id {
        tls = tls.identity(tonic::transport::Identity::from_pem(&id.chain_pem, id.key_pem.expose_secret()));
    }
    Ok(Endpoint::from_shared(format!("https://{gateway}"))?.tls_config(tls)?.connect_timeout(Duration::from_secs(10)).tcp_nodelay(true))
}

/// Signs up, creates `n` clusters through the API at `base` and registers an agent for each
/// through the gateway at `gateway`, `SETUP_CONCURRENCY` at a time.
pub async fn setup_fleet(base: &str, gateway: SocketAddr, n: usize) -> anyhow::Result<Fleet> {
    let http = reqwest::Client::new();
    let (token, _) = owner(&http, base).await?;
    // The CA bundle, the way an agent gets it: from a cluster's install manifest.
    let probe =
        http_json(http.post(format!("{base}/api/v1/clusters")).bearer_auth(&token).json(&json!({ "name": "bench-ca-probe", "labels": {} })), "create cluster")
            .await?;
    let probe_id = probe["cluster"]["id"].as_str().ok_or_else(|| anyhow!("no cluster id in {probe}"))?;
    let boot = Client::with_token(base, SecretString::from(token.clone())).bootstrap(probe_id).await.map_err(|e| anyhow!("install manifest: {e}"))?;
    let ca_pem = boot.ca_pem.clone();
    let channel = tls_endpoint(gateway, &ca_pem, None)?.connect().await.context("TLS connection to the gateway")?;
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let identities: Vec<Identity> = futures::stream::iter(0..n)
        .map(|i| {
            let (http, token, channel, done) = (http.clone(), token.clone(), channel.clone(), done.clone());
            let base = base.to_owned();
            async move {
                let created = http_json(
                    http.post(format!("{base}/api/v1/clusters"))
                        .bearer_auth(&token)
                        .json(&json!({ "name": format!("bench-{i:05}"), "labels": { "env": "bench" } })),
                    "create cluster",
                )
                .await?;
                let bootstrap = created["bootstrap_token"]["token"].as_str().ok_or_else(|| anyhow!("no bootstrap token in {created}"))?.to_owned();
                let id = register(channel, &bootstrap).await?;
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % 1000 == 0 {
                    eprintln!("    registered {d}/{n} agents ({:.0}/s)", d as f64 / started.elapsed().as_secs_f64());
                }
                anyhow::Ok(id)
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(Fleet { ca_pem, identities })
}

async fn register(channel: Channel, bootstrap_token: &str) -> anyhow::Result<Identity> {
    let key = meshfleet_pki::mint::new_key()?;
    let csr_der = meshfleet_pki::csr::new_csr(&key)?;
    let mut req = tonic::Request::new(RegisterRequest { bootstrap_token: bootstrap_token.to_owned(), csr_der, agent_version: "0.1.0-bench".into() });
    req.set_timeout(CALL_TIMEOUT);
    let resp = AgentGatewayClient::new(channel).register(req).await.map_err(|s| anyhow!("register: {s}"))?.into_inner();
    let cert = resp.certificate.ok_or_else(|| anyhow!("register: no certificate"))?;
    Ok(Identity {
        org_id: resp.organization_id,
        cluster_id: resp.cluster_id,
        chain_pem: cert.chain_pem,
        key_pem: SecretString::from(key.serialize_pem()),
        not_after_unix_ms: cert.not_after_unix_ms,
    })
}

/// A spread of seeds for the synthetic clusters, one per agent.
pub fn seed(i: usize) -> u64 {
    0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)
}
