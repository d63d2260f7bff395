//! Typed commands against the frozen (pre-typed) encoding, in both directions.

use prost::Message;

use super::*;
use crate::frozen::v1 as old;
use crate::v1::{self, server_message};

fn one_of_each() -> Vec<Body> {
    vec![
        Body::Ping(Ping {}),
        Body::CollectDiagnostics(CollectDiagnostics {}),
        Body::RestartWorkloads(RestartWorkloads {
            namespace: Some("shop".into()),
            selector: Some("app=web".into()),
            batch_size: Some(2),
            ..Default::default()
        }),
        Body::SetControlPlaneVersion(SetControlPlaneVersion { version: "0.2.0".into(), timeout_secs: Some(60) }),
        Body::RotateIssuer(v1::RotateIssuer {}),
        Body::SetTrustBundle(v1::SetTrustBundle { bundle_pem: "-----BEGIN CERTIFICATE-----".into() }),
    ]
}

/// A command as an old server sends it, received by this agent.
fn from_old_server(kind: &str, params_json: &str) -> v1::Command {
    let command = old::Command { id: "c-1".into(), kind: kind.into(), params_json: params_json.into(), deadline_unix_ms: 1_700_000_000_000 };
    let bytes = old::ServerMessage { body: Some(old::server_message::Body::Command(command)) }.encode_to_vec();
    match v1::ServerMessage::decode(bytes.as_slice()).unwrap().body {
        Some(server_message::Body::Command(c)) => c,
        other => panic!("not a command: {other:?}"),
    }
}

#[test]
fn every_kind_has_its_name() {
    let names: Vec<&str> = one_of_each().iter().map(Body::kind).collect();
    assert_eq!(names, Body::KINDS);
}

#[test]
fn commands_from_an_older_server_read_as_typed() {
    let cases = [
        ("ping", "{}", Body::Ping(Ping {})),
        ("ping", "", Body::Ping(Ping {})),
        ("collect-diagnostics", "{}", Body::CollectDiagnostics(CollectDiagnostics {})),
        (
            "restart-workloads",
            r#"{"batch_size":2,"max_unavailable":0,"namespace":"shop","selector":"app=web","timeout_secs":30}"#,
            Body::RestartWorkloads(RestartWorkloads {
                namespace: Some("shop".into()),
                selector: Some("app=web".into()),
                batch_size: Some(2),
                max_unavailable: Some(0),
                timeout_secs: Some(30),
            }),
        ),
        ("restart-workloads", "{}", Body::RestartWorkloads(RestartWorkloads::default())),
        (
            "set-control-plane-version",
            r#"{"version":"0.2.0"}"#,
            Body::SetControlPlaneVersion(SetControlPlaneVersion { version: "0.2.0".into(), timeout_secs: None }),
        ),
    ];
    for (kind, params, want) in cases {
        let c = from_old_server(kind, params);
        assert_eq!((c.id.as_str(), c.deadline_unix_ms, &c.body), ("c-1", 1_700_000_000_000, &None), "{kind}");
        assert_eq!(c.typed(), Ok(want), "{kind} {params}");
    }
}

#[test]
fn typed_commands_keep_what_an_older_agent_reads() {
    for body in one_of_each() {
        let params_json = r#"{"any":"json the REST API took"}"#;
        let new = v1::Command { id: "c-2".into(), kind: body.kind().into(), params_json: params_json.into(), deadline_unix_ms: 42, body: Some(body.clone()) };
        let bytes = v1::ServerMessage { body: Some(server_message::Body::Command(new)) }.encode_to_vec();
        let Some(old::server_message::Body::Command(c)) = old::ServerMessage::decode(bytes.as_slice()).unwrap().body else { panic!("not a command") };
        assert_eq!(c, old::Command { id: "c-2".into(), kind: body.kind().into(), params_json: params_json.into(), deadline_unix_ms: 42 });
    }
}

#[test]
fn a_kind_this_agent_does_not_know_is_unsupported() {
    let unsupported = Err(Untyped::Unsupported { kind: "upgrade-mesh".into() });
    // From an older server: a kind it never sent (and never will).
    assert_eq!(from_old_server("upgrade-mesh", "{}").typed(), unsupported);
    assert_eq!(from_old_server("", "").typed(), Err(Untyped::Unsupported { kind: String::new() }));

    // From a newer server: a `body` variant this agent does not know (here field 99) decodes as
    // unset, and the kind it also sends names it.
    let mut bytes = v1::Command { id: "c-3".into(), kind: "upgrade-mesh".into(), params_json: "{}".into(), ..Default::default() }.encode_to_vec();
    bytes.extend_from_slice(&[0x9a, 0x06, 0x02, 0x08, 0x01]); // field 99, length-delimited: a message with field 1 = 1
    let c = v1::Command::decode(bytes.as_slice()).unwrap();
    assert_eq!((c.id.as_str(), &c.body), ("c-3", &None));
    assert_eq!(c.typed(), unsupported);
    assert_eq!(c.typed().unwrap_err().to_string(), r#"unsupported command kind "upgrade-mesh""#);
}

#[test]
fn parameters_an_older_server_sent_wrong_are_reported() {
    for (kind, params) in [
        ("restart-workloads", r#"{"force":true}"#),
        ("restart-workloads", r#"{"batch_size":-1}"#),
        ("restart-workloads", "not json"),
        ("set-control-plane-version", "{}"),
    ] {
        let err = from_old_server(kind, params).typed().unwrap_err();
        assert!(matches!(&err, Untyped::BadParams { kind: k, .. } if k == kind), "{kind} {params}: {err:?}");
        assert!(err.to_string().starts_with(&format!("bad parameters for {kind}: ")), "{err}");
    }
}
