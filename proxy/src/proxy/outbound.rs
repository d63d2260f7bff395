//! Outbound: plaintext from the local application on a configured listener, forwarded over mTLS
//! to one destination proxy: an explicit `--outbound` route, or one chosen by `intercept` from an
//! intercepted connection's original destination. The far end's identity is checked when known.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tracing::Instrument;

use super::detect::{self, PrefixedIo, Protocol};
use super::http::{self, Forward, Upstream};
use super::metrics::ConnLabels;
use super::tcp::{self, BoxIo, CountingIo};
use super::Ctx;
use crate::drain::Drain;

/// `LISTEN=TARGET[#IDENTITY]`, e.g. `127.0.0.1:4140=10.0.0.7:4143#spiffe://td/ns/web/sa/api`.
#[derive(Clone, Debug)]
pub struct Route {
    pub listen: SocketAddr,
    pub target: String,
    pub identity: Option<String>,
}

impl FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (listen, rest) = s.split_once('=').ok_or_else(|| format!("route {s:?}: expected LISTEN=TARGET[#IDENTITY]"))?;
        let listen = listen.parse().map_err(|e| format!("route {s:?}: listen address: {e}"))?;
        let (target, identity) = match rest.split_once('#') {
            Some((t, id)) => {
                let id = id.parse::<meshfleet_pki::spiffe::WorkloadId>().map_err(|e| format!("route {s:?}: {e}"))?;
                (t, Some(id.to_string()))
            }
            None => (rest, None),
        };
        if target.is_empty() || !target.contains(':') {
            return Err(format!("route {s:?}: target must be HOST:PORT"));
        }
        Ok(Self { listen, target: target.to_string(), identity })
    }
}

pub async fn serve(listener: TcpListener, route: Arc<Route>, ctx: Arc<Ctx>, drain: Drain) {
    while let Some((tcp, _peer)) = drain.accept(&listener, "outbound").await {
        let span = tracing::debug_span!("outbound", target = %route.target);
        tokio::spawn(handle(tcp, route.clone(), ctx.clone(), drain.clone()).instrument(span));
    }
}

/// Dials a destination proxy at `target` with mTLS (it must prove `identity` when given);
/// returns the stream and the identity it proved.
pub(super) async fn dial(ctx: &Ctx, target: &str, identity: Option<&str>) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, String)> {
    let config = ctx.tls.client_config(identity).ok_or_else(|| std::io::Error::other("proxy has no certificate yet"))?;
    let tcp = TcpStream::connect(target).await?;
    let _ = tcp.set_nodelay(true);
    let stream = TlsConnector::from(config).connect(crate::tls::mesh_server_name(), tcp).await?;
    let id = crate::tls::peer_identity(stream.get_ref().1.peer_certificates()).unwrap_or_default();
    Ok((stream, id))
}

/// One connection from the app to `route` (a configured listener's, or an intercepted one's).
pub(super) async fn handle(tcp: TcpStream, route: Arc<Route>, ctx: Arc<Ctx>, drain: Drain) {
    let server_id = route.identity.clone().unwrap_or_default();
    let labels = ConnLabels { direction: "outbound", target_addr: route.target.clone(), client_id: String::new(), server_id };
    let mut src = CountingIo::new(tcp, ctx.metrics.tcp(&labels, "src", false));
    let (protocol, prefix) = match detect::detect(&mut src, ctx.detect_timeout).await {
        Ok(x) => x,
        Err(e) => return tracing::debug!(error = %e, "outbound detection failed"),
    };
    let src: BoxIo = Box::new(PrefixedIo::new(prefix, src));
    // Dial now, so the first request does not pay for the handshake and the metrics carry the
    // identity the destination actually proved.
    let (first, proven) = match dial(&ctx, &route.target, route.identity.as_deref()).await {
        Ok((s, id)) => (Some(s), id),
        Err(e) => {
            tracing::info!(error = %e, target = %route.target, "outbound mTLS connect failed");
            if protocol == Protocol::Opaque {
                return;
            }
            // HTTP clients get a 502 per request instead of a reset, and a redial each time.
            (None, String::new())
        }
    };
    let mut labels = labels;
    if labels.server_id.is_empty() {
        labels.server_id = proven;
    }
    let first: Option<BoxIo> = first.map(|s| Box::new(CountingIo::new(s, ctx.metrics.tcp(&labels, "dst", true))) as BoxIo);
    match protocol {
        Protocol::Opaque => {
            if let Some(dst) = first {
                tcp::splice(src, dst).await
            }
        }
        p => {
            let (c, r, l) = (ctx.clone(), route.clone(), labels.clone());
            let connect: http::Connect = Arc::new(move || {
                let (ctx, route, labels) = (c.clone(), r.clone(), l.clone());
                Box::pin(async move {
                    let (s, _) = dial(&ctx, &route.target, route.identity.as_deref()).await?;
                    Ok(Box::new(CountingIo::new(s, ctx.metrics.tcp(&labels, "dst", true))) as BoxIo)
                })
            });
            let upstream = Upstream::new(p, connect);
            if let Some(io) = first {
                if let Err(e) = upstream.prime(io).await {
                    tracing::debug!(error = %e, "outbound HTTP handshake failed; will redial per request");
                }
            }
            let fwd = Forward { metrics: ctx.metrics.clone(), labels, tls: "true", upstream: Box::new(upstream), fail_share: 0.0 };
            http::serve(src, p, Arc::new(fwd), drain).await
        }
    }
}
