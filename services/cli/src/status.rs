//! `status`: the fleet's (or one cluster's) health findings, and an exit code a CI job can act
//! on: the worst finding's severity (critical 2, warning 1, information or none 0).

use meshfleet_client::{ClusterHealth, Finding};

use super::args::Status;
use super::error::Error;
use super::output::table;
use super::{clusters, exit, Ctx};

pub async fn run(ctx: &Ctx, args: Status) -> Result<u8, Error> {
    match args.cluster {
        None => {
            let fleet = ctx.client.fleet_health_reply().await?;
            ctx.output.show(&fleet, |f| {
                let s = &f.summary;
                let mut text =
                    format!("Fleet: {} critical, {} degraded, {} expiring, {} pending, {} healthy\n", s.critical, s.degraded, s.expiring, s.pending, s.healthy);
                if !f.clusters.is_empty() {
                    text.push('\n');
                    text.push_str(&findings(&f.clusters));
                }
                text
            });
            Ok(worst(fleet.clusters.iter().flat_map(|c| &c.findings)))
        }
        Some(key) => {
            let cluster = clusters::find(&ctx.client, &key).await?;
            let health = ctx.client.cluster_health_reply(&cluster.id).await?;
            ctx.output.show(&health, |h| {
                let mut text = format!("Cluster {} ({}): {}\n", h.name, h.status, h.health);
                if !h.findings.is_empty() {
                    text.push('\n');
                    text.push_str(&findings(std::slice::from_ref(h)));
                }
                text
            });
            Ok(worst(&health.findings))
        }
    }
}

fn findings(clusters: &[ClusterHealth]) -> String {
    let rows: Vec<Vec<String>> = clusters
        .iter()
        .flat_map(|c| {
            c.findings.iter().map(|f| vec![c.name.clone(), c.health.clone(), f.severity.clone(), f.check.clone(), f.object.clone(), f.message.clone()])
        })
        .collect();
    table(&["CLUSTER", "HEALTH", "SEVERITY", "CHECK", "OBJECT", "MESSAGE"], &rows)
}

/// The exit code the worst of `findings` gives.
fn worst<'a>(findings: impl IntoIterator<Item = &'a Finding>) -> u8 {
    findings
        .into_iter()
        .map(|f| match f.severity.as_str() {
            "critical" => exit::CRITICAL,
            "warning" => exit::WARNING,
            _ => exit::OK,
        })
        .max()
        .unwrap_or(exit::OK)
}

#[cfg(test)]
mod tests {
    use meshfleet_client::Finding;

    use super::*;

    fn finding(severity: &str) -> Finding {
        Finding { check: "agent".into(), severity: severity.into(), health: None, message: String::new(), since: String::new(), object: "Agent".into() }
    }

    #[test]
    fn the_worst_finding_gives_the_exit_code() {
        assert_eq!(worst(&[]), exit::OK);
        assert_eq!(worst(&[finding("info")]), exit::OK);
        assert_eq!(worst(&[finding("info"), finding("warning")]), exit::WARNING);
        assert_eq!(worst(&[finding("warning"), finding("critical"), finding("info")]), exit::CRITICAL);
    }
}
