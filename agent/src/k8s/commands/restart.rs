//! restart-workloads: the data plane restarted so the proxy injector gives it the current
//! proxy. Deployments, StatefulSets updated `RollingUpdate` and DaemonSets of meshed namespaces
//! get a new pod-template stamp (their controllers then roll them within each workload's own
//! maxUnavailable), `batch_size` per namespace at once, never while a PodDisruptionBudget of
//! theirs allows no disruption. Pods no controller can roll safely (bare pods, Jobs' pods,
//! StatefulSets updated `OnDelete`) are listed as needing attention and never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use ::kube::api::{Api, ListParams, Patch, PatchParams};
use ::kube::core::NamespaceResourceScope;
use ::kube::{Client, Resource, ResourceExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use meshfleet_agent_protocol::v1::{self, CommandResult, CommandState};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::{done, Executor, DEFAULT_TIMEOUT_SECS, RESTARTED_BY};
use crate::k8s::config::RESTART_ROLE;
use crate::k8s::conflict::retry_on_conflict;

/// `RestartWorkloads` with its defaults applied.
pub(super) struct RestartParams {
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

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
        })
    }
}

/// What a restart needs to know of a workload, as it is now.
struct Observed {
    restarted_by: Option<String>,
    rolled_out: bool,
    unavailable: bool,
}

/// A workload kind restarted by stamping its pod template.
trait Restartable: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Serialize + fmt::Debug + Send + Sync + 'static {
    const KIND: WorkloadKind;
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// Its controller has rolled out the current template to every pod, and they are ready.
    fn rolled_out(&self) -> bool;
    /// Some of its pods are not available.
    fn unavailable(&self) -> bool;

    fn observe(&self) -> Observed {
        let restarted_by = self.template().and_then(|t| t.metadata.as_ref()?.annotations.as_ref()?.get(RESTARTED_BY).cloned());
        Observed { restarted_by, rolled_out: self.rolled_out(), unavailable: self.unavailable() }
    }
}

fn observed_current(generation: Option<i64>, observed: Option<i64>) -> bool {
    observed.unwrap_or(0) >= generation.unwrap_or(0)
}

impl Restartable for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn rolled_out(&self) -> bool {
        super::rolled_out(self)
    }
    fn unavailable(&self) -> bool {
        self.status.as_ref().and_then(|s| s.unavailable_replicas).unwrap_or(0) > 0
    }
}

impl Restartable for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    /// As `kubectl rollout status` judges it: every replica updated and ready, and the
    /// current revision moved to the update revision.
    fn rolled_out(&self) -> bool {
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(s) = self.status.as_ref() else { return false };
        observed_current(self.metadata.generation, s.observed_generation)
            && s.replicas == want
            && s.ready_replicas.unwrap_or(0) == want
            && s.updated_replicas.unwrap_or(0) == want
            && s.current_revision == s.update_revision
    }
    fn unavailable(&self) -> bool {
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        self.status.as_ref().map_or(want > 0, |s| s.ready_replicas.unwrap_or(0) < want)
    }
}

impl Restartable for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn rolled_out(&self) -> bool {
        let Some(s) = self.status.as_ref() else { return false };
        observed_current(self.metadata.generation, s.observed_generation)
            && s.updated_number_scheduled.unwrap_or(0) == s.desired_number_scheduled
            && s.number_available.unwrap_or(0) == s.desired_number_scheduled
    }
    fn unavailable(&self) -> bool {
        self.status.as_ref().is_none_or(|s| s.number_unavailable.unwrap_or(0) > 0)
    }
}

/// A StatefulSet its controller rolls only when its pods are deleted by someone.
fn updates_on_delete(s: &StatefulSet) -> bool {
    s.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|u| u.type_.as_deref()) == Some("OnDelete")
}

/// One workload to restart.
#[derive(Debug, Clone)]
struct Workload {
    kind: WorkloadKind,
    namespace: String,
    name: String,
    /// Its pod template's labels: what its pods carry, and what a PodDisruptionBudget selects.
    pod_labels: BTreeMap<String, String>,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

impl Workload {
    fn of<K: Restartable>(k: &K) -> Workload {
        let pod_labels = k.template().and_then(|t| t.metadata.as_ref()?.labels.clone()).unwrap_or_default();
        Workload { kind: K::KIND, namespace: k.namespace().unwrap_or_default(), name: k.name_any(), pod_labels }
    }

    async fn observe(&self, client: &Client) -> Result<Observed, ::kube::Error> {
        async fn get<K: Restartable>(client: &Client, w: &Workload) -> Result<Observed, ::kube::Error> {
            Ok(Api::<K>::namespaced(client.clone(), &w.namespace).get(&w.name).await?.observe())
        }
        match self.kind {
            WorkloadKind::Deployment => get::<Deployment>(client, self).await,
            WorkloadKind::StatefulSet => get::<StatefulSet>(client, self).await,
            WorkloadKind::DaemonSet => get::<DaemonSet>(client, self).await,
        }
    }

    /// Stamps the pod template with the command id (and `restartedAt`, as `kubectl rollout
    /// restart` does) unless this command stamped it already: returns whether it did.
    async fn stamp(&self, client: &Client, id: &str) -> Result<bool, ::kube::Error> {
        async fn stamp<K: Restartable>(client: &Client, w: &Workload, id: &str) -> Result<bool, ::kube::Error> {
            let api = Api::<K>::namespaced(client.clone(), &w.namespace);
            let (api, name) = (&api, &w.name);
            // Read again before each attempt: the stamp check and a retry after a 409 both
            // need the workload as it is now.
            retry_on_conflict(&w.kind.to_string(), || async move {
                if api.get(name).await?.observe().restarted_by.as_deref() == Some(id) {
                    // This command already restarted it (a redelivery, or a new leader).
                    return Ok(false);
                }
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_BY: id, "kubectl.kubernetes.io/restartedAt": now}}}}});
                api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch)).await.map(|_| true)
            })
            .await
        }
        match self.kind {
            WorkloadKind::Deployment => stamp::<Deployment>(client, self, id).await,
            WorkloadKind::StatefulSet => stamp::<StatefulSet>(client, self, id).await,
            WorkloadKind::DaemonSet => stamp::<DaemonSet>(client, self, id).await,
        }
    }
}

/// A pod left alone, and why (the command's `needs_attention`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct NeedsAttention {
    pub namespace: String,
    pub pod: String,
    /// What holds it: `Pod` (nothing), `Job` or `StatefulSet`.
    pub kind: String,
    pub reason: String,
}

/// Why `pod` cannot be restarted by a template stamp, if it cannot.
fn needs_attention(pod: &Pod, on_delete: &BTreeSet<(String, String)>) -> Option<NeedsAttention> {
    // Finished pods run no proxy, and pods already going away need nothing.
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ns = pod.namespace().unwrap_or_default();
    let owner = pod.owner_references().iter().find(|o| o.controller == Some(true));
    let (kind, reason) = match owner {
        None => ("Pod", "no controller owns it, so a restart would delete it for good; recreate it to give it the new proxy".to_owned()),
        Some(o) if o.kind == "Job" => {
            ("Job", format!("Job {} runs it to completion; it gets the new proxy on its next run, it is not stopped mid-run", o.name))
        }
        Some(o) if o.kind == "StatefulSet" && on_delete.contains(&(ns.clone(), o.name.clone())) => {
            ("StatefulSet", format!("StatefulSet {} updates OnDelete; delete its pods one at a time to give them the new proxy", o.name))
        }
        Some(_) => return None,
    };
    Some(NeedsAttention { namespace: ns, pod: pod.name_any(), kind: kind.into(), reason })
}

/// `selector` (a policy/v1 PodDisruptionBudget's) selects pods labelled `labels`: every
/// `matchLabels` pair and `matchExpressions` requirement holds; a null selector selects none.
fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(s) = selector else { return false };
    let pairs = s.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions = s.match_expressions.iter().flatten().all(|e| {
        let (value, values) = (labels.get(&e.key), e.values.as_deref().unwrap_or_default());
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    pairs && expressions
}

/// Why a PodDisruptionBudget holds a restart of pods labelled `labels` now, if one does: it
/// selects them and allows no disruption (or has not yet counted its current spec).
fn blocking(pdbs: &[PodDisruptionBudget], labels: &BTreeMap<String, String>) -> Option<String> {
    pdbs.iter().filter(|b| selects(b.spec.as_ref().and_then(|s| s.selector.as_ref()), labels)).find_map(|b| {
        let name = format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any());
        match b.status.as_ref() {
            Some(s) if !observed_current(b.metadata.generation, s.observed_generation) => Some(format!("PodDisruptionBudget {name} is not yet counted")),
            Some(s) if s.disruptions_allowed > 0 => None,
            Some(s) => Some(format!(
                "PodDisruptionBudget {name} allows no disruption ({} of {} pods healthy, {} required)",
                s.current_healthy, s.expected_pods, s.desired_healthy
            )),
            None => Some(format!("PodDisruptionBudget {name} is not yet counted")),
        }
    })
}

impl Executor {
    fn api<K: Resource<DynamicType = (), Scope = NamespaceResourceScope>>(&self, namespace: Option<&str>) -> Api<K> {
        match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    async fn list<K: Restartable>(&self, p: &RestartParams, lp: &ListParams) -> Result<Vec<K>, String> {
        let mut items = self.api::<K>(p.namespace.as_deref()).list(lp).await.map_err(|e| format!("listing {}s: {e}", K::KIND))?.items;
        items.retain(|k| self.inventory.is_meshed_namespace(&k.namespace().unwrap_or_default()));
        Ok(items)
    }

    /// Polls `check` until it says nothing holds the restart (`None`), reporting what holds it
    /// whenever that changes.
    async fn wait_while<F, Fut>(&self, id: &str, percent: u32, timeout: Duration, mut check: F) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<String>, String>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut said = None;
        loop {
            let Some(why) = check().await? else { return Ok(()) };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("timed out after {} s: {why}", timeout.as_secs()));
            }
            if said.as_ref() != Some(&why) {
                self.progress(id, percent, format!("waiting: {why}"));
                said = Some(why);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits while a PodDisruptionBudget of `w`'s pods allows no disruption.
    async fn wait_for_budgets(&self, id: &str, w: &Workload, percent: u32, timeout: Duration) -> Result<(), String> {
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), &w.namespace);
        self.wait_while(id, percent, timeout, || async {
            let pdbs = api.list(&ListParams::default()).await.map_err(|e| format!("listing PodDisruptionBudgets of {}: {e}", w.namespace))?.items;
            Ok(blocking(&pdbs, &w.pod_labels).map(|why| format!("{why}; {w} restarts when it allows one")))
        })
        .await
    }

    /// Waits until every workload of `ws` has rolled out.
    async fn wait_rolled_out(&self, id: &str, ws: &[Workload], percent: u32, timeout: Duration) -> Result<(), String> {
        let client = &self.client;
        self.wait_while(id, percent, timeout, || async move {
            let mut pending = Vec::new();
            for w in ws {
                if !w.observe(client).await.map_err(|e| format!("reading {w}: {e}"))?.rolled_out {
                    pending.push(w.to_string());
                }
            }
            Ok((!pending.is_empty()).then(|| format!("rolling out {}", pending.join(", "))))
        })
        .await
    }

    pub(super) async fn restart(&self, id: &str, p: RestartParams) -> Result<CommandResult, String> {
        let lp = match &p.selector {
            Some(s) => ListParams::default().labels(s),
            None => ListParams::default(),
        };
        let mut targets: Vec<Workload> = self.list::<Deployment>(&p, &lp).await?.iter().map(Workload::of).collect();
        let mut on_delete = BTreeSet::new();
        for s in self.list::<StatefulSet>(&p, &lp).await? {
            if updates_on_delete(&s) {
                on_delete.insert((s.namespace().unwrap_or_default(), s.name_any()));
            } else {
                targets.push(Workload::of(&s));
            }
        }
        targets.extend(self.list::<DaemonSet>(&p, &lp).await?.iter().map(Workload::of));
        let mut attention: Vec<NeedsAttention> = self
            .api::<Pod>(p.namespace.as_deref())
            .list(&lp)
            .await
            .map_err(|e| format!("listing pods: {e}"))?
            .items
            .iter()
            .filter(|pod| self.inventory.is_meshed_namespace(&pod.namespace().unwrap_or_default()))
            .filter_map(|pod| needs_attention(pod, &on_delete))
            .collect();
        attention.sort();

        let mut by_ns: BTreeMap<String, Vec<Workload>> = BTreeMap::new();
        for w in targets {
            by_ns.entry(w.namespace.clone()).or_default().push(w);
        }
        for ws in by_ns.values_mut() {
            ws.sort_by(|a, b| (&a.name, a.kind).cmp(&(&b.name, b.kind)));
        }
        let total_workloads: usize = by_ns.values().map(Vec::len).sum();
        let total = total_workloads.max(1);
        let rounds = by_ns.values().map(|ws| ws.len().div_ceil(p.batch_size)).max().unwrap_or(0);
        let timeout = Duration::from_secs(p.timeout_secs);
        let (mut restarted, mut skipped) = (Vec::new(), Vec::new());
        let mut finished = 0;
        for round in 0..rounds {
            let percent = (finished * 100 / total) as u32;
            // Do not make things worse while other selected workloads of a namespace are down.
            for (ns, ws) in &by_ns {
                let client = &self.client;
                let max = p.max_unavailable;
                let down = || async move {
                    let mut down = 0;
                    for w in ws {
                        if w.observe(client).await.map(|o| o.unavailable).unwrap_or(true) {
                            down += 1;
                        }
                    }
                    Ok((down > max).then(|| format!("{down} selected workloads in {ns} unavailable (max_unavailable {max})")))
                };
                self.wait_while(id, percent, timeout, down).await?;
            }
            // This round: the next `batch_size` workloads of every namespace, together.
            let batch: Vec<Workload> = by_ns.values().flat_map(|ws| ws.iter().skip(round * p.batch_size).take(p.batch_size).cloned()).collect();
            for w in &batch {
                let seen = w.observe(&self.client).await.map_err(|e| format!("reading {w}: {e}"))?;
                if seen.restarted_by.as_deref() != Some(id) {
                    self.wait_for_budgets(id, w, percent, timeout).await?;
                }
                let patched = w.stamp(&self.client, id).await.map_err(|e| match &e {
                    // RBAC confines restarts to namespaces opted in with the restart Role.
                    ::kube::Error::Api(s) if s.code == 403 => {
                        format!("may not restart {w}: namespace {} has no Role {RESTART_ROLE} binding the agent ({e})", w.namespace)
                    }
                    _ => format!("patching {w}: {e}"),
                })?;
                if patched {
                    restarted.push(w.to_string());
                } else {
                    skipped.push(w.to_string());
                }
            }
            // Each controller rolls its pods within the workload's own maxUnavailable.
            self.wait_rolled_out(id, &batch, percent, timeout).await?;
            finished += batch.len();
            let percent = (finished * 100 / total) as u32;
            self.progress(id, percent, format!("batch {} done: {finished}/{total_workloads} workloads", round + 1));
        }
        let mut message = format!("restarted {} workloads ({} already restarted by this command)", restarted.len(), skipped.len());
        if !attention.is_empty() {
            message.push_str(&format!("; {} pods need attention (not restarted)", attention.len()));
        }
        let output = json!({"restarted": restarted, "skipped": skipped, "batch_size": p.batch_size, "needs_attention": attention});
        Ok(done(CommandState::Succeeded, message, output))
    }
}

#[cfg(test)]
mod tests;
