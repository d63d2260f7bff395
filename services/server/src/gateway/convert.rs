//! Agent reports, checked and turned into what the store keeps. Anything out of bounds is
//! refused with a reason (counted in metrics), never stored and never a panic.

use meshfleet_agent_protocol::v1;

use crate::domain::{ClusterId, CommandId, OrgId};
use crate::store::inventory::{CertificateInfo, Component, ControlPlane, Facts, Pod, UninjectedPods};
use crate::store::rollups::{Event, Window};

use super::ingest::Report;

/// A report the gateway refuses, with a short stable label for metrics.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn label(&self) -> &'static str {
        self.field
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid { field, reason: reason.into() }
}

const MAX_NAME: usize = 253;
const MAX_TEXT: usize = 4096;
const MAX_PODS: usize = 100_000;
const MAX_ITEMS: usize = 10_000;

fn name(field: &'static str, s: &str) -> Result<String, Invalid> {
    if s.len() > MAX_NAME || s.chars().any(char::is_control) {
        return Err(bad(field, "too long or has control characters"));
    }
    Ok(s.to_owned())
}

fn text(field: &'static str, s: &str) -> Result<String, Invalid> {
    if s.len() > MAX_TEXT {
        return Err(bad(field, "too long"));
    }
    Ok(s.to_owned())
}

fn count<T>(field: &'static str, items: &[T], max: usize) -> Result<(), Invalid> {
    if items.len() > max {
        return Err(bad(field, format!("more than {max} items")));
    }
    Ok(())
}

fn pod(p: &v1::Pod) -> Result<Pod, Invalid> {
    if p.namespace.is_empty() || p.name.is_empty() {
        return Err(bad("pod", "namespace and name are required"));
    }
    Ok(Pod {
        namespace: name("pod.namespace", &p.namespace)?,
        name: name("pod.name", &p.name)?,
        workload: name("pod.workload", &p.workload)?,
        proxy_version: name("pod.proxy_version", &p.proxy_version)?,
        ready: p.ready,
        restarts: p.restarts,
        phase: name("pod.phase", &p.phase)?,
        bundle_fingerprints: {
            count("pod.bundle_fingerprints", &p.bundle_fingerprints, 16)?;
            p.bundle_fingerprints.iter().map(|f| fingerprint("pod.bundle_fingerprints", f)).collect::<Result<_, _>>()?
        },
        leaf_anchor_fingerprint: Some(&p.leaf_anchor_fingerprint)
            .filter(|f| !f.is_empty())
            .map(|f| fingerprint("pod.leaf_anchor_fingerprint", f))
            .transpose()?,
        leaf_not_after: (p.leaf_not_after_unix_ms > 0).then_some(p.leaf_not_after_unix_ms),
    })
}

/// A SHA-256 fingerprint as the mesh writes them: 64 lowercase hex digits.
fn fingerprint(field: &'static str, f: &str) -> Result<String, Invalid> {
    if f.len() != 64 || !f.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(bad(field, "not a SHA-256 fingerprint (64 lowercase hex digits)"));
    }
    Ok(f.to_owned())
}

fn facts(inv: &v1::Inventory) -> Result<Facts, Invalid> {
    count("namespaces", &inv.namespaces, MAX_ITEMS)?;
    count("certificates", &inv.certificates, 100)?;
    let cp = inv.control_plane.clone().unwrap_or_default();
    count("control_plane.components", &cp.components, 100)?;
    Ok(Facts {
        kubernetes_version: name("kubernetes_version", &inv.kubernetes_version)?,
        node_count: inv.node_count,
        control_plane: ControlPlane {
            version: name("control_plane.version", &cp.version)?,
            replicas: cp.replicas,
            ready_replicas: cp.ready_replicas,
            components: cp
                .components
                .iter()
                .map(|c| Ok(Component { name: name("component.name", &c.name)?, version: name("component.version", &c.version)?, ready: c.ready }))
                .collect::<Result<_, Invalid>>()?,
        },
        namespaces: inv.namespaces.iter().map(|n| name("namespace", &n.name)).collect::<Result<_, _>>()?,
        certificates: inv
            .certificates
            .iter()
            .map(|c| {
                count("certificate.sans", &c.sans, 100)?;
                Ok(CertificateInfo {
                    role: name("certificate.role", &c.role)?,
                    subject: text("certificate.subject", &c.subject)?,
                    sans: c.sans.iter().map(|s| text("certificate.san", s)).collect::<Result<_, _>>()?,
                    not_before: c.not_before_unix_ms,
                    not_after: c.not_after_unix_ms,
                    sha256_fingerprint: name("certificate.sha256_fingerprint", &c.sha256_fingerprint)?,
                })
            })
            .collect::<Result<_, Invalid>>()?,
        pods_without_proxy: inv
            .namespaces
            .iter()
            .filter(|n| n.pods_without_proxy > 0)
            .map(|n| {
                count("namespace.pods_without_proxy_examples", &n.pods_without_proxy_examples, 10)?;
                Ok(UninjectedPods {
                    namespace: name("namespace", &n.name)?,
                    pods: n.pods_without_proxy,
                    examples: n.pods_without_proxy_examples.iter().map(|p| name("namespace.pods_without_proxy_examples", p)).collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<_, Invalid>>()?,
    })
}

fn pods(list: &[v1::Pod]) -> Result<Vec<Pod>, Invalid> {
    count("pods", list, MAX_PODS)?;
    list.iter().map(pod).collect()
}

fn latency(field: &'static str, v: f64) -> Result<f64, Invalid> {
    if v.is_finite() && (0.0..=3_600_000.0).contains(&v) {
        Ok(v)
    } else {
        Err(bad(field, "must be a finite number of milliseconds"))
    }
}

/// The report in an agent message, or None for messages that are not reports.
pub fn report(org: OrgId, cluster: ClusterId, body: &v1::agent_message::Body) -> Result<Option<Report>, Invalid> {
    use v1::agent_message::Body;
    Ok(Some(match body {
        Body::Hello(_) | Body::Heartbeat(_) => return Ok(None),
        Body::Snapshot(s) => {
            let inv = s.inventory.as_ref().ok_or_else(|| bad("snapshot.inventory", "missing"))?;
            Report::Snapshot { facts: facts(inv)?, pods: pods(&inv.pods)? }
        }
        Body::Delta(d) => {
            count("delta.removed_pods", &d.removed_pods, MAX_PODS)?;
            Report::Delta {
                upserted: pods(&d.upserted_pods)?,
                removed: d
                    .removed_pods
                    .iter()
                    .map(|p| Ok((name("pod.namespace", &p.namespace)?, name("pod.name", &p.name)?)))
                    .collect::<Result<_, Invalid>>()?,
                facts: d.facts.as_ref().map(facts).transpose()?,
            }
        }
        Body::Metrics(m) => {
            count("metrics.workloads", &m.workloads, MAX_ITEMS)?;
            if m.window_end_unix_ms <= m.window_start_unix_ms || m.window_start_unix_ms <= 0 {
                return Err(bad("metrics.window", "the window must end after it starts"));
            }
            let windows = m
                .workloads
                .iter()
                .map(|w| {
                    if w.failures > w.requests {
                        return Err(bad("metrics.failures", "more failures than requests"));
                    }
                    Ok(Window {
                        org_id: org,
                        cluster_id: cluster,
                        namespace: name("metrics.namespace", &w.namespace)?,
                        workload: name("metrics.workload", &w.workload)?,
                        start: m.window_start_unix_ms,
                        end: m.window_end_unix_ms,
                        requests: i64::try_from(w.requests).map_err(|_| bad("metrics.requests", "too large"))?,
                        failures: i64::try_from(w.failures).map_err(|_| bad("metrics.failures", "too large"))?,
                        p50_ms: latency("metrics.latency_p50_ms", w.latency_p50_ms)?,
                        p95_ms: latency("metrics.latency_p95_ms", w.latency_p95_ms)?,
                        p99_ms: latency("metrics.latency_p99_ms", w.latency_p99_ms)?,
                    })
                })
                .collect::<Result<_, Invalid>>()?;
            Report::Metrics(windows)
        }
        Body::Events(e) => {
            count("events", &e.events, MAX_ITEMS)?;
            Report::Events(
                e.events
                    .iter()
                    .map(|e| {
                        if e.id.is_empty() {
                            return Err(bad("event.id", "required"));
                        }
                        Ok(Event {
                            id: name("event.id", &e.id)?,
                            at: e.at_unix_ms,
                            kind: name("event.type", &e.r#type)?,
                            namespace: name("event.namespace", &e.namespace)?,
                            object: name("event.object", &e.object)?,
                            reason: name("event.reason", &e.reason)?,
                            message: text("event.message", &e.message)?,
                        })
                    })
                    .collect::<Result<_, Invalid>>()?,
            )
        }
        Body::CommandResult(r) => {
            let id: CommandId = r.command_id.parse().map_err(|_| bad("command_result.command_id", "not a command id"))?;
            let state = match v1::CommandState::try_from(r.state) {
                Ok(v1::CommandState::Running) => "running",
                Ok(v1::CommandState::Succeeded) => "succeeded",
                Ok(v1::CommandState::Failed) => "failed",
                _ => return Err(bad("command_result.state", "must be running, succeeded or failed")),
            };
            let output = if r.output_json.is_empty() {
                None
            } else if r.output_json.len() > 1024 * 1024 {
                return Err(bad("command_result.output_json", "larger than 1 MiB"));
            } else {
                Some(serde_json::from_str(&r.output_json).map_err(|_| bad("command_result.output_json", "not JSON"))?)
            };
            Report::CommandResult { id, state, progress: i64::from(r.progress_percent.min(100)), message: text("command_result.message", &r.message)?, output }
        }
    }))
}
