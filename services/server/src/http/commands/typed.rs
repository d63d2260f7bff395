//! The one place the REST API's commands (a `kind` and `params`, JSON) and the protocol's typed
//! commands meet: a request is checked by turning it into a `Command.body`, and a stored command
//! becomes the message its agent gets.

use meshfleet_agent_protocol::v1::{self, command::Body};
use serde_json::{Map, Value};

use crate::domain::labels::Selector;
use crate::http::error::FieldError;
use crate::store::commands::Command;

/// The parameters a command kind takes.
pub fn allowed_params(kind: &str) -> &'static [&'static str] {
    match kind {
        "restart-workloads" => &["namespace", "selector", "batch_size", "max_unavailable", "timeout_secs"],
        "set-control-plane-version" => &["version", "timeout_secs"],
        "set-trust-bundle" => &["bundle_pem"],
        _ => &[],
    }
}

/// The typed command a request's `kind` and `params` ask for, or every problem with them, each
/// naming its field: a mistake is a 422 now rather than a failed command later.
pub fn from_rest(kind: &str, params: &Value) -> Result<Body, Vec<FieldError>> {
    let mut body = match kind {
        "ping" => Body::Ping(v1::Ping {}),
        "collect-diagnostics" => Body::CollectDiagnostics(v1::CollectDiagnostics {}),
        "restart-workloads" => Body::RestartWorkloads(v1::RestartWorkloads::default()),
        "set-control-plane-version" => Body::SetControlPlaneVersion(v1::SetControlPlaneVersion::default()),
        "rotate-issuer" => Body::RotateIssuer(v1::RotateIssuer {}),
        "set-trust-bundle" => Body::SetTrustBundle(v1::SetTrustBundle::default()),
        _ => {
            let mut errors = vec![FieldError::new("kind", format!("unknown command; expected one of {}", super::KINDS.join(", ")))];
            if !params.is_object() {
                errors.push(not_an_object());
            }
            return Err(errors);
        }
    };
    let Some(map) = params.as_object() else { return Err(vec![not_an_object()]) };
    let mut p = Params { map, errors: Vec::new() };
    for key in map.keys().filter(|k| !allowed_params(kind).contains(&k.as_str())) {
        p.errors.push(FieldError::new(format!("params.{key}"), format!("not a parameter of {kind}")));
    }
    match &mut body {
        Body::Ping(_) | Body::CollectDiagnostics(_) | Body::RotateIssuer(_) | Body::SetTrustBundle(_) => {}
        Body::RestartWorkloads(r) => {
            r.batch_size = p.whole("batch_size", 1, 1000);
            r.timeout_secs = p.whole("timeout_secs", 1, 86_400);
            r.max_unavailable = p.whole("max_unavailable", 0, 1000);
            r.namespace = p.string("namespace");
            r.selector = p.string("selector");
            if let Some(Err(e)) = r.selector.as_deref().map(str::parse::<Selector>) {
                p.errors.push(FieldError::new("params.selector", e.message));
            }
        }
        Body::SetControlPlaneVersion(v) => {
            v.timeout_secs = p.whole("timeout_secs", 1, 86_400);
            let version = map.get("version").and_then(Value::as_str).filter(|s| !s.trim().is_empty() && s.chars().count() <= 128);
            match version {
                Some(version) => v.version = version.to_owned(),
                None => p.errors.push(FieldError::new("params.version", "the version to run, e.g. 0.2.0, is required")),
            }
        }
    }
    if let Body::SetTrustBundle(b) = &mut body {
        match map.get("bundle_pem").and_then(Value::as_str).filter(|s| s.contains("-----BEGIN CERTIFICATE-----")) {
            Some(pem) => b.bundle_pem = pem.to_owned(),
            None => p.errors.push(FieldError::new("params.bundle_pem", "the anchors, PEM, are required")),
        }
    }
    if p.errors.is_empty() {
        Ok(body)
    } else {
        Err(p.errors)
    }
}

/// The message the agent gets for a stored command: typed, and with the kind and the JSON as the
/// REST API took them for agents that predate typed commands.
pub fn to_message(c: &Command) -> v1::Command {
    // Stored commands passed `from_rest` when created. One the current rules refuse (stored under
    // older ones) still goes out, untyped: the agent runs it by kind, or answers why it cannot.
    let body = from_rest(&c.kind, &c.params)
        .inspect_err(|errors| tracing::warn!(command_id = %c.id, kind = %c.kind, ?errors, "a stored command no longer converts; sent untyped"))
        .ok();
    v1::Command { id: c.id.to_string(), kind: c.kind.clone(), params_json: c.params.to_string(), deadline_unix_ms: c.deadline, body }
}

fn not_an_object() -> FieldError {
    FieldError::new("params", "must be a JSON object")
}

/// A request's parameters, read one by one; each problem is kept.
struct Params<'a> {
    map: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Params<'_> {
    fn whole(&mut self, key: &str, min: u32, max: u32) -> Option<u32> {
        let value = self.map.get(key)?;
        let n = value.as_u64().filter(|n| (u64::from(min)..=u64::from(max)).contains(n)).and_then(|n| u32::try_from(n).ok());
        if n.is_none() {
            self.errors.push(FieldError::new(format!("params.{key}"), format!("must be a whole number from {min} to {max}")));
        }
        n
    }

    fn string(&mut self, key: &str) -> Option<String> {
        let value = self.map.get(key)?;
        if !value.is_string() {
            self.errors.push(FieldError::new(format!("params.{key}"), "must be a string"));
        }
        value.as_str().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests;
