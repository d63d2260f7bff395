use meshfleet_agent_protocol::frozen::v1 as old;
use meshfleet_agent_protocol::v1::server_message;
use prost::Message;
use serde_json::json;

use super::*;
use crate::domain::{ClusterId, OrgId};

fn stored(kind: &str, params: Value) -> Command {
    Command::pending(OrgId::new(), ClusterId::new(), kind.into(), params, "user:test".into(), 1_700_000_000_000, 600_000)
}

fn fields(kind: &str, params: Value) -> Vec<String> {
    from_rest(kind, &params).unwrap_err().into_iter().map(|e| format!("{}: {}", e.field, e.message)).collect()
}

fn typed(kind: &str, params: Value) -> Body {
    from_rest(kind, &params).unwrap_or_else(|e| panic!("{kind}: {e:?}"))
}

#[test]
fn requests_become_typed_commands() {
    assert_eq!(typed("ping", json!({})), Body::Ping(v1::Ping {}));
    assert_eq!(typed("collect-diagnostics", json!({})), Body::CollectDiagnostics(v1::CollectDiagnostics {}));
    let restart = json!({ "namespace": "shop", "selector": "app in (web, api)", "batch_size": 2, "max_unavailable": 0, "timeout_secs": 86_400 });
    let want = v1::RestartWorkloads {
        namespace: Some("shop".into()),
        selector: Some("app in (web, api)".into()),
        batch_size: Some(2),
        max_unavailable: Some(0),
        timeout_secs: Some(86_400),
    };
    assert_eq!(typed("restart-workloads", restart), Body::RestartWorkloads(want));
    assert_eq!(typed("restart-workloads", json!({})), Body::RestartWorkloads(v1::RestartWorkloads::default()));
    let version = v1::SetControlPlaneVersion { version: "0.2.0".into(), timeout_secs: None };
    assert_eq!(typed("set-control-plane-version", json!({ "version": "0.2.0" })), Body::SetControlPlaneVersion(version));
    for kind in Body::KINDS {
        let params = match kind {
            "set-control-plane-version" => json!({ "version": "1.0.0" }),
            "set-trust-bundle" => json!({ "bundle_pem": "-----BEGIN CERTIFICATE-----\n" }),
            _ => json!({}),
        };
        assert_eq!(typed(kind, params).kind(), kind, "every kind of the protocol is one of the API");
    }
}

#[test]
fn problems_name_their_fields() {
    assert_eq!(
        fields("format-disk", json!([])),
        [
            "kind: unknown command; expected one of ping, collect-diagnostics, restart-workloads, set-control-plane-version, rotate-issuer",
            "params: must be a JSON object"
        ]
    );
    assert_eq!(fields("ping", json!("x")), ["params: must be a JSON object"]);
    assert_eq!(fields("ping", json!({ "namespace": "shop" })), ["params.namespace: not a parameter of ping"]);
    let restart = json!({ "force": true, "batch_size": 0, "timeout_secs": 86_401, "max_unavailable": -1, "namespace": 7, "selector": "app in (" });
    let got = fields("restart-workloads", restart);
    assert_eq!(
        &got[..5],
        [
            "params.force: not a parameter of restart-workloads",
            "params.batch_size: must be a whole number from 1 to 1000",
            "params.timeout_secs: must be a whole number from 1 to 86400",
            "params.max_unavailable: must be a whole number from 0 to 1000",
            "params.namespace: must be a string",
        ]
    );
    assert!(got[5].starts_with("params.selector: "), "{got:?}");
    assert_eq!(got.len(), 6, "{got:?}");
    for params in [json!({}), json!({ "version": " " }), json!({ "version": 2 }), json!({ "version": "v".repeat(129) })] {
        assert_eq!(fields("set-control-plane-version", params), ["params.version: the version to run, e.g. 0.2.0, is required"]);
    }
}

/// Compatibility in both directions, per kind: an agent that predates typed commands decodes the
/// message and finds the kind and JSON it reads (what servers sent before), and an agent that
/// reads them instead of `body` (one talking to an older server) gets the same command.
#[test]
fn messages_carry_the_typed_body_and_what_older_agents_read() {
    let cases = [
        ("ping", json!({})),
        ("collect-diagnostics", json!({})),
        ("restart-workloads", json!({ "namespace": "shop", "selector": "app=web", "batch_size": 2, "max_unavailable": 1, "timeout_secs": 30 })),
        ("restart-workloads", json!({})),
        ("set-control-plane-version", json!({ "version": "0.2.0", "timeout_secs": 60 })),
    ];
    for (kind, params) in cases {
        let c = stored(kind, params.clone());
        let message = to_message(&c);
        let body = message.body.clone().expect("typed");
        assert_eq!(body.kind(), kind);

        let bytes = v1::ServerMessage { body: Some(server_message::Body::Command(message.clone())) }.encode_to_vec();
        let Some(old::server_message::Body::Command(o)) = old::ServerMessage::decode(bytes.as_slice()).unwrap().body else { panic!("not a command") };
        assert_eq!((o.id, o.kind.as_str(), o.deadline_unix_ms), (c.id.to_string(), kind, c.deadline));
        assert_eq!(o.params_json, params.to_string(), "the JSON as the REST API took it, as before");

        let untyped = v1::Command { body: None, ..message };
        assert_eq!(untyped.typed(), Ok(body), "{kind}: the deprecated fields say the same as the body");
    }
}

#[test]
fn a_stored_command_that_no_longer_converts_goes_out_untyped() {
    let c = stored("restart-workloads", json!({ "force": true }));
    let message = to_message(&c);
    assert_eq!((message.body, message.kind.as_str(), message.params_json.as_str()), (None, "restart-workloads", r#"{"force":true}"#));
}
