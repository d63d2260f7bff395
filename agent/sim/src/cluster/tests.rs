use super::*;

#[test]
fn synthetic_cluster_is_realistic_and_deterministic() {
    let c = synthetic_cluster(7);
    let inv = c.inventory();
    assert_eq!(format!("{:?}", synthetic_cluster(7).inventory().pods.len()), format!("{:?}", inv.pods.len()));
    assert!((1..=3).contains(&inv.namespaces.len()));
    let workloads: std::collections::BTreeSet<_> = inv.pods.iter().map(|p| p.workload.clone()).collect();
    assert!((3..=10).contains(&workloads.len()), "{workloads:?}");
    assert!(workloads.iter().all(|w| w.starts_with("Deployment/")));
    assert!(inv.pods.len() >= 2 * workloads.len() && inv.pods.len() <= 5 * workloads.len());
    assert!(inv.pods.iter().all(|p| inv.namespaces.iter().any(|n| n.name == p.namespace)));
    let roles: Vec<_> = inv.certificates.iter().map(|c| c.role.as_str()).collect();
    assert_eq!(roles, ["trust-anchor", "issuer"]);
    assert_eq!(inv.control_plane.unwrap().components[0].name, "meshfleet-controller");
}

#[test]
fn fleet_has_some_outdated_proxies_and_soon_expiring_issuers() {
    let fleet: Vec<_> = (0..100).map(synthetic_cluster).collect();
    let pods: Vec<_> = fleet.iter().flat_map(|c| c.inventory().pods).collect();
    let outdated = pods.iter().filter(|p| p.proxy_version != CURRENT_PROXY_VERSION).count();
    assert!(outdated > 0 && outdated * 3 < pods.len(), "{outdated} of {}", pods.len());
    let soon = fleet.iter().filter(|c| c.inventory().certificates[1].not_after_unix_ms < now_ms() + 7 * DAY_MS).count();
    assert!(soon > 0 && soon < 50, "{soon}");
}

#[test]
fn metrics_cover_each_workload_and_drift() {
    let mut c = synthetic_cluster(3);
    let t0 = now_ms();
    let a = c.next_metrics(t0);
    let b = c.next_metrics(t0 + 10_000);
    assert_eq!(b.window_start_unix_ms, t0, "windows are contiguous");
    assert_eq!(a.workloads.len(), c.workloads.len());
    for w in &b.workloads {
        assert!(w.failures <= w.requests && w.latency_p50_ms <= w.latency_p95_ms && w.latency_p95_ms <= w.latency_p99_ms, "{w:?}");
    }
    assert_ne!(a.workloads[0].requests, b.workloads[0].requests);
    let total: u64 = b.workloads.iter().map(|w| w.requests).sum();
    let failed: u64 = b.workloads.iter().map(|w| w.failures).sum();
    assert!(failed * 10 < total, "mostly successful: {failed}/{total}");
}

#[test]
fn churn_produces_deltas_and_events_with_unique_ids() {
    let mut c = synthetic_cluster(11);
    let pods = c.inventory().pods.len();
    let mut ids = std::collections::HashSet::new();
    let mut deltas = 0;
    for i in 0..2000 {
        if let Some((d, e)) = c.next_delta(i) {
            deltas += 1;
            assert_eq!(d.upserted_pods.len(), 1);
            ids.extend(e.events.into_iter().map(|e| e.id));
        }
        if let Some(e) = c.next_warnings(i) {
            assert_eq!(e.events[0].r#type, "Warning");
            ids.extend(e.events.into_iter().map(|e| e.id));
        }
    }
    assert!(deltas > 20, "{deltas}");
    assert_eq!(ids.len() as u64, c.events, "event ids are unique");
    assert_eq!(c.inventory().pods.len(), pods, "replacement keeps the pod count");
}

#[test]
fn commands_ping_diagnose_and_refuse_what_they_do_not_simulate() {
    let c = synthetic_cluster(1);
    let ping = c.run_command("c", &Body::Ping(v1::Ping {}));
    assert_eq!((ping.state(), ping.command_id.as_str()), (CommandState::Succeeded, "c"));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&ping.output_json).unwrap()["pong"], true);
    let diag: serde_json::Value = serde_json::from_str(&c.run_command("c", &Body::CollectDiagnostics(v1::CollectDiagnostics {})).output_json).unwrap();
    assert_eq!(diag["pods"], c.pods.len());
    // Unlinked to a gateway, it cannot report what a restart changes.
    let restart = c.run_command("c", &Body::RestartWorkloads(v1::RestartWorkloads::default()));
    assert_eq!((restart.state(), restart.command_id.as_str()), (CommandState::Failed, "c"));
    assert!(restart.message.starts_with("unsupported command kind \"restart-workloads\""), "{}", restart.message);
    assert_eq!(restart.output_json, r#"{"unsupported":"restart-workloads"}"#);
}

#[test]
fn an_upgrade_moves_the_control_plane_then_restarted_workloads_get_its_proxy() {
    let mut c = synthetic_cluster(11);
    let (delta, output) = c.set_control_plane_version("0.2.0");
    let facts = delta.facts.unwrap();
    assert_eq!(facts.control_plane.as_ref().unwrap().version, "0.2.0");
    assert_eq!(output["previous_image"], "meshfleet/controller:0.1.0");
    let ns = c.namespaces[0].clone();
    let before: Vec<v1::Pod> = c.pods.iter().filter(|p| p.namespace == ns).cloned().collect();
    let only_ns = v1::RestartWorkloads { namespace: Some(ns.clone()), ..Default::default() };
    let (delta, output) = c.restart_workloads("cmd-1", &only_ns, now_ms());
    assert_eq!(delta.removed_pods.len(), before.len());
    assert_eq!(delta.upserted_pods.len(), before.len());
    assert!(delta.upserted_pods.iter().all(|p| p.proxy_version == "0.2.0" && p.namespace == ns));
    assert!(c.pods.iter().filter(|p| p.namespace != ns).all(|p| p.proxy_version != "0.2.0"), "other namespaces untouched");
    assert!(!output["restarted"].as_array().unwrap().is_empty());
    // Redelivered: nothing is restarted twice for the same command.
    let (again, output) = c.restart_workloads("cmd-1", &only_ns, now_ms());
    assert!(again.removed_pods.is_empty() && output["restarted"].as_array().unwrap().is_empty(), "{output}");
    let (next, _) = c.restart_workloads("cmd-2", &only_ns, now_ms());
    assert_eq!(next.removed_pods.len(), before.len(), "a new command restarts again");
}

#[test]
fn a_bad_upgrade_fails_requests_of_the_upgraded_workloads_until_rolled_back() {
    let failure_share = |c: &mut SyntheticCluster, t: i64| {
        let m = c.next_metrics(t);
        let (req, fail) = m.workloads.iter().fold((0, 0), |(r, f), w| (r + w.requests, f + w.failures));
        fail as f64 / req.max(1) as f64
    };
    let t0 = now_ms();
    let mut good = synthetic_cluster(12);
    let mut bad = synthetic_cluster(12).with_bad_upgrades(true);
    for c in [&mut good, &mut bad] {
        c.set_control_plane_version("0.2.0");
        c.restart_workloads("up", &v1::RestartWorkloads::default(), t0);
    }
    assert!(failure_share(&mut good, t0 + 10_000) < 0.2);
    assert!(failure_share(&mut bad, t0 + 10_000) > 0.25);
    // Rolled back: the control plane and the workloads at the first version again.
    bad.set_control_plane_version("0.1.0");
    bad.restart_workloads("back", &v1::RestartWorkloads::default(), t0);
    assert!(failure_share(&mut bad, t0 + 20_000) < 0.2);
}

#[test]
fn every_pod_trusts_the_clusters_anchor_and_presents_a_leaf_chaining_to_it() {
    let mut c = synthetic_cluster(5);
    let anchor = c.inventory().certificates.iter().find(|c| c.role == "trust-anchor").unwrap().sha256_fingerprint.clone();
    let t0 = now_ms();
    for i in 0..500 {
        let _ = c.next_delta(t0 + i);
    }
    let now = now_ms();
    for p in c.inventory().pods {
        assert_eq!((p.bundle_fingerprints.as_slice(), p.leaf_anchor_fingerprint.as_str()), (std::slice::from_ref(&anchor), anchor.as_str()), "{p:?}");
        assert!(p.leaf_not_after_unix_ms > now && p.leaf_not_after_unix_ms <= now + DAY_MS + 1000, "{p:?}");
    }
}
