//! `certs`: the organization's trust anchors and what expires next, or one cluster's bundle,
//! issuer and proxies' leaves.

use meshfleet_client::{ClusterCertificates, HeldCertificate};

use super::args::Certs;
use super::error::Error;
use super::output::{json, or_dash, out, table, Output};
use super::{clusters, exit, Ctx};

pub async fn run(ctx: &Ctx, args: Certs) -> Result<u8, Error> {
    match args.cluster {
        None => organization(ctx).await?,
        Some(key) => {
            let cluster = clusters::find(&ctx.client, &key).await?;
            let certs = ctx.client.cluster_certificates(&cluster.id).await?;
            ctx.output.show(&certs, |c| of_cluster(&cluster.name, c));
        }
    }
    Ok(exit::OK)
}

/// Two answers, so `--output json` prints them as `trust_anchors` and `next_expiry`.
async fn organization(ctx: &Ctx) -> Result<(), Error> {
    let trust = ctx.client.trust().await?;
    let next = ctx.client.next_expiry().await?;
    if ctx.output == Output::Json {
        json(&serde_json::json!({ "trust_anchors": trust.json, "next_expiry": next.json }));
        return Ok(());
    }
    let mut text = format!("Trust domain: {}\n\n", trust.trust_domain);
    if trust.anchors.is_empty() {
        text.push_str("No trust anchor yet.\n");
    } else {
        let rows: Vec<Vec<String>> =
            trust.anchors.iter().map(|a| vec![short(&a.fingerprint), a.state.clone(), a.source.clone(), a.not_after.clone(), a.subject.clone()]).collect();
        text.push_str(&table(&["FINGERPRINT", "STATE", "SOURCE", "NOT AFTER", "SUBJECT"], &rows));
    }
    text.push('\n');
    match &next.next {
        None => text.push_str("Next expiry: none known\n"),
        Some(n) => {
            let whose = match &n.cluster_id {
                Some(id) => {
                    let name = ctx.client.list_clusters().await?.into_iter().find(|c| &c.id == id).map_or_else(|| id.clone(), |c| c.name);
                    format!("{} of cluster {name}", n.kind)
                }
                None => format!("{} of the organization", n.kind),
            };
            text.push_str(&format!("Next expiry: {whose}, {}\n", n.not_after));
        }
    }
    out(&text);
    Ok(())
}

fn of_cluster(name: &str, c: &ClusterCertificates) -> String {
    let row = |role: &str, h: &HeldCertificate| {
        vec![role.to_owned(), short(&h.fingerprint), or_dash(h.anchor_state.as_deref()), h.not_after.clone(), h.subject.clone()]
    };
    let mut rows: Vec<Vec<String>> = c.bundle.iter().map(|h| row("trust-anchor", h)).collect();
    rows.extend(c.issuer.iter().map(|h| row("issuer", h)));
    let mut text = format!("Cluster {name}\n\n");
    if rows.is_empty() {
        text.push_str("Its agent has reported no certificate yet.\n");
    } else {
        text.push_str(&table(&["ROLE", "FINGERPRINT", "ANCHOR STATE", "NOT AFTER", "SUBJECT"], &rows));
    }
    if let Some(s) = &c.signed_by_service {
        text.push_str(&format!(
            "\nIssuer signed by the service: {} (anchor {}), expires {}, rotates from {}\n",
            short(&s.fingerprint),
            short(&s.anchor_fingerprint),
            s.not_after,
            s.rotation_due_at
        ));
    }
    let p = &c.proxies;
    text.push_str(&format!(
        "\nProxies: {} pods, {} reporting their leaf, earliest expiry {}, {} not on the active anchor\n",
        p.pods,
        p.reporting,
        or_dash(p.earliest_expiry.as_deref()),
        p.leaf_not_on_active_anchor
    ));
    text
}

/// The start of a SHA-256 fingerprint: enough to tell certificates apart in a table.
fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(16).collect()
}
