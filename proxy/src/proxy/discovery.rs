//! Discovery-based routing: one `Resolve` stream to the controller per destination (a Service
//! name, or an intercepted connection's original IP), kept open and reopened with backoff; the
//! last answer stays in use while the controller is away. Connections and HTTP requests go to
//! an endpoint picked by `balance`, over mTLS checking its identity when it is meshed, plain TCP
//! when not; an endpoint that refuses a connection is skipped for that request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tracing::Instrument;

use super::balance::{Endpoint, InFlight, Set};
use super::detect::{self, PrefixedIo, Protocol};
use super::http::{self, Dispatch, Forward, ResponseFuture, Upstream};
use super::metrics::ConnLabels;
use super::tcp::{self, BoxIo, CountingIo};
use super::{outbound, Ctx};
use crate::destination::pb::{destination_client::DestinationClient, ResolveRequest};
use crate::destination::Target;
use crate::drain::Drain;

/// How long a connection waits for a destination's first answer before it fails.
const FIRST_ANSWER: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The destinations this proxy follows, one stream each, stopped when the resolver drops.
pub struct Resolver {
    client: DestinationClient<Channel>,
    destinations: Mutex<HashMap<Target, Arc<Destination>>>,
}

pub struct Destination {
    pub target: Target,
    /// None until the controller's first answer.
    set: watch::Receiver<Option<Arc<Set>>>,
    task: JoinHandle<()>,
}

impl Drop for Destination {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolver {
    pub fn new(channel: Channel) -> Self {
        Self { client: DestinationClient::new(channel), destinations: Mutex::new(HashMap::new()) }
    }

    /// The destination for `target`, its stream opened on first use.
    pub fn destination(&self, target: Target) -> Arc<Destination> {
        let mut map = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(target.clone())
            .or_insert_with(|| {
                let (tx, set) = watch::channel(None);
                let task = tokio::spawn(follow(self.client.clone(), target.clone(), tx).instrument(tracing::info_span!("resolve", %target)));
                Arc::new(Destination { target, set, task })
            })
            .clone()
    }
}

impl Resolver {
    /// Stops following `target` once nothing else holds it: for intercepted addresses the
    /// controller does not know (outside the cluster), so they do not each keep a stream open.
    pub fn forget(&self, target: &Target) {
        self.destinations.lock().unwrap_or_else(|e| e.into_inner()).remove(target);
    }
}

impl Destination {
    /// The current set, waiting for the first answer up to `FIRST_ANSWER`.
    pub async fn current(&self) -> Option<Arc<Set>> {
        let mut rx = self.set.clone();
        let set = match tokio::time::timeout(FIRST_ANSWER, rx.wait_for(Option::is_some)).await {
            Ok(Ok(set)) => set.clone(),
            _ => None,
        };
        set
    }
}

/// Keeps `tx` following the controller's answers for `target` until the proxy stops.
async fn follow(mut client: DestinationClient<Channel>, target: Target, tx: watch::Sender<Option<Arc<Set>>>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match client.resolve(ResolveRequest { target: target.to_string() }).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => {
                            backoff = BACKOFF_MIN;
                            tracing::debug!(endpoints = msg.endpoints.len(), exists = msg.exists, "destination updated");
                            tx.send_modify(|set| *set = Some(Arc::new(Set::update(set.as_deref(), &msg))));
                        }
                        Ok(None) => break tracing::info!("resolve stream ended; keeping the last answer"),
                        Err(e) => break tracing::info!(error = %e, "resolve stream failed; keeping the last answer"),
                    }
                }
            }
            Err(e) => tracing::info!(error = %e, "resolve failed; keeping the last answer"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Dials one endpoint: mTLS expecting its identity when meshed, else plain TCP. Returns the
/// stream counted under `labels` and whether it is TLS.
async fn dial(ctx: &Ctx, ep: &Endpoint, labels: &ConnLabels) -> std::io::Result<(BoxIo, bool)> {
    let labels = ConnLabels { target_addr: ep.address.clone(), server_id: ep.identity.clone().unwrap_or_default(), ..labels.clone() };
    Ok(match &ep.identity {
        Some(id) => {
            let (s, _) = outbound::dial(ctx, &ep.address, Some(id)).await?;
            (Box::new(CountingIo::new(s, ctx.metrics.tcp(&labels, "dst", true))), true)
        }
        None => {
            let s = TcpStream::connect(&ep.address).await?;
            let _ = s.set_nodelay(true);
            (Box::new(CountingIo::new(s, ctx.metrics.tcp(&labels, "dst", false))), false)
        }
    })
}

fn no_endpoint(dest: &Destination) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, format!("no reachable endpoint for {}", dest.target))
}

/// Requests of one downstream connection, each to an endpoint picked for it; one upstream
/// connection per endpoint, dropped when the endpoint leaves the set.
pub struct Balanced {
    dest: Arc<Destination>,
    protocol: Protocol,
    ctx: Arc<Ctx>,
    labels: ConnLabels,
    upstreams: Mutex<HashMap<String, Arc<Upstream>>>,
}

impl Balanced {
    fn upstream(&self, set: &Set, ep: &Arc<Endpoint>) -> Arc<Upstream> {
        let mut map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|addr, _| set.endpoints.iter().any(|e| &e.address == addr));
        map.entry(ep.address.clone())
            .or_insert_with(|| {
                let (ctx, ep, labels) = (self.ctx.clone(), ep.clone(), self.labels.clone());
                let connect: http::Connect = Arc::new(move || {
                    let (ctx, ep, labels) = (ctx.clone(), ep.clone(), labels.clone());
                    Box::pin(async move { dial(&ctx, &ep, &labels).await.map(|(io, _)| io) })
                });
                Arc::new(Upstream::new(self.protocol, connect))
            })
            .clone()
    }

    async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, http::Error> {
        let set = self.dest.current().await.ok_or_else(|| no_endpoint(&self.dest))?;
        let mut failed = Vec::new();
        loop {
            let ep = set.pick(&failed).ok_or_else(|| no_endpoint(&self.dest))?;
            let _load = ep.start();
            let upstream = self.upstream(&set, &ep);
            match upstream.connected().await {
                Ok(()) => return upstream.send(req).await,
                Err(e) => {
                    tracing::info!(error = %e, endpoint = %ep.address, "endpoint unreachable; trying another");
                    failed.push(ep.address.clone());
                }
            }
        }
    }
}

impl Dispatch for Balanced {
    fn dispatch(&self, req: Request<Incoming>) -> ResponseFuture<'_> {
        Box::pin(self.send(req))
    }
}

/// An opaque connection's endpoint: picked, dialled, and another tried if it refuses.
async fn connect_any(ctx: &Ctx, dest: &Destination, labels: &ConnLabels) -> std::io::Result<(BoxIo, InFlight)> {
    let set = dest.current().await.ok_or_else(|| no_endpoint(dest))?;
    let mut failed = Vec::new();
    loop {
        let ep = set.pick(&failed).ok_or_else(|| no_endpoint(dest))?;
        let load = ep.start();
        match dial(ctx, &ep, labels).await {
            Ok((io, _)) => return Ok((io, load)),
            Err(e) => {
                tracing::info!(error = %e, endpoint = %ep.address, "endpoint unreachable; trying another");
                failed.push(ep.address.clone());
            }
        }
    }
}

/// One connection from the app to a discovered destination.
pub(super) async fn handle(tcp: TcpStream, dest: Arc<Destination>, ctx: Arc<Ctx>, drain: Drain) {
    let labels = ConnLabels { direction: "outbound", target_addr: dest.target.to_string(), client_id: String::new(), server_id: String::new() };
    let mut src = CountingIo::new(tcp, ctx.metrics.tcp(&labels, "src", false));
    let (protocol, prefix) = match detect::detect(&mut src, ctx.detect_timeout).await {
        Ok(x) => x,
        Err(e) => return tracing::debug!(error = %e, "outbound detection failed"),
    };
    let src: BoxIo = Box::new(PrefixedIo::new(prefix, src));
    match protocol {
        Protocol::Opaque => match connect_any(&ctx, &dest, &labels).await {
            Ok((dst, _load)) => tcp::splice(src, dst).await,
            Err(e) => tracing::info!(error = %e, "outbound connect failed"),
        },
        p => {
            // The tls label of the connection's requests: "true" unless the destination has
            // unmeshed endpoints (then some requests go in plaintext).
            let meshed = dest.current().await.is_some_and(|set| set.endpoints.iter().all(|e| e.identity.is_some()));
            let tls = if meshed { "true" } else { "no_identity" };
            let upstream = Balanced { dest, protocol: p, ctx: ctx.clone(), labels: labels.clone(), upstreams: Mutex::new(HashMap::new()) };
            let fwd = Forward { metrics: ctx.metrics.clone(), labels, tls, upstream: Box::new(upstream), fail_share: 0.0 };
            http::serve(src, p, Arc::new(fwd), drain).await
        }
    }
}

/// An `--outbound` listener whose target is resolved rather than given.
pub async fn serve(listener: TcpListener, dest: Arc<Destination>, ctx: Arc<Ctx>, drain: Drain) {
    while let Some((tcp, _peer)) = drain.accept(&listener, "outbound").await {
        let span = tracing::debug_span!("outbound", target = %dest.target);
        tokio::spawn(handle(tcp, dest.clone(), ctx.clone(), drain.clone()).instrument(span));
    }
}
