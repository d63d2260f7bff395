//! Command execution against the cluster. Every command is idempotent by its id, also across
//! agent restarts and leader failover: a restarted workload carries the command id in its pod
//! template (`restart`), and a version change that is already in place is not applied again. A write that
//! meets a 409 Conflict is re-read and retried (`conflict`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::Client;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use meshfleet_agent_protocol::v1::{self, command::Body, CommandResult, CommandState};
use serde_json::json;

use super::config::{AgentConfig, CONTROLLER_DEPLOYMENT};
use super::conflict::retry_on_conflict;
use super::inventory::Inventory;
use crate::{Report, Reporter};

mod restart;

pub use restart::{NeedsAttention, WorkloadKind};

/// The controller's setting of the proxy version its injector injects (`meshfleet-controller
/// --proxy-version`).
pub const PROXY_VERSION_ENV: &str = "MESHFLEET_PROXY_VERSION";

/// The pod-template annotation naming the restart-workloads command that last restarted it.
pub const RESTARTED_BY: &str = "meshfleet.io/restarted-by";

pub struct Executor {
    pub client: Client,
    pub config: AgentConfig,
    pub inventory: Arc<Inventory>,
    pub reporter: Mutex<Option<Reporter>>,
}

/// How long a command waits for a rollout unless told otherwise.
const DEFAULT_TIMEOUT_SECS: u64 = 300;

pub(super) fn done(state: CommandState, message: impl Into<String>, output: serde_json::Value) -> CommandResult {
    CommandResult {
        state: state as i32,
        message: message.into(),
        output_json: output.to_string(),
        progress_percent: if state == CommandState::Succeeded { 100 } else { 0 },
        ..Default::default()
    }
}

fn failed(message: impl Into<String>) -> CommandResult {
    done(CommandState::Failed, message, json!({}))
}

/// The restart-workloads command that last restarted this Deployment, from its pod template.
pub fn restarted_by(d: &Deployment) -> Option<&str> {
    d.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(RESTARTED_BY).map(String::as_str)
}

/// A Deployment has fully rolled out its current template.
pub fn rolled_out(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(s) = d.status.as_ref() else { return false };
    s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && s.updated_replicas.unwrap_or(0) == want
        && s.ready_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
}

impl Executor {
    pub fn execute(self: &Arc<Self>, id: String, command: Body) -> BoxFuture<'static, CommandResult> {
        let this = self.clone();
        Box::pin(async move {
            match command {
                Body::Ping(_) => done(CommandState::Succeeded, "pong", json!({"pong": true})),
                Body::CollectDiagnostics(_) => this.diagnostics(),
                Body::RestartWorkloads(p) => this.restart(&id, restart::RestartParams::from(p)).await.unwrap_or_else(|e| failed(e.to_string())),
                Body::SetControlPlaneVersion(p) => this.set_version(p).await.unwrap_or_else(|e| failed(e.to_string())),
                Body::RotateIssuer(_) => this.rotate_issuer(&id).await.unwrap_or_else(failed),
                Body::SetTrustBundle(p) => this.set_trust_bundle(&p.bundle_pem).await.unwrap_or_else(failed),
            }
        })
    }

    fn progress(&self, id: &str, percent: u32, message: String) {
        if let Some(r) = self.reporter.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            r.report(Report::Progress(CommandResult {
                command_id: id.into(),
                state: CommandState::Running as i32,
                message,
                progress_percent: percent.min(99),
                ..Default::default()
            }));
        }
    }

    fn diagnostics(&self) -> CommandResult {
        let facts = self.inventory.facts();
        let st = self.inventory.lock();
        let output = json!({
            "agent_version": env!("CARGO_PKG_VERSION"),
            "pod": self.config.pod_name,
            "kubernetes_version": facts.kubernetes_version,
            "node_count": facts.node_count,
            "meshed_pods": st.pods.len(),
            "meshed_namespaces": facts.namespaces.iter().map(|n| n.name.clone()).collect::<Vec<_>>(),
            "control_plane": facts.control_plane.map(|c| json!({"version": c.version, "replicas": c.replicas, "ready_replicas": c.ready_replicas})),
            "certificates": facts.certificates.iter().map(|c| json!({"role": c.role, "subject": c.subject, "not_after_unix_ms": c.not_after_unix_ms})).collect::<Vec<_>>(),
            "synced": st.synced.iter().collect::<Vec<_>>(),
        });
        done(CommandState::Succeeded, "diagnostics collected", output)
    }

    async fn wait_until(&self, api: &Api<Deployment>, names: &[String], timeout: Duration, pred: impl Fn(&Deployment) -> bool) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut all = true;
            for n in names {
                let d = api.get(n).await.map_err(|e| format!("reading Deployment {n}: {e}"))?;
                all &= pred(&d);
            }
            if all {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("timed out waiting for {}", names.join(", ")));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn set_version(&self, p: v1::SetControlPlaneVersion) -> Result<CommandResult, String> {
        if p.version.is_empty() || !p.version.chars().all(|c| c.is_ascii_alphanumeric() || ".-_+".contains(c)) {
            return Err(format!("invalid version {:?}", p.version));
        }
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.config.mesh_namespace);
        let d = api.get(CONTROLLER_DEPLOYMENT).await.map_err(|e| format!("reading the controller Deployment: {e}"))?;
        let container =
            d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|s| s.containers.first()).ok_or("the controller Deployment has no container")?;
        let current = container.image.clone().unwrap_or_default();
        let repo = match current.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r.to_owned(),
            _ => current.clone(),
        };
        let image = format!("{repo}:{}", p.version);
        // The injector gives new pods the proxy of this version: moving it with the controller
        // is what makes the data plane's restart bring the new proxy.
        let proxy_env = |c: &k8s_openapi::api::core::v1::Container| c.env.iter().flatten().find(|e| e.name == PROXY_VERSION_ENV).and_then(|e| e.value.clone());
        let previous_proxy = proxy_env(container);
        if current != image || previous_proxy.as_deref() != Some(p.version.as_str()) {
            let env = [json!({"name": PROXY_VERSION_ENV, "value": p.version})];
            let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": container.name, "image": image, "env": env}]}}}});
            let (api, patch) = (&api, &patch);
            retry_on_conflict("controller Deployment", || async move {
                api.patch(CONTROLLER_DEPLOYMENT, &PatchParams::default(), &Patch::Strategic(patch)).await.map(|_| ())
            })
            .await
            .map_err(|e| format!("patching the controller Deployment: {e}"))?;
        }
        let timeout = Duration::from_secs(p.timeout_secs.map_or(DEFAULT_TIMEOUT_SECS, u64::from));
        self.wait_until(&api, &[CONTROLLER_DEPLOYMENT.to_owned()], timeout, rolled_out).await?;
        let output = json!({"image": image, "previous_image": current, "proxy_version": p.version, "previous_proxy_version": previous_proxy});
        Ok(done(CommandState::Succeeded, format!("control plane at {}", p.version), output))
    }
}
