//! `clusters list|get|create|delete`, and how a command finds a cluster by id or by name.

use std::collections::BTreeMap;

use meshfleet_client::{Client, Cluster};

use super::args::Clusters;
use super::error::Error;
use super::output::{or_dash, out, table, Output};
use super::{exit, Ctx};

pub async fn run(ctx: &Ctx, command: Clusters) -> Result<u8, Error> {
    match command {
        Clusters::List => {
            let clusters = ctx.client.clusters().await?;
            ctx.output.show(&clusters, |cs| list(cs));
        }
        Clusters::Get { cluster } => {
            let id = find(&ctx.client, &cluster).await?.id;
            let cluster = ctx.client.cluster(&id).await?;
            ctx.output.show(&cluster, |c| {
                let rows = [
                    ("Name", c.name.clone()),
                    ("ID", c.id.clone()),
                    ("Status", c.status.clone()),
                    ("Labels", labels(&c.labels)),
                    ("Agent", or_dash(c.agent_version.as_deref())),
                    ("Kubernetes", or_dash(c.kubernetes_version.as_deref())),
                    ("Last seen", or_dash(c.last_seen_at.as_deref())),
                ];
                rows.iter().map(|(k, v)| format!("{:<12}{v}\n", format!("{k}:"))).collect()
            });
        }
        Clusters::Create { name, labels } => {
            let labels: BTreeMap<String, String> = labels.into_iter().collect();
            let created = ctx.client.create_cluster_reply(&name, &labels).await?;
            ctx.output.show(&created, |c| {
                let name = &c.cluster.name;
                format!("Created cluster {name} ({}).\nConnect it: meshfleet connect {name} --apply\n", c.cluster.id)
            });
        }
        Clusters::Delete { cluster } => {
            let cluster = find(&ctx.client, &cluster).await?;
            ctx.client.delete_cluster(&cluster.id).await?;
            if ctx.output == Output::Table {
                out(&format!("Deleted cluster {} ({}).\n", cluster.name, cluster.id));
            }
        }
    }
    Ok(exit::OK)
}

fn list(clusters: &[Cluster]) -> String {
    let rows: Vec<Vec<String>> = clusters
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.id.clone(),
                c.status.clone(),
                or_dash(c.agent_version.as_deref()),
                or_dash(c.kubernetes_version.as_deref()),
                labels(&c.labels),
            ]
        })
        .collect();
    table(&["NAME", "ID", "STATUS", "AGENT", "KUBERNETES", "LABELS"], &rows)
}

fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// The cluster `key` names: by id when it is one of ours, else by name.
pub async fn find(client: &Client, key: &str) -> Result<Cluster, Error> {
    // A name may look like an id too (both are DNS labels): an id that is none of ours is
    // then tried as a name.
    if is_uuid(key) {
        match client.cluster(key).await {
            Ok(c) => return Ok(c.value),
            Err(meshfleet_client::Error::Api { status: 404 | 400, .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    client.list_clusters().await?.into_iter().find(|c| c.name == key).ok_or_else(|| Error::NoSuchCluster(key.to_owned()))
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}
