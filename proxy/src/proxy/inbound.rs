//! Inbound: mTLS from other proxies, authorized, then forwarded as plaintext to the local
//! application (`--inbound-forward`, or when the connection was redirected here, the port it was
//! first addressed to on that host). Plaintext and peers that do not chain to the trust bundle
//! never reach the app; every refusal is counted in `inbound_tcp_authz_deny_total` with a reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::detect::{self, PrefixedIo, Protocol};
use super::http::{self, Forward, Upstream};
use super::metrics::ConnLabels;
use super::tcp::{self, BoxIo, CountingIo};
use super::Ctx;
use crate::drain::Drain;

const TLS_RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, drain: Drain) {
    while let Some((tcp, peer)) = drain.accept(&listener, "inbound").await {
        let ctx = ctx.clone();
        let drain = drain.clone();
        tokio::spawn(handle(tcp, peer, ctx, drain).instrument(tracing::debug_span!("inbound", %peer)));
    }
}

fn deny(ctx: &Ctx, target: &str, client_id: &str, reason: &str) {
    ctx.metrics.authz_deny.with_label_values(&[target, client_id, reason]).inc();
}

async fn handle(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>, drain: Drain) {
    // Redirected here by `meshfleet-proxy init`: the app port the peer meant; else --inbound-forward.
    let target = super::intercept::inbound_target(&tcp, ctx.inbound_forward);
    let target_label = if target == ctx.inbound_forward { ctx.inbound_target.clone() } else { target.to_string() };
    // Refuse plaintext before it costs a handshake, and say why in the metrics.
    let mut first = [0u8; 1];
    match tokio::time::timeout(ctx.detect_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_RECORD_HANDSHAKE => {}
        Ok(Ok(1)) => {
            tracing::debug!(%peer, "refused inbound connection that did not start a TLS handshake");
            return deny(&ctx, &target_label, "", "plaintext");
        }
        Ok(_) => return, // closed before sending anything
        Err(_) => return deny(&ctx, &target_label, "", "detect_timeout"),
    }
    let Some(config) = ctx.tls.server_config() else {
        return deny(&ctx, &target_label, "", "no_identity_yet");
    };
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = handshake_failure(&e);
            tracing::info!(%peer, error = %e, reason, "inbound TLS handshake refused");
            return deny(&ctx, &target_label, "", reason);
        }
        Err(_) => return deny(&ctx, &target_label, "", "handshake_timeout"),
    };
    let client_id = crate::tls::peer_identity(stream.get_ref().1.peer_certificates()).unwrap_or_default();
    if !ctx.allow.is_empty() && !ctx.allow.contains(&client_id) {
        tracing::info!(%peer, client_id, "inbound peer not in the allow-list");
        return deny(&ctx, &target_label, &client_id, "not_allowed");
    }
    ctx.metrics.authz_allow.with_label_values(&[&target_label, &client_id]).inc();
    let labels = ConnLabels { direction: "inbound", target_addr: target_label, client_id, server_id: String::new() };
    let mut src = CountingIo::new(stream, ctx.metrics.tcp(&labels, "src", true));
    let (protocol, prefix) = match detect::detect(&mut src, ctx.detect_timeout).await {
        Ok(x) => x,
        Err(e) => return tracing::debug!(error = %e, "inbound detection failed"),
    };
    let src: BoxIo = Box::new(PrefixedIo::new(prefix, src));
    let metrics = ctx.metrics.clone();
    let dst_labels = labels.clone();
    let connect: http::Connect = Arc::new(move || {
        let metrics = metrics.clone();
        let labels = dst_labels.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(target).await?;
            let _ = tcp.set_nodelay(true);
            Ok(Box::new(CountingIo::new(tcp, metrics.tcp(&labels, "dst", false))) as BoxIo)
        })
    });
    match protocol {
        Protocol::Opaque => match connect().await {
            Ok(dst) => tcp::splice(src, dst).await,
            Err(e) => tracing::info!(error = %e, %target, "inbound target unreachable"),
        },
        p => {
            let fwd = Forward { metrics: ctx.metrics.clone(), labels, tls: "true", upstream: Box::new(Upstream::new(p, connect)), fail_share: ctx.fail_share };
            http::serve(src, p, Arc::new(fwd), drain).await
        }
    }
}

/// A stable reason label for a failed handshake.
fn handshake_failure(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => "untrusted_peer",
        Some(rustls::Error::NoCertificatesPresented) => "no_client_cert",
        Some(rustls::Error::PeerIncompatible(_)) => "tls_incompatible",
        _ => "tls_error",
    }
}
