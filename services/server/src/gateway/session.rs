//! One agent's `Connect` stream: Hello first, then reports (stored through the ingest path
//! and acknowledged once durable), heartbeats, and commands sent down as they appear. The
//! stream ends when the agent leaves, a newer stream supersedes it, the certificate is
//! revoked or the cluster deleted, or the agent misbehaves.

use std::collections::HashSet;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::future::Either;
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use meshfleet_agent_protocol::v1::{agent_message::Body, server_message, Ack, AgentMessage, Refused, ServerMessage};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::ingest::{Job, Outcome, Refusal, Report};
use super::pki::PeerAgent;
use super::registry::Cut;
use super::{convert, dispatch, Error, Gateway, Result};
use crate::domain::CommandId;
use crate::store;

pub type ServerStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// `opening`: held until the stream is open (`Gateway::opening`).
pub fn start(gw: Gateway, peer: PeerAgent, serial: String, inbound: Streaming<AgentMessage>, opening: OwnedSemaphorePermit) -> ServerStream {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(
        async move {
            if let Err(e) = run(&gw, peer, &serial, inbound, &tx, opening).await {
                let status = Status::from(e);
                tracing::info!(cluster = %peer.cluster_id, code = ?status.code(), message = status.message(), "agent stream ended");
                let _ = tx.send(Err(status)).await;
            }
        }
        // One span per stream, so everything it logs (reports refused, the end) names the cluster.
        .instrument(tracing::info_span!("agent_stream", org_id = %peer.org_id, cluster_id = %peer.cluster_id)),
    );
    Box::pin(ReceiverStream::new(rx))
}

type Out = mpsc::Sender<Result<ServerMessage, Status>>;

async fn send(tx: &Out, body: server_message::Body) -> Result<()> {
    tx.send(Ok(ServerMessage { body: Some(body) })).await.map_err(|_| Error::AgentGone)
}

async fn run(gw: &Gateway, peer: PeerAgent, serial: &str, mut inbound: Streaming<AgentMessage>, tx: &Out, opening: OwnedSemaphorePermit) -> Result<()> {
    let state = &gw.state;
    let reject = |reason: &str| state.metrics.gateway_rejected.with_label_values(&[reason]).inc();
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(AgentMessage { body: Some(Body::Hello(hello)), .. }))) => hello,
        Ok(Err(status)) => return Err(Error::Transport(status)),
        _ => {
            reject("no_hello");
            return Err(Error::NoHello);
        }
    };
    let mut session = state.agents.open(peer.org_id, peer.cluster_id, serial);
    let _guard = Guard { gw: gw.clone(), peer, epoch: session.epoch, id: session.id.clone() };
    let now = state.clock.now_ms();
    {
        let mut conn = state.db.pool.acquire().await?;
        let agent_version: String = hello.agent_version.chars().take(64).collect();
        let k8s_version: String = hello.kubernetes_version.chars().take(64).collect();
        let skew = clock_skew(hello.sent_at_unix_ms, now);
        store::agents::mark_connected(&mut conn, peer.cluster_id, &session.id, &agent_version, &k8s_version, skew, now).await?;
    }
    dispatch::session_opened(state, peer.cluster_id, &session.id);
    dispatch::agent_status_changed(state, peer.org_id);
    state.metrics.gateway_connected.inc();
    tracing::info!(org = %peer.org_id, cluster = %peer.cluster_id, agent_version = %hello.agent_version, "agent connected");

    let cfg = &state.config;
    let mut sent: HashSet<CommandId> = HashSet::new();
    send_open_commands(gw, peer, tx, &mut sent).await?;
    drop(opening);
    let mut acks = FuturesOrdered::new();
    let mut last_seq = 0u64;

    loop {
        tokio::select! {
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(()),
                    Err(status) => {
                        reject(if status.code() == tonic::Code::OutOfRange || status.code() == tonic::Code::ResourceExhausted { "oversized" } else { "transport" });
                        return Err(Error::Transport(status));
                    }
                };
                // The cluster's bucket, not the stream's: reconnecting does not refill it.
                if !state.limits.message(peer.cluster_id) {
                    reject("rate_limited");
                    state.ingest.refused(peer.org_id, peer.cluster_id, "rate_limited", 1, state.clock.now_ms());
                    return Err(Error::RateLimited { per_sec: cfg.gateway_rate_per_sec });
                }
                let size = message.body.as_ref().map_or(0, Body::encoded_len);
                let Some(body) = message.body else {
                    reject("empty");
                    return Err(Error::EmptyMessage);
                };
                let report = convert::report(peer.org_id, peer.cluster_id, &body).inspect_err(|e| reject(e.label()))?;
                // Heard from: written in bulk, at most once a second per cluster.
                let now = state.clock.now_ms();
                let skew = match &body { Body::Heartbeat(h) => clock_skew(h.sent_at_unix_ms, now), _ => None };
                state.ingest.seen(peer.cluster_id, now, skew);
                let Some(mut report) = report else { continue };
                if message.seq <= last_seq {
                    reject("seq");
                    return Err(Error::SeqNotIncreasing { seq: message.seq, last: last_seq });
                }
                last_seq = message.seq;
                let (seq, received) = (message.seq, Instant::now());
                let refused = match over_quota(gw, peer, size, &mut report) {
                    Quota::Whole(refusal) => {
                        // Settled in order with the reports before it: refused, then acked.
                        acks.push_back(Either::Left(std::future::ready((seq, received, Outcome::Stored(Some(refusal))))));
                        continue;
                    }
                    Quota::Partly(refusal) => Some(refusal),
                    Quota::Within => None,
                };
                let (done, stored) = oneshot::channel();
                let job = Job { org: peer.org_id, cluster: peer.cluster_id, report, done, from: tracing::Span::current() };
                state.ingest.submit(job).await.map_err(|_| Error::ShuttingDown)?;
                acks.push_back(Either::Right(async move {
                    let outcome = match stored.await.unwrap_or(Outcome::Failed) {
                        Outcome::Stored(None) => Outcome::Stored(refused),
                        other => other,
                    };
                    (seq, received, outcome)
                }));
            }
            Some((seq, received, outcome)) = acks.next(), if !acks.is_empty() => {
                let refusal = match outcome {
                    // A later ack would claim this report stored; end the stream instead, so
                    // the agent resends everything unacknowledged.
                    Outcome::Failed => return Err(Error::NotStored),
                    Outcome::Stored(refusal) => refusal,
                };
                if let Some(r) = refusal {
                    // Told before the Ack that settles it, so the agent counts it, not resends it.
                    // (Counted already, where it was decided.)
                    let items = u32::try_from(r.items).unwrap_or(u32::MAX);
                    send(tx, server_message::Body::Refused(Refused { seq, reason: r.reason.to_owned(), message: r.message, refused_items: items })).await?;
                }
                state.metrics.gateway_ack_seconds.observe(received.elapsed().as_secs_f64());
                send(tx, server_message::Body::Ack(Ack { seq })).await?;
            }
            _ = session.wake.notified() => send_open_commands(gw, peer, tx, &mut sent).await?,
            changed = session.cut.changed() => {
                let cut = if changed.is_ok() { *session.cut.borrow() } else { Cut::Revoked };
                match cut {
                    Cut::Superseded => return Err(Error::Superseded),
                    Cut::Revoked => return Err(Error::Revoked),
                    Cut::CertificateInvalid => return Err(Error::CertificateInvalid),
                    Cut::ShuttingDown => return Err(Error::ShuttingDown),
                    Cut::Open => {}
                }
            }
            _ = tx.closed() => return Ok(()),
        }
    }
}

enum Quota {
    Within,
    /// Some items were taken out of the report; the rest is to be stored.
    Partly(Refusal),
    /// Nothing of the report is to be stored.
    Whole(Refusal),
}

/// Checks the report against the quotas kept in this process (size per kind, events per
/// minute), taking out what exceeds them. The series quota is the ingest writer's.
fn over_quota(gw: &Gateway, peer: PeerAgent, size: usize, report: &mut Report) -> Quota {
    let quota = check_quota(gw, peer, size, report);
    if let Quota::Whole(r) | Quota::Partly(r) = &quota {
        let state = &gw.state;
        state.ingest.refused(peer.org_id, peer.cluster_id, r.reason, r.items.max(1), state.clock.now_ms());
    }
    quota
}

fn check_quota(gw: &Gateway, peer: PeerAgent, size: usize, report: &mut Report) -> Quota {
    let state = &gw.state;
    let max = state.config.quota_bytes.of(report.kind());
    if size > max {
        let message = format!("a {} report of {size} bytes is over the limit of {max} bytes for its kind", report.kind());
        return Quota::Whole(Refusal { reason: "bytes", message, items: 0 });
    }
    if let Report::Events(events) = report {
        let n = events.len();
        let taken = state.limits.events(peer.cluster_id, n);
        if taken < n {
            events.truncate(taken);
            let per_min = state.config.quota_events_per_min;
            let refusal = Refusal {
                reason: "events_per_minute",
                message: format!("{} events over the cluster's quota of {per_min} events per minute", n - taken),
                items: n - taken,
            };
            return if taken == 0 { Quota::Whole(refusal) } else { Quota::Partly(refusal) };
        }
    }
    Quota::Within
}

/// Sends the cluster's unfinished commands this stream has not sent yet (at least once:
/// a reconnected stream sends them again; the agent executes each id once).
async fn send_open_commands(gw: &Gateway, peer: PeerAgent, tx: &Out, sent: &mut HashSet<CommandId>) -> Result<()> {
    let state = &gw.state;
    let now = state.clock.now_ms();
    let mut conn = state.db.pool.acquire().await?;
    for c in store::commands::open_for_cluster(&mut conn, peer.cluster_id, now).await? {
        if !sent.insert(c.id) {
            continue;
        }
        send(tx, server_message::Body::Command(crate::http::commands::typed::to_message(&c))).await?;
        store::commands::mark_delivered(&mut conn, c.id, now).await?;
    }
    Ok(())
}

/// Ends the session's bookkeeping however the stream ends.
struct Guard {
    gw: Gateway,
    peer: PeerAgent,
    epoch: u64,
    id: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let state = self.gw.state.clone();
        state.metrics.gateway_connected.dec();
        state.agents.close(self.peer.cluster_id, self.epoch);
        // A replica that stops leaves its agents shown connected: they reconnect to another
        // replica within moments, and one that does not turns stale, then disconnected, by
        // liveness, as after a crash. Marked disconnected here, each raised an "agent" alert
        // on every rolling restart and failed the health gate of a rollout it was in.
        if state.agents.is_stopping() {
            return;
        }
        let (org, cluster, id) = (self.peer.org_id, self.peer.cluster_id, std::mem::take(&mut self.id));
        tokio::spawn(async move {
            let now = state.clock.now_ms();
            if let Ok(mut conn) = state.db.pool.acquire().await {
                let _ = store::agents::mark_disconnected(&mut conn, cluster, &id, now).await;
            }
            dispatch::agent_status_changed(&state, org);
        });
    }
}

/// The agent's clock minus ours (ms), from the time it says it sent a message; `None` when it
/// does not say (older agents). The message's transit time counts as skew: milliseconds,
/// against thresholds of a minute.
fn clock_skew(sent_at_unix_ms: i64, now: i64) -> Option<i64> {
    (sent_at_unix_ms > 0).then(|| sent_at_unix_ms.saturating_sub(now))
}
