//! Recording what became of each delivery attempt, in groups: the attempts finished while the
//! previous group was being written go in one transaction, so a thousand deliveries a second
//! cost tens of commits, not a thousand (each commit a WAL flush on PostgreSQL). A group that
//! cannot be written loses nothing: its notifications' claims expire and they go again, with
//! the same `webhook-id`.

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot};

use crate::db::Db;
use crate::domain::{ChannelId, OrgId};
use crate::store::alert_channels::{self, Outcome};
use crate::store::notifications::{self, Attempt, Claimed, Next};

/// Attempts recorded per transaction at most.
const GROUP: usize = 128;

/// One attempt's record: the notification, the attempt, what comes next, and why the
/// channel is to be disabled, if it is.
pub struct Settled {
    pub notification: Claimed,
    pub attempt: Attempt,
    pub next: Next,
    pub disable: Option<&'static str>,
}

struct Entry {
    settled: Settled,
    done: oneshot::Sender<Result<(), String>>,
}

/// The writer of settled attempts; one per replica.
#[derive(Clone)]
pub struct Settler(mpsc::Sender<Entry>);

impl Settler {
    pub fn start(db: Db) -> Settler {
        let (tx, rx) = mpsc::channel(GROUP * 4);
        tokio::spawn(write_groups(db, rx));
        Settler(tx)
    }

    /// Records `settled` with whatever else is waiting; returns once it is committed.
    pub async fn record(&self, settled: Settled) -> anyhow::Result<()> {
        let (done, recorded) = oneshot::channel();
        self.0.send(Entry { settled, done }).await.map_err(|_| anyhow::anyhow!("the server is shutting down"))?;
        recorded.await.map_err(|_| anyhow::anyhow!("the server is shutting down"))?.map_err(|e| anyhow::anyhow!("recording the attempt failed: {e}"))
    }
}

async fn write_groups(db: Db, mut rx: mpsc::Receiver<Entry>) {
    let mut group = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut group, GROUP).await > 0 {
        let outcomes: Vec<Result<(), String>> = match write(&db, &group).await {
            Ok(()) => group.iter().map(|_| Ok(())).collect(),
            // One attempt that cannot be stored (its channel deleted a moment ago) must not
            // fail its neighbours: record them one by one.
            Err(e) if group.len() > 1 => {
                tracing::warn!(error = %e, attempts = group.len(), "recording delivery attempts failed; retrying one at a time");
                let mut outcomes = Vec::with_capacity(group.len());
                for entry in &group {
                    outcomes.push(write(&db, std::slice::from_ref(entry)).await.map_err(|e| e.to_string()));
                }
                outcomes
            }
            Err(e) => vec![Err(e.to_string())],
        };
        for (entry, outcome) in group.drain(..).zip(outcomes) {
            let _ = entry.done.send(outcome);
        }
    }
}

/// One transaction for the group. Channels are written once each, in id order, so two
/// replicas' groups never wait on each other's locks in a cycle.
async fn write(db: &Db, group: &[Entry]) -> Result<(), sqlx::Error> {
    let mut channels: BTreeMap<(ChannelId, OrgId), (Outcome, Option<&'static str>)> = BTreeMap::new();
    for Entry { settled: s, .. } in group {
        let ok = s.next == Next::Delivered;
        let at = s.attempt.at;
        channels
            .entry((s.notification.channel_id, s.notification.org_id))
            .and_modify(|(outcome, disable)| {
                *outcome = outcome.then(ok, at);
                *disable = disable.or(s.disable);
            })
            .or_insert((Outcome::of(ok, at), s.disable));
    }
    let rows: Vec<_> = group.iter().map(|e| (&e.settled.notification, &e.settled.attempt, e.settled.next)).collect();
    let mut tx = db.begin().await?;
    notifications::settle(&mut tx, &rows).await?;
    for ((channel, org), (outcome, disable)) in channels {
        alert_channels::record_outcome(&mut tx, org, channel, outcome).await?;
        if let Some(reason) = disable {
            alert_channels::disable(&mut tx, org, channel, reason).await?;
        }
    }
    tx.commit().await
}
