//! Command execution against the cluster. Every command is idempotent by its id, also across
//! agent restarts and leader failover: a restarted workload carries the command id in its pod
//! template, and a version change that is already in place is not applied again. A write that
//! meets a 409 Conflict is re-read and retried (`conflict`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::kube::api::{Api, ListParams, Patch, PatchParams};
use ::kube::{Client, ResourceExt};
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use meshfleet_agent_protocol::v1::{self, command::Body, CommandResult, CommandState};
use serde_json::json;

use super::config::{AgentConfig, CONTROLLER_DEPLOYMENT, RESTART_ROLE};
use super::conflict::retry_on_conflict;
use super::inventory::Inventory;
use crate::{Report, Reporter};

/// The pod-template annotation naming the restart-workloads command that last restarted it.
pub const RESTARTED_BY: &str = "meshfleet.io/restarted-by";

pub struct Executor {
    pub client: Client,
    pub config: AgentConfig,
    pub inventory: Arc<Inventory>,
    pub reporter: Mutex<Option<Reporter>>,
}

/// `RestartWorkloads` with its defaults applied.
struct RestartParams {
    namespace: Option<String>,
    selector: Option<String>,
    batch_size: usize,
    max_unavailable: usize,
    timeout_secs: u64,
}

impl From<v1::RestartWorkloads> for RestartParams {
    fn from(p: v1::RestartWorkloads) -> Self {
        RestartParams {
            namespace: p.namespace,
            selector: p.selector,
            batch_size: p.batch_size.unwrap_or(1).max(1) as usize,
            max_unavailable: p.max_unavailable.unwrap_or(0) as usize,
            timeout_secs: p.timeout_secs.map_or(DEFAULT_TIMEOUT_SECS, u64::from),
        }
    }
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
                Body::RestartWorkloads(p) => this.restart(&id, p.into()).await.unwrap_or_else(|e| failed(e.to_string())),
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

    async fn restart(&self, id: &str, p: RestartParams) -> Result<CommandResult, String> {
        let api: Api<Deployment> = match &p.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let lp = match &p.selector {
            Some(s) => ListParams::default().labels(s),
            None => ListParams::default(),
        };
        let mut targets: Vec<Deployment> = api.list(&lp).await.map_err(|e| format!("listing Deployments: {e}"))?.items;
        targets.retain(|d| self.inventory.is_meshed_namespace(&d.namespace().unwrap_or_default()));
        targets.sort_by_key(|d| (d.namespace(), d.name_any()));
        let total = targets.len().max(1);
        let timeout = Duration::from_secs(p.timeout_secs);
        let (mut restarted, mut skipped) = (Vec::new(), Vec::new());
        let mut by_ns: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in &targets {
            by_ns.entry(d.namespace().unwrap_or_default()).or_default().push(d.name_any());
        }
        for (i, batch) in targets.chunks(p.batch_size).enumerate() {
            // Health gate: do not make things worse while other selected workloads are down.
            for (ns, names) in &by_ns {
                let nsapi: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
                let unavailable = |d: &Deployment| d.status.as_ref().and_then(|s| s.unavailable_replicas).unwrap_or(0) > 0;
                let mut down = 0;
                for n in names {
                    if nsapi.get(n).await.map(|d| unavailable(&d)).unwrap_or(true) {
                        down += 1;
                    }
                }
                if down > p.max_unavailable {
                    let finished = i * p.batch_size;
                    self.progress(
                        id,
                        (finished * 100 / total) as u32,
                        format!("waiting: {down} selected workloads in {ns} unavailable (max_unavailable {})", p.max_unavailable),
                    );
                    self.wait_until(&nsapi, names, timeout, |d| !unavailable(d)).await?;
                }
            }
            let mut waiting: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for d in batch {
                let (ns, name) = (d.namespace().unwrap_or_default(), d.name_any());
                let nsapi: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
                let (nsapi, name_ref) = (&nsapi, &name);
                // Read again before each attempt: the stamp check and a retry after a 409 both
                // need the Deployment as it is now.
                let patched = retry_on_conflict("Deployment", || async move {
                    let current = nsapi.get(name_ref).await?;
                    if restarted_by(&current) == Some(id) {
                        // This command already restarted it (a redelivery, or a new leader).
                        return Ok(false);
                    }
                    let now = k8s_openapi::jiff::Timestamp::now().to_string();
                    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_BY: id, "kubectl.kubernetes.io/restartedAt": now}}}}});
                    nsapi.patch(name_ref, &PatchParams::default(), &Patch::Strategic(&patch)).await.map(|_| true)
                })
                .await
                .map_err(|e| match &e {
                    // RBAC confines restarts to namespaces opted in with the restart Role.
                    ::kube::Error::Api(s) if s.code == 403 => {
                        format!("may not restart Deployment {ns}/{name}: namespace {ns} has no Role {RESTART_ROLE} binding the agent ({e})")
                    }
                    _ => format!("patching Deployment {ns}/{name}: {e}"),
                })?;
                if patched {
                    restarted.push(format!("{ns}/{name}"));
                } else {
                    skipped.push(format!("{ns}/{name}"));
                }
                waiting.entry(ns).or_default().push(name);
            }
            for (ns, names) in &waiting {
                let nsapi: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
                self.wait_until(&nsapi, names, timeout, rolled_out).await?;
            }
            let finished = ((i + 1) * p.batch_size).min(total);
            self.progress(id, (finished * 100 / total) as u32, format!("batch {} done: {finished}/{} workloads", i + 1, targets.len()));
        }
        let message = format!("restarted {} workloads ({} already restarted by this command)", restarted.len(), skipped.len());
        Ok(done(CommandState::Succeeded, message, json!({"restarted": restarted, "skipped": skipped, "batch_size": p.batch_size})))
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
        if current != image {
            let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": container.name, "image": image}]}}}});
            let (api, patch) = (&api, &patch);
            retry_on_conflict("controller Deployment", || async move {
                api.patch(CONTROLLER_DEPLOYMENT, &PatchParams::default(), &Patch::Strategic(patch)).await.map(|_| ())
            })
            .await
            .map_err(|e| format!("patching the controller Deployment: {e}"))?;
        }
        let timeout = Duration::from_secs(p.timeout_secs.map_or(DEFAULT_TIMEOUT_SECS, u64::from));
        self.wait_until(&api, &[CONTROLLER_DEPLOYMENT.to_owned()], timeout, rolled_out).await?;
        Ok(done(CommandState::Succeeded, format!("control plane at {}", p.version), json!({"image": image, "previous_image": current})))
    }
}
