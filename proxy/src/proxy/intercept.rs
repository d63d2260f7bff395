//! Transparent interception: connections that `meshfleet-proxy init`'s nat rules redirected to
//! the proxy carry their original destination (SO_ORIGINAL_DST). Outbound, it picks the route:
//! a `--route ORIG#IDENTITY` goes over mTLS to ORIG itself (the peer pod's own rules hand it to
//! the peer proxy's inbound); else, with `--destination`, an address the controller knows (a
//! cluster IP or pod IP) goes to its discovered endpoints; anything else is forwarded as plain
//! TCP or refused (`--unmeshed`).
//! Inbound, it names the application port the peer meant.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::discovery::{self, Resolver};
use super::metrics::ConnLabels;
use super::outbound::{self, Route};
use super::tcp::{self, CountingIo};
use super::Ctx;
use crate::destination::Target;
use crate::drain::Drain;

/// `ORIG_IP:PORT#IDENTITY`: connections first addressed to ORIG go there over mTLS, and the
/// far end must prove IDENTITY.
#[derive(Clone, Debug)]
pub struct InterceptRoute {
    pub dst: SocketAddr,
    pub identity: String,
}

impl FromStr for InterceptRoute {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (dst, id) = s.split_once('#').ok_or_else(|| format!("route {s:?}: expected IP:PORT#IDENTITY"))?;
        let dst = dst.parse().map_err(|e| format!("route {s:?}: {e}"))?;
        let id = id.parse::<meshfleet_pki::spiffe::WorkloadId>().map_err(|e| format!("route {s:?}: {e}"))?;
        Ok(Self { dst, identity: id.to_string() })
    }
}

/// What happens to an intercepted connection whose destination has no route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Unmeshed {
    /// Forward it as plain TCP to its original destination.
    Forward,
    /// Close it.
    Refuse,
}

pub struct Table {
    pub routes: HashMap<SocketAddr, String>,
    pub unmeshed: Unmeshed,
    /// With `--destination`: destinations without a route are looked up by their address.
    pub resolver: Option<Arc<Resolver>>,
}

impl Table {
    pub fn new(routes: &[InterceptRoute], unmeshed: Unmeshed, resolver: Option<Arc<Resolver>>) -> Self {
        Self { routes: routes.iter().map(|r| (r.dst, r.identity.clone())).collect(), unmeshed, resolver }
    }
}

/// The destination a redirected connection was first addressed to. For a connection that was
/// not redirected this is its local address (or an error when conntrack never saw it).
pub fn original_dst(tcp: &TcpStream) -> io::Result<SocketAddr> {
    let fd = tcp.as_raw_fd();
    if tcp.local_addr()?.is_ipv4() {
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: sa is a valid, writable sockaddr_in of `len` bytes for the kernel to fill.
        let rc = unsafe { libc::getsockopt(fd, libc::SOL_IP, libc::SO_ORIGINAL_DST, &mut sa as *mut _ as *mut libc::c_void, &mut len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)), u16::from_be(sa.sin_port))))
    } else {
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: as above; IP6T_SO_ORIGINAL_DST fills a sockaddr_in6.
        let rc = unsafe { libc::getsockopt(fd, libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST, &mut sa as *mut _ as *mut libc::c_void, &mut len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(sa.sin6_addr.s6_addr), u16::from_be(sa.sin6_port), 0, 0)))
    }
}

/// Where inbound traffic goes: the app port the peer meant when the connection was redirected
/// to the inbound listener, else the configured `--inbound-forward`.
pub fn inbound_target(tcp: &TcpStream, configured: SocketAddr) -> SocketAddr {
    match (original_dst(tcp), tcp.local_addr()) {
        (Ok(orig), Ok(local)) if orig != local => SocketAddr::new(configured.ip(), orig.port()),
        _ => configured,
    }
}

pub async fn serve(listener: TcpListener, table: Arc<Table>, ctx: Arc<Ctx>, drain: Drain) {
    let listen = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    while let Some((tcp, peer)) = drain.accept(&listener, "intercept").await {
        let orig = match (original_dst(&tcp), tcp.local_addr()) {
            (Ok(orig), Ok(local)) if orig != local => orig,
            (r, _) => {
                // Dialled directly rather than redirected: forwarding it would loop back here.
                tracing::info!(%peer, original = ?r.ok(), "refused a connection to the intercept listener that was not redirected");
                continue;
            }
        };
        let span = tracing::debug_span!("intercept", %orig);
        match table.routes.get(&orig) {
            Some(id) => {
                let route = Arc::new(Route { listen, target: orig.to_string(), identity: Some(id.clone()) });
                tokio::spawn(outbound::handle(tcp, route, ctx.clone(), drain.clone()).instrument(span));
            }
            None => {
                tokio::spawn(unrouted(tcp, orig, table.clone(), ctx.clone(), drain.clone()).instrument(span));
            }
        }
    }
}

/// A destination with no `--route`: discovered endpoints when the controller knows the address
/// (a cluster IP or a pod IP), else `--unmeshed`.
async fn unrouted(tcp: TcpStream, orig: SocketAddr, table: Arc<Table>, ctx: Arc<Ctx>, drain: Drain) {
    if let Some(resolver) = &table.resolver {
        let target = Target::Addr(orig);
        let dest = resolver.destination(target.clone());
        if dest.current().await.is_some_and(|set| set.exists) {
            return discovery::handle(tcp, dest, ctx, drain).await;
        }
        resolver.forget(&target);
    }
    match table.unmeshed {
        Unmeshed::Forward => forward_plain(tcp, orig, ctx).await,
        Unmeshed::Refuse => tracing::info!(%orig, "refused unmeshed destination (--unmeshed refuse)"),
    }
}

/// Unmeshed: plain TCP to the original destination, counted with `tls="no_identity"`.
async fn forward_plain(tcp: TcpStream, orig: SocketAddr, ctx: Arc<Ctx>) {
    let labels = ConnLabels { direction: "outbound", target_addr: orig.to_string(), client_id: String::new(), server_id: String::new() };
    let src = CountingIo::new(tcp, ctx.metrics.tcp(&labels, "src", false));
    match TcpStream::connect(orig).await {
        Ok(dst) => {
            let _ = dst.set_nodelay(true);
            tcp::splice(src, CountingIo::new(dst, ctx.metrics.tcp(&labels, "dst", false))).await
        }
        Err(e) => tracing::info!(error = %e, %orig, "unmeshed destination unreachable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_parses_and_rejects() {
        let r: InterceptRoute = "10.0.0.7:8080#spiffe://cluster.local/ns/api/sa/server".parse().unwrap();
        assert_eq!(r.dst, "10.0.0.7:8080".parse().unwrap());
        assert_eq!(r.identity, "spiffe://cluster.local/ns/api/sa/server");
        assert!("10.0.0.7:8080".parse::<InterceptRoute>().is_err(), "identity is required");
        assert!("svc:8080#spiffe://cluster.local/ns/api/sa/server".parse::<InterceptRoute>().is_err(), "an IP, not a name");
    }

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_keeps_the_configured_target() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let configured = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(inbound_target(&s, configured), configured);
        drop(c);
    }
}
