//! `alerts list` and `alerts silence`.

use meshfleet_client::{AlertFilter, NewSilence};

use super::args::{AlertState, Alerts};
use super::error::Error;
use super::output::{or_dash, table};
use super::{exit, Ctx};

pub async fn run(ctx: &Ctx, command: Alerts) -> Result<u8, Error> {
    match command {
        Alerts::List { state, limit } => {
            let filter = match state {
                AlertState::Firing => AlertFilter::Firing,
                AlertState::Pending => AlertFilter::Pending,
                AlertState::Open => AlertFilter::Open,
                AlertState::Resolved => AlertFilter::Resolved,
                AlertState::All => AlertFilter::All,
            };
            let page = ctx.client.alerts(filter, limit).await?;
            ctx.output.show(&page, |p| {
                let rows: Vec<Vec<String>> = p
                    .items
                    .iter()
                    .map(|a| {
                        let cluster = a.labels.get("cluster").unwrap_or(&a.cluster_id).clone();
                        let silenced = if a.silenced_by.is_empty() { "-".to_owned() } else { "yes".to_owned() };
                        let since = or_dash(a.fired_at.as_deref().or(Some(a.starts_at.as_str())));
                        vec![a.severity.clone(), a.state.clone(), a.rule.clone(), cluster, a.object.clone(), since, silenced, a.summary.clone()]
                    })
                    .collect();
                table(&["SEVERITY", "STATE", "RULE", "CLUSTER", "OBJECT", "SINCE", "SILENCED", "SUMMARY"], &rows)
            });
        }
        Alerts::Silence { matchers, duration, comment } => {
            let ends_at = chrono::Utc::now() + duration;
            let silence = NewSilence { matchers, starts_at: None, ends_at: ends_at.to_rfc3339(), comment };
            let created = ctx.client.create_silence(&silence).await?;
            ctx.output.show(&created, |s| format!("Created silence {} ({}), until {}.\n", s.id, s.state, s.ends_at));
        }
    }
    Ok(exit::OK)
}
