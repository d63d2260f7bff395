//! Typed commands (`Command.body`) and their fallback: the deprecated `kind` and `params_json`,
//! which servers that predate `body` send alone, and agents that predate it read.

use std::fmt;

use serde::Deserialize;

use crate::v1::command::Body;
use crate::v1::{CollectDiagnostics, Command, Ping, RestartWorkloads, SetControlPlaneVersion};

impl Body {
    /// Every kind, by name; `kind()` of each variant.
    pub const KINDS: [&'static str; 6] = ["ping", "collect-diagnostics", "restart-workloads", "set-control-plane-version", "rotate-issuer", "set-trust-bundle"];

    /// The kind's name: the REST API's `kind`, and `Command.kind` for agents that predate `body`.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Ping(_) => "ping",
            Body::CollectDiagnostics(_) => "collect-diagnostics",
            Body::RestartWorkloads(_) => "restart-workloads",
            Body::SetControlPlaneVersion(_) => "set-control-plane-version",
            Body::RotateIssuer(_) => "rotate-issuer",
            Body::SetTrustBundle(_) => "set-trust-bundle",
        }
    }
}

/// Why a command has no typed body this agent can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untyped {
    /// A kind this agent does not know: newer than the agent (its `body` field decodes as unset),
    /// or no command at all.
    Unsupported { kind: String },
    /// A known kind whose `params_json` (from a server that predates `body`) does not parse.
    BadParams { kind: String, reason: String },
}

impl Untyped {
    pub fn kind(&self) -> &str {
        match self {
            Untyped::Unsupported { kind } | Untyped::BadParams { kind, .. } => kind,
        }
    }
}

impl fmt::Display for Untyped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untyped::Unsupported { kind } => write!(f, "unsupported command kind {kind:?}"),
            Untyped::BadParams { kind, reason } => write!(f, "bad parameters for {kind}: {reason}"),
        }
    }
}

impl std::error::Error for Untyped {}

impl Command {
    /// What to do: `body`, or when it is unset, what `kind` and `params_json` say.
    pub fn typed(&self) -> Result<Body, Untyped> {
        match &self.body {
            Some(body) => Ok(body.clone()),
            None => from_legacy(&self.kind, &self.params_json),
        }
    }
}

/// The parameters of restart-workloads as JSON, as servers that predate `body` send them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartJson {
    namespace: Option<String>,
    selector: Option<String>,
    batch_size: Option<u32>,
    max_unavailable: Option<u32>,
    timeout_secs: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionJson {
    version: String,
    timeout_secs: Option<u32>,
}

/// A command as servers that predate `body` send it. Only the kinds of that time: any kind added
/// since is sent with `body`, so here it is one this agent does not know.
fn from_legacy(kind: &str, params_json: &str) -> Result<Body, Untyped> {
    let params = if params_json.trim().is_empty() { "{}" } else { params_json };
    let bad = |e: serde_json::Error| Untyped::BadParams { kind: kind.to_owned(), reason: e.to_string() };
    // Parameters of ping and collect-diagnostics were never read; they stay unread.
    match kind {
        "ping" => Ok(Body::Ping(Ping {})),
        "collect-diagnostics" => Ok(Body::CollectDiagnostics(CollectDiagnostics {})),
        "restart-workloads" => {
            let p: RestartJson = serde_json::from_str(params).map_err(bad)?;
            Ok(Body::RestartWorkloads(RestartWorkloads {
                namespace: p.namespace,
                selector: p.selector,
                batch_size: p.batch_size,
                max_unavailable: p.max_unavailable,
                timeout_secs: p.timeout_secs,
            }))
        }
        "set-control-plane-version" => {
            let p: VersionJson = serde_json::from_str(params).map_err(bad)?;
            Ok(Body::SetControlPlaneVersion(SetControlPlaneVersion { version: p.version, timeout_secs: p.timeout_secs }))
        }
        other => Err(Untyped::Unsupported { kind: other.to_owned() }),
    }
}

#[cfg(test)]
mod tests;
