//! The delivery job of the notification outbox: on every worker replica, claim due
//! notifications, send each in its own task (at most `PER_CHANNEL` at a time per channel, so a
//! slow or dead endpoint never holds up another's), log the attempt and schedule the next.
//! Claims expire, so a replica that dies mid-send leaves nothing lost: the message goes again
//! with the same `webhook-id`. Never logs a URL, a secret or a body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use tracing::Instrument;

use super::settling::{Settled, Settler};
use super::{channels, signing, ssrf};
use crate::app::AppState;
use crate::db::Db;
use crate::domain::{ChannelId, OrgId};
use crate::jobs::{Job, Scope};
use crate::store::alert_channels::{self, Channel};
use crate::store::notifications::{self, Attempt, Claimed, Next};

const EVERY: Duration = Duration::from_millis(250);
/// Notifications of one channel in flight at once on one replica.
const PER_CHANNEL: usize = 4;
const BATCH: u32 = 100;
/// Claims one run makes at most. A full claim is followed by another at once, so a backlog goes
/// out as fast as the channels' slots allow, not at `BATCH` per run (400 a second at one run
/// every 250 ms); the bound ends a run that fast receivers keep supplying with free slots.
const MAX_CLAIMS_PER_RUN: usize = 20;
/// How much of a receiver's answer the delivery log keeps.
const EXCERPT_BYTES: usize = 1024;
/// How long a claim outlives the delivery timeout.
const CLAIM_MARGIN_MS: i64 = 5_000;
/// A channel failing without a success for this long is disabled.
const FAILING_FOR: i64 = 5 * 24 * 3600 * 1000;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

pub fn job() -> Job {
    Job::new("alert-delivery", EVERY, Scope::EveryReplica, run)
}

/// Sends in flight on this replica, per channel, the HTTP clients that make them and the
/// writer that records their attempts.
#[derive(Clone)]
pub struct InFlight {
    sends: Arc<Mutex<HashMap<ChannelId, usize>>>,
    clients: Clients,
    settler: Settler,
}

impl InFlight {
    pub fn start(db: Db) -> Self {
        let clients = Clients(moka::sync::Cache::builder().max_capacity(10_000).time_to_idle(CLIENT_IDLE).build());
        InFlight { sends: Default::default(), clients, settler: Settler::start(db) }
    }
}

/// A client per (host, address the SSRF guard approved), so sends to one receiver reuse their
/// connections (no TCP or TLS handshake per message) while a host that resolves elsewhere gets
/// a client pinned to its new address: the check after resolution still decides every send.
#[derive(Clone)]
struct Clients(moka::sync::Cache<(String, std::net::SocketAddr), reqwest::Client>);

/// How long an unused client (and its idle connections) is kept.
const CLIENT_IDLE: Duration = Duration::from_secs(300);

impl Clients {
    fn get(&self, host: &str, addr: std::net::SocketAddr, timeout: Duration) -> anyhow::Result<reqwest::Client> {
        let key = (host.to_owned(), addr);
        if let Some(client) = self.0.get(&key) {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .resolve(host, addr)
            .build()
            .context("building the webhook client")?;
        self.0.insert(key, client.clone());
        Ok(client)
    }
}

impl InFlight {
    fn busy(&self) -> Vec<ChannelId> {
        self.sends.lock().expect("in-flight lock poisoned").iter().filter(|(_, n)| **n >= PER_CHANNEL).map(|(c, _)| *c).collect()
    }

    /// A slot for one send to `channel`, or None when it has `PER_CHANNEL` already.
    fn take(&self, channel: ChannelId) -> Option<Slot> {
        let mut map = self.sends.lock().expect("in-flight lock poisoned");
        let n = map.entry(channel).or_default();
        if *n >= PER_CHANNEL {
            return None;
        }
        *n += 1;
        Some(Slot(self.clone(), channel))
    }
}

struct Slot(InFlight, ChannelId);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.0.sends.lock().expect("in-flight lock poisoned");
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// One run of the job: claims due notifications until a claim comes back short (nothing more
/// is due, or every channel with due messages is at its limit) and starts sending them.
pub async fn run(state: AppState) -> anyhow::Result<()> {
    for _ in 0..MAX_CLAIMS_PER_RUN {
        if claim_and_send(&state).await? < BATCH as usize {
            break;
        }
    }
    Ok(())
}

/// One claim of up to `BATCH` notifications; returns how many were claimed.
async fn claim_and_send(state: &AppState) -> anyhow::Result<usize> {
    let now = state.clock.now_ms();
    // A claim outlives the longest send, with room for settling it (one short transaction);
    // should it expire first, the message may go twice, with the same id.
    let claim_until = now + crate::config::ms(state.config.alert_delivery_timeout) + CLAIM_MARGIN_MS;
    let mut tx = state.db.begin().await?;
    let claimed = notifications::claim(&mut tx, now, claim_until, &state.deliveries.busy(), PER_CHANNEL, BATCH).await.context("claiming notifications")?;
    tx.commit().await?;
    let count = claimed.len();
    if count == 0 {
        return Ok(0);
    }
    let mut conn = state.db.pool.acquire().await?;
    let mut wanted: Vec<(OrgId, ChannelId)> = claimed.iter().map(|n| (n.org_id, n.channel_id)).collect();
    wanted.sort();
    wanted.dedup();
    let channels: HashMap<ChannelId, Arc<Channel>> = alert_channels::get_many(&mut conn, &wanted).await?.into_iter().map(|(id, c)| (id, Arc::new(c))).collect();
    let mut over = Vec::new();
    for n in claimed {
        // A deleted channel takes its notifications with it (ON DELETE CASCADE).
        let Some(channel) = channels.get(&n.channel_id).filter(|c| c.org_id == n.org_id).cloned() else { continue };
        match state.deliveries.take(n.channel_id) {
            // Bounded by the delivery timeout; a stop of the server cannot strand the message,
            // whose claim expires.
            Some(slot) => {
                let span = tracing::info_span!(target: crate::telemetry::TRACES, "alert delivery", message_id = %n.id, channel_id = %n.channel_id, attempt = n.attempts + 1);
                drop(tokio::spawn(deliver(state.clone(), channel, n, slot).instrument(span)))
            }
            None => over.push(n.id),
        }
    }
    if !over.is_empty() {
        notifications::release(&mut conn, &over).await.context("releasing notifications over a channel's limit")?;
    }
    Ok(count)
}

async fn deliver(state: AppState, channel: Arc<Channel>, n: Claimed, _slot: Slot) {
    let (id, channel_id) = (n.id.clone(), n.channel_id);
    if let Err(e) = try_deliver(&state, &channel, n).await {
        tracing::warn!(message_id = %id, channel_id = %channel_id, error = %format!("{e:#}"), "delivering an alert notification failed; its claim will expire and it will be retried");
    }
}

/// What a receiver answered (or why nothing was sent).
struct Answer {
    status: Option<StatusCode>,
    retry_after: Option<Duration>,
    excerpt: String,
    error: Option<String>,
}

async fn try_deliver(state: &AppState, channel: &Channel, n: Claimed) -> anyhow::Result<()> {
    let at = state.clock.now_ms();
    let started = Instant::now();
    let answer = send(state, channel, &n, at).await?;
    let attempt = Attempt {
        id: uuid::Uuid::now_v7(),
        message_id: n.id.clone(),
        at,
        status_code: answer.status.map(|s| s.as_u16()),
        error: answer.error.clone(),
        latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        response_excerpt: answer.excerpt.clone(),
    };
    let next = next_step(state, &n, &answer, at);
    let disable = if answer.status == Some(StatusCode::GONE) {
        Some("the receiver answered 410 Gone")
    } else if next != Next::Delivered && channel.failing_since.is_some_and(|since| at - since >= FAILING_FOR) {
        Some("every delivery failed for 5 days")
    } else {
        None
    };
    state.deliveries.settler.record(Settled { notification: n, attempt, next, disable }).await?;
    let outcome = match next {
        Next::Delivered => "delivered",
        Next::RetryAt(_) => "retry",
        Next::Failed => "failed",
    };
    state.metrics.alert_deliveries.with_label_values(&[outcome]).inc();
    Ok(())
}

/// The schedule's next attempt, `Retry-After` when a 429 or 503 gives one, or the end.
fn next_step(state: &AppState, n: &Claimed, answer: &Answer, at: i64) -> Next {
    if answer.status.is_some_and(|s| s.is_success()) {
        return Next::Delivered;
    }
    if answer.status == Some(StatusCode::GONE) {
        return Next::Failed;
    }
    let done = n.attempts as usize + 1;
    match (state.config.alert_retry_schedule.get(done), answer.retry_after) {
        (None, _) => Next::Failed,
        (Some(_), Some(wait)) => Next::RetryAt(at + crate::config::ms(wait.min(MAX_RETRY_AFTER))),
        (Some(delay), None) => Next::RetryAt(at + crate::config::ms(*delay)),
    }
}

/// One POST of the stored body, signed, to the address the SSRF guard approved, with no
/// redirects. Errors are the service's own (a secret that does not open); a receiver's
/// failure is an `Answer`.
async fn send(state: &AppState, channel: &Channel, n: &Claimed, at: i64) -> anyhow::Result<Answer> {
    let url: Url = String::from_utf8(state.sealer.open(&channel.url_sealed)?)?.parse()?;
    let mut secrets = vec![String::from_utf8(state.sealer.open(&channel.secret_sealed)?)?];
    if let (Some(previous), Some(until)) = (&channel.previous_secret_sealed, channel.previous_secret_until) {
        if until > at {
            secrets.push(String::from_utf8(state.sealer.open(previous)?)?);
        }
    }
    let body = match &channel.routing_key_sealed {
        Some(sealed) => channels::with_routing_key(&n.body, &String::from_utf8(state.sealer.open(sealed)?)?)?,
        None => n.body.clone(),
    };
    let failed = |error: String| Answer { status: None, retry_after: None, excerpt: String::new(), error: Some(error) };
    let addr = match ssrf::resolve(&url, &state.config.alert_webhook_allow).await {
        Ok(addr) => addr,
        Err(refused) => return Ok(failed(format!("refused: {refused}"))),
    };
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned();
    let client = state.deliveries.clients.get(&host, addr, state.config.alert_delivery_timeout)?;
    let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let mut request = client.post(url).header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in signing::headers(&secret_refs, &n.id, at / 1000, body.as_bytes()) {
        request = request.header(name, value);
    }
    let mut response = match request.body(body).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Ok(failed("no answer within alert_delivery_timeout_ms".into())),
        Err(e) => return Ok(failed(format!("sending failed: {}", without_url(e)))),
    };
    let status = response.status();
    let retry_after = match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).map(Duration::from_secs)
        }
        _ => None,
    };
    let mut excerpt = Vec::new();
    while excerpt.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
            _ => break,
        }
    }
    excerpt.truncate(EXCERPT_BYTES);
    let excerpt = String::from_utf8_lossy(&excerpt).into_owned();
    Ok(Answer { status: Some(status), retry_after, excerpt, error: None })
}

/// reqwest's error without the URL, which may carry a secret (a Slack webhook's path).
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
