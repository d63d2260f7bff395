//! The install manifest's RBAC is the agent's whole authority: its commands work where the
//! cluster's owners opted in, and its credentials change nothing else (403 from the API server).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use meshfleet_server::install;
use serde_json::{json, Value};

use super::{event, finish, send_command, setup, start_connected_agent, within};

fn unmeshed_deployment(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": format!("example/{name}:1")}]}}}})
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(ref e)) if e.code == 403)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_changes_only_opted_in_namespaces_and_the_controller() {
    let s = setup().await;
    for obj in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
        unmeshed_deployment("kube-system", "coredns"),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"app": "kube-proxy"}}, "template": {"metadata": {"labels": {"app": "kube-proxy"}}, "spec": {"containers": [{"name": "kube-proxy", "image": "registry.k8s.io/kube-proxy:v1.33.1"}]}}}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bootstrap-token-abc", "namespace": "kube-system"}, "stringData": {"token-secret": "s"}}),
        // Newly labelled for injection, with a Deployment that has no sidecar yet.
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "payments", "labels": {"meshfleet.io/inject": "enabled"}}}),
        unmeshed_deployment("payments", "ledger"),
    ] {
        s.kube.apply(obj).unwrap();
    }
    let a = start_connected_agent(&s).await;

    // With the agent's own credentials: no workload image changes outside what it is granted,
    // its own Deployment included, and no Secret but its own and the issuer's.
    let client = s.kube.client_for("agent-sa-token").await.unwrap();
    let image = |c: &str, i: &str| json!({"spec": {"template": {"spec": {"containers": [{"name": c, "image": i}]}}}});
    let pp = PatchParams::default();
    let deployments = |ns: &str| Api::<Deployment>::namespaced(client.clone(), ns);
    assert!(forbidden(deployments("kube-system").patch("coredns", &pp, &Patch::Strategic(image("app", "evil/coredns:1"))).await));
    assert!(forbidden(
        Api::<DaemonSet>::namespaced(client.clone(), "kube-system").patch("kube-proxy", &pp, &Patch::Strategic(image("kube-proxy", "evil/proxy:1"))).await
    ));
    assert!(forbidden(deployments("meshfleet-system").patch("meshfleet-agent", &pp, &Patch::Strategic(image("agent", "evil/agent:1"))).await));
    assert!(forbidden(deployments("payments").patch("ledger", &pp, &Patch::Strategic(image("app", "evil/ledger:1"))).await), "not opted in yet");
    assert!(forbidden(Api::<Secret>::namespaced(client.clone(), "kube-system").get("bootstrap-token-abc").await));
    assert_eq!(
        s.kube.get("apps/v1", "Deployment", "kube-system", "coredns").unwrap()["spec"]["template"]["spec"]["containers"][0]["image"],
        "example/coredns:1"
    );
    let agent = "system:serviceaccount:meshfleet-system:meshfleet-agent";
    let want = [
        "patch apps/deployments ns=\"kube-system\" name=\"coredns\"",
        "patch apps/daemonsets ns=\"kube-system\" name=\"kube-proxy\"",
        "patch apps/deployments ns=\"meshfleet-system\" name=\"meshfleet-agent\"",
        "patch apps/deployments ns=\"payments\" name=\"ledger\"",
        "get /secrets ns=\"kube-system\" name=\"bootstrap-token-abc\"",
    ];
    assert_eq!(s.kube.denials(), want.map(|w| format!("{agent} {w}")), "exactly these were refused, nothing the agent did itself");

    // A restart in a namespace not opted in says what is missing and changes nothing.
    let path = send_command(&s, "restart-workloads", json!({"namespace": "payments", "timeout_secs": 20})).await;
    let (cmd, _) = finish(&s, &path, Duration::from_secs(10)).await;
    assert_eq!(cmd["state"], "failed", "{cmd}");
    assert!(cmd["message"].as_str().unwrap().contains("namespace payments has no Role meshfleet-agent-restart"), "{cmd}");
    assert_eq!(s.kube.get("apps/v1", "Deployment", "payments", "ledger").unwrap()["spec"]["template"]["metadata"].get("annotations"), None);

    // Opting it in (the README's snippet: the manifest's restart Role for one namespace): the
    // restart that gives its Deployments their sidecars works, although no pod is meshed yet.
    let (role, binding) = install::restart_rbac("payments");
    s.kube.apply_typed(&role).unwrap();
    s.kube.apply_typed(&binding).unwrap();
    let path = send_command(&s, "restart-workloads", json!({"namespace": "payments", "timeout_secs": 20})).await;
    let (cmd, _) = finish(&s, &path, Duration::from_secs(20)).await;
    assert_eq!((&cmd["state"], &cmd["output"]["restarted"]), (&json!("succeeded"), &json!(["payments/deployment/ledger"])), "{cmd}");

    // Its Warning events are reported, as a meshed namespace's.
    s.kube.apply(event("payments", "w1", "Warning", "FailedScheduling", "ledger-1")).unwrap();
    let events = format!("/api/v1/clusters/{}/events", s.cluster);
    let shown = within(Duration::from_secs(5), || async { s.app.get(&events, &s.owner.access).await.1.to_string().contains("FailedScheduling") }).await;
    assert!(shown.is_some(), "{}", s.app.get(&events, &s.owner.access).await.1);
    assert_eq!(s.kube.denials().len(), want.len() + 1, "the failed restart's patch was the only refusal of the agent's own: {:?}", s.kube.denials());
    a.shutdown().await;
}
