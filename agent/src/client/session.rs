//! The reconnect loop and one session on the `Connect` stream: Hello, a fresh snapshot, the
//! unacknowledged reports in seq order, then live reports and heartbeats, until the stream
//! breaks, the certificate is due for renewal, or the client shuts down.

use std::sync::Arc;
use std::time::Duration;

use meshfleet_agent_protocol::v1::{agent_message::Body, server_message, AgentMessage, Heartbeat, Hello, ServerMessage, Snapshot};
use meshfleet_agent_protocol::MAX_MESSAGE_BYTES;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::commands::{self, now_ms};
use super::{Shared, SIZE_SLACK};
use crate::backoff::Backoff;
use crate::{identity, tls, Error};

/// Messages queued for the stream; more waits in the report buffer, which is bounded.
const OUTBOUND_QUEUE: usize = 64;
/// How long shutdown waits for the gateway to acknowledge what was sent.
const DRAIN: Duration = Duration::from_secs(2);

enum End {
    Shutdown,
    RenewDue,
    /// `healthy`: the gateway acknowledged something, so the backoff starts over.
    Lost {
        healthy: bool,
        error: Error,
    },
}

pub(super) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let cfg = &shared.config;
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let mut renew_backoff = Backoff::new(Duration::from_secs(1).min(cfg.backoff_max), cfg.backoff_max);
    let mut renew_not_before: Option<Instant> = None;
    loop {
        if stopping(&shutdown) {
            break;
        }
        let id = shared.current_identity();
        let retry_ok = renew_not_before.is_none_or(|t| Instant::now() >= t);
        if now_ms() >= id.renew_at_unix_ms() && retry_ok {
            let renewed = tokio::select! {
                _ = shutdown.changed() => break,
                r = identity::renew(&cfg.gateway_url, &cfg.ca_pem, &id) => r,
            };
            match renewed {
                Ok(new) => {
                    install(&shared, new);
                    renew_backoff.reset();
                    renew_not_before = None;
                }
                Err(e) => {
                    tracing::warn!(cluster_id = %id.cluster_id, error = %e, "certificate renewal failed");
                    shared.record_error(format!("renewal failed: {e}"));
                    // Keep streaming with the old certificate meanwhile; try again later.
                    renew_not_before = Some(Instant::now() + renew_backoff.next_delay().max(Duration::from_millis(100)));
                }
            }
        }
        let id = shared.current_identity();
        let renew_at = renew_deadline(id.renew_at_unix_ms(), renew_not_before);
        match session(&shared, &mut shutdown, renew_at).await {
            End::Shutdown => break,
            End::RenewDue => continue,
            End::Lost { healthy, error } => {
                shared.state().stats.connected = false;
                // Refused for reconnecting or sending too fast: keep backing off, or the agent
                // would come straight back and be refused again.
                if healthy && !matches!(error.code(), Some(tonic::Code::ResourceExhausted)) {
                    backoff.reset();
                }
                if matches!(error.code(), Some(tonic::Code::PermissionDenied | tonic::Code::Unauthenticated)) {
                    // The service refuses this certificate (cluster deleted or revoked); retrying
                    // fast cannot help, but an operator may restore it, so keep trying slowly.
                    backoff.at_max();
                }
                tracing::warn!(cluster_id = %id.cluster_id, error = %error, "gateway session ended");
                shared.record_error(&error);
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    shared.state().stats.connected = false;
}

fn install(shared: &Shared, new: crate::Identity) {
    tracing::info!(cluster_id = %new.cluster_id, not_after_unix_ms = new.not_after_unix_ms, "certificate renewed");
    if let Some(path) = &shared.config.identity_path {
        if let Err(e) = new.save(path) {
            // The new certificate still works in memory; the next start falls back to the old
            // file, which stays valid until its own expiry.
            tracing::error!(error = %e, "could not save the renewed identity");
            shared.record_error(format!("could not save the renewed identity: {e}"));
        }
    }
    shared.set_identity(new);
    shared.state().stats.renewals += 1;
}

fn renew_deadline(renew_at_ms: i64, not_before: Option<Instant>) -> Instant {
    let wait = Duration::from_millis((renew_at_ms - now_ms()).max(0) as u64);
    let at = Instant::now() + wait.min(Duration::from_secs(86400 * 365));
    not_before.map_or(at, |t| t.max(at))
}

fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    // A dropped handle (sender gone) means stop as well.
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// The session's connection, shared for unary calls while it lasts.
struct Live<'a>(&'a Shared);

impl<'a> Live<'a> {
    fn open(shared: &'a Shared, client: &tls::GatewayClient) -> Live<'a> {
        shared.set_live(Some(crate::GatewayConnection::of(client.clone())));
        Live(shared)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.set_live(None);
    }
}

async fn session(shared: &Arc<Shared>, shutdown: &mut watch::Receiver<bool>, renew_at: Instant) -> End {
    let cfg = &shared.config;
    let id = shared.current_identity();
    let lost = |error: Error| End::Lost { healthy: false, error };
    let mut client = tokio::select! {
        _ = shutdown.changed() => return End::Shutdown,
        c = tls::connect(&cfg.gateway_url, &cfg.ca_pem, Some(&id)) => match c { Ok(c) => c, Err(e) => return lost(e) },
    };
    let (tx, rx) = mpsc::channel::<AgentMessage>(OUTBOUND_QUEUE);
    let hello = Hello {
        agent_version: cfg.agent_version.clone(),
        kubernetes_version: shared.agent.kubernetes_version(),
        last_command_id: shared.state().commands.last_seen.clone(),
        sent_at_unix_ms: unix_ms(),
    };
    // Queued before the call: a gateway may wait for Hello before it answers with headers.
    let _ = tx.try_send(AgentMessage { seq: 0, body: Some(Body::Hello(hello)) });
    let mut inbound = tokio::select! {
        _ = shutdown.changed() => return End::Shutdown,
        r = client.connect(ReceiverStream::new(rx)) => match r { Ok(r) => r.into_inner(), Err(s) => return lost(s.into()) },
    };
    let snapshot = Body::Snapshot(Snapshot { inventory: Some(shared.agent.snapshot()) });
    let snapshot = if snapshot.encoded_len() > MAX_MESSAGE_BYTES - SIZE_SLACK {
        shared.record_error(format!("inventory of {} bytes is over the message cap; not sent", snapshot.encoded_len()));
        None
    } else {
        Some(snapshot)
    };
    {
        let mut st = shared.state();
        let dropped = st.buffer.start_session(snapshot);
        st.stats.dropped += dropped;
        st.stats.sessions += 1;
        st.stats.connected = true;
    }
    tracing::debug!(cluster_id = %id.cluster_id, "gateway session open");
    let _live = Live::open(shared, &client);

    let mut sent_upto = 0u64;
    let mut healthy = false;
    let hb_every = cfg.heartbeat_interval.max(Duration::from_millis(10));
    let mut heartbeat = tokio::time::interval_at(Instant::now() + hb_every, hb_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let renew = tokio::time::sleep_until(renew_at);
    tokio::pin!(renew);
    loop {
        let pending = shared.state().buffer.has_after(sent_upto);
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            msg = inbound.message() => match msg {
                Ok(Some(m)) => healthy |= handle(shared, m, sent_upto),
                Ok(None) => return End::Lost { healthy, error: tonic::Status::unavailable("the gateway closed the stream").into() },
                Err(status) => return End::Lost { healthy, error: status.into() },
            },
            permit = tx.reserve(), if pending => {
                let Ok(permit) = permit else {
                    return End::Lost { healthy, error: tonic::Status::unavailable("the request stream closed").into() };
                };
                let mut st = shared.state();
                if let Some(m) = st.buffer.next_after(sent_upto) {
                    sent_upto = m.seq;
                    st.stats.last_sent_seq = st.stats.last_sent_seq.max(m.seq);
                    permit.send(m);
                }
            }
            _ = shared.wake.notified(), if !pending => {}
            _ = heartbeat.tick() => {
                let _ = tx.try_send(AgentMessage { seq: 0, body: Some(Body::Heartbeat(Heartbeat { sent_at_unix_ms: unix_ms() })) });
            }
            _ = &mut renew => return End::RenewDue,
        }
    }
    drop(tx);
    // Half-close and read on, so acknowledgements of what was already sent still arrive.
    let _ = tokio::time::timeout(DRAIN, async {
        while let Ok(Some(m)) = inbound.message().await {
            handle(shared, m, sent_upto);
        }
    })
    .await;
    End::Shutdown
}

/// Applies one server message; true if it was an acknowledgement (the session is healthy).
fn handle(shared: &Arc<Shared>, msg: ServerMessage, sent_upto: u64) -> bool {
    match msg.body {
        Some(server_message::Body::Ack(ack)) => {
            // Never drop what was not sent in this session, whatever the server claims.
            let seq = ack.seq.min(sent_upto);
            if ack.seq > sent_upto {
                tracing::warn!(ack = ack.seq, sent = sent_upto, "gateway acknowledged reports it was never sent");
            }
            let mut st = shared.state();
            st.buffer.ack(seq);
            st.stats.last_acked_seq = st.stats.last_acked_seq.max(seq);
            st.stats.last_error = None;
            true
        }
        Some(server_message::Body::Refused(r)) => {
            // The Ack that follows settles the report; resending it would be refused again.
            tracing::warn!(seq = r.seq, reason = %r.reason, items = r.refused_items, message = %r.message, "the service refused a report");
            let mut st = shared.state();
            st.stats.refused += 1;
            st.stats.refused_items += u64::from(r.refused_items);
            st.stats.last_refusal = Some(format!("{}: {}", r.reason, r.message));
            false
        }
        Some(server_message::Body::Command(cmd)) => {
            commands::receive(shared, cmd);
            false
        }
        None => false,
    }
}

/// This machine's clock, which the service compares with its own (clock skew).
fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
