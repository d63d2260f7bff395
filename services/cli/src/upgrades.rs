//! `upgrades plan|start|pause|resume|abort|status`: rollouts of a mesh version, on the API's
//! rollout routes.

use meshfleet_client::{Plan, Rollout, RolloutAction, RolloutRequest, Skipped};

use super::args::{Target, Upgrades};
use super::error::Error;
use super::output::table;
use super::{exit, Ctx};

pub async fn run(ctx: &Ctx, command: Upgrades) -> Result<u8, Error> {
    let request = |t: Target| RolloutRequest { target_version: t.version, selector: t.selector };
    match command {
        Upgrades::Plan(target) => {
            let plan = ctx.client.plan_rollout(&request(target)).await?;
            ctx.output.show(&plan, plan_text);
        }
        Upgrades::Start(target) => {
            let rollout = ctx.client.start_rollout(&request(target)).await?;
            ctx.output.show(&rollout, |r| {
                format!(
                    "Started rollout {} to {}: {} clusters in {} waves.\nFollow it: meshfleet upgrades status {}\n",
                    r.id,
                    r.target_version,
                    r.clusters.len(),
                    r.waves,
                    r.id
                )
            });
        }
        Upgrades::Pause { rollout } => act(ctx, &rollout, RolloutAction::Pause).await?,
        Upgrades::Resume { rollout } => act(ctx, &rollout, RolloutAction::Resume).await?,
        Upgrades::Abort { rollout } => act(ctx, &rollout, RolloutAction::Abort).await?,
        Upgrades::Status { rollout: None } => {
            let rollouts = ctx.client.rollouts().await?;
            ctx.output.show(&rollouts, |rs| {
                let rows: Vec<Vec<String>> = rs
                    .iter()
                    .map(|r| {
                        let done = r.clusters.iter().filter(|c| c.phase == "done").count();
                        let wave = format!("{}/{}", (r.wave + 1).min(r.waves), r.waves);
                        vec![r.id.clone(), r.target_version.clone(), r.state.clone(), wave, format!("{done}/{}", r.clusters.len()), r.created_at.clone()]
                    })
                    .collect();
                table(&["ID", "VERSION", "STATE", "WAVE", "DONE", "CREATED"], &rows)
            });
        }
        Upgrades::Status { rollout: Some(id) } => {
            let rollout = ctx.client.rollout(&id).await?;
            ctx.output.show(&rollout, rollout_text);
        }
    }
    Ok(exit::OK)
}

async fn act(ctx: &Ctx, id: &str, action: RolloutAction) -> Result<(), Error> {
    let rollout = ctx.client.act_on_rollout(id, action).await?;
    ctx.output.show(&rollout, |r| format!("Rollout {} is {}.\n", r.id, r.state));
    Ok(())
}

fn plan_text(p: &Plan) -> String {
    let rows: Vec<Vec<String>> = p
        .waves
        .iter()
        .enumerate()
        .flat_map(|(i, w)| w.clusters.iter().map(move |c| vec![(i + 1).to_string(), w.kind.clone(), c.name.clone(), c.from.clone(), c.hops.join(" -> ")]))
        .collect();
    let clusters = rows.len();
    let mut text = format!("Rollout to {}: {clusters} clusters in {} waves\n", p.target_version, p.waves.len());
    if !rows.is_empty() {
        text.push('\n');
        text.push_str(&table(&["WAVE", "KIND", "CLUSTER", "FROM", "HOPS"], &rows));
    }
    text.push_str(&skipped(&p.skipped));
    text
}

fn rollout_text(r: &Rollout) -> String {
    let mut text = format!("Rollout {} to {}: {}", r.id, r.target_version, r.state);
    if let Some(reason) = &r.reason {
        text.push_str(&format!(" ({reason})"));
    }
    text.push_str(&format!(", wave {} of {}\n", (r.wave + 1).min(r.waves), r.waves));
    if !r.clusters.is_empty() {
        let rows: Vec<Vec<String>> = r
            .clusters
            .iter()
            .map(|c| vec![(c.wave + 1).to_string(), c.name.clone(), c.phase.clone(), c.from.clone(), c.hops.join(" -> "), c.message.clone()])
            .collect();
        text.push('\n');
        text.push_str(&table(&["WAVE", "CLUSTER", "PHASE", "FROM", "HOPS", "MESSAGE"], &rows));
    }
    text.push_str(&skipped(&r.skipped));
    text
}

fn skipped(skipped: &[Skipped]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = skipped.iter().map(|s| vec![s.name.clone(), s.reason.clone()]).collect();
    format!("\nLeft alone:\n{}", table(&["CLUSTER", "REASON"], &rows))
}
