//! The agent gateway: tonic gRPC over rustls for `meshfleet.agent.v1`. `Register` is the only
//! call without a client certificate; every other call takes the cluster from the verified
//! certificate (never from the payload) and re-checks it against the database.

pub mod convert;
pub mod dispatch;
pub mod error;
pub mod ingest;
pub mod issuer;
pub mod limits;
pub mod pki;
pub mod recheck;
pub mod registry;
pub mod session;
pub mod validity;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshfleet_agent_protocol::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use meshfleet_agent_protocol::v1::{Certificate, RegisterRequest, RegisterResponse, RenewRequest, RenewResponse, SignIssuerRequest, SignIssuerResponse};
use meshfleet_agent_protocol::MAX_MESSAGE_BYTES;
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::app::AppState;
use crate::secrets::token_hash;
use crate::store;
pub use error::{Error, Result};
use pki::PeerAgent;

#[derive(Clone)]
pub struct Gateway {
    state: AppState,
    /// Streams being opened (certificate check, connection record, open commands): at most
    /// half the database pool's connections, so a storm of reconnecting agents (a replica
    /// restarted under 10,000 of them) leaves the other half to the streams already open.
    opening: Arc<Semaphore>,
    checks: validity::CertificateChecks,
    peers: Arc<pki::KnownPeers>,
}

/// How long a new stream waits (in order of arrival) to be opened before the agent is told to
/// come back later: waiting here is cheap, while a refused agent backs off for up to 30 s (a
/// 5 s wait left the last of 10,000 reconnecting agents out for two minutes).
const OPENING_WAIT: Duration = Duration::from_secs(20);

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(state: AppState, listener: tokio::net::TcpListener, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&state.pki.server_chain_pem, state.pki.server_key_pem.expose_secret()))
        .client_ca_root(tonic::transport::Certificate::from_pem(&state.pki.agent_ca_pem))
        // Register comes without a client certificate; the other calls check for one.
        .client_auth_optional(true);
    let service =
        AgentGatewayServer::new(Gateway::new(state.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Set here, not on the builder: `serve_with_incoming` leaves accepted sockets as they come.
    // Without TCP_NODELAY a call's response could wait out the client's delayed ACK (40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(Duration::from_secs(60)));
    let streams = state.clone();
    let shutdown = async move {
        shutdown.await;
        streams.agents.shut_down();
    };
    Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Connections waiting to be accepted (the kernel caps it at `net.core.somaxconn`). The 128
/// that `TcpListener::bind` asks for overflowed when 10,000 agents came back to a restarted
/// replica: the dropped handshakes were retried by the agents' kernels after 1, 3, 7, 15 s...
const BACKLOG: u32 = 4096;

/// Binds the gateway's address (port 0 picks one) with room for a fleet reconnecting at once.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As `TcpListener::bind` does: a restarted replica binds its port again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

impl Gateway {
    fn new(state: AppState) -> Gateway {
        let opening = Arc::new(Semaphore::new((state.config.db_max_connections as usize / 2).max(1)));
        let checks = validity::CertificateChecks::start(state.db.clone(), state.clock.clone());
        Gateway { state, opening, checks, peers: Arc::default() }
    }

    /// The agent behind the request's client certificate, with the certificate's serial, if
    /// that certificate is still valid: issued to this cluster, unrevoked, and the cluster not
    /// deleted.
    pub(crate) async fn authenticate<T>(&self, request: &Request<T>) -> Result<(PeerAgent, String)> {
        let certs = request.peer_certs().ok_or(Error::NoClientCertificate)?;
        let leaf = certs.first().ok_or(Error::NoClientCertificate)?;
        let (peer, serial) = self.peers.peer_agent(leaf.as_ref()).ok_or(Error::NotAnAgent)?;
        self.check_certificate(peer, &serial).await?;
        Ok((peer, serial))
    }

    /// Asks the database (with the other calls checking at the same time), unless this replica
    /// found the certificate valid lately (see `Registry::verified`).
    async fn check_certificate(&self, peer: PeerAgent, serial: &str) -> Result<()> {
        let agents = &self.state.agents;
        let now = self.state.clock.now_ms();
        if agents.verified(peer.cluster_id, serial, now) {
            return Ok(());
        }
        let started = agents.check_started();
        let not_after = self.checks.valid_until((peer.org_id, peer.cluster_id, serial.to_owned())).await?.ok_or(Error::CertificateInvalid)?;
        agents.remember_verified(peer.cluster_id, serial, recheck::trusted_until(now, not_after), started);
        Ok(())
    }

    fn certificate_ttl_ms(&self) -> i64 {
        crate::config::ms(self.state.config.agent_cert_ttl)
    }
}

#[tonic::async_trait]
impl AgentGateway for Gateway {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        Ok(Response::new(self.do_register(request.into_inner()).await?))
    }

    type ConnectStream = session::ServerStream;

    async fn connect(&self, request: Request<tonic::Streaming<meshfleet_agent_protocol::v1::AgentMessage>>) -> Result<Response<Self::ConnectStream>, Status> {
        Ok(Response::new(self.do_connect(request).await?))
    }

    async fn renew(&self, request: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let (peer, _) = self.authenticate(&request).await?;
        Ok(Response::new(self.do_renew(peer, request.into_inner()).await?))
    }

    async fn sign_issuer(&self, request: Request<SignIssuerRequest>) -> Result<Response<SignIssuerResponse>, Status> {
        let (peer, _) = self.authenticate(&request).await?;
        Ok(Response::new(self.do_sign_issuer(peer, request.into_inner()).await?))
    }
}

impl Gateway {
    #[tracing::instrument(name = "register", skip_all, fields(agent_version = %req.agent_version, org_id, cluster_id))]
    async fn do_register(&self, req: RegisterRequest) -> Result<RegisterResponse> {
        // Before the token is spent, so a refused CSR leaves it usable.
        meshfleet_pki::csr::check(&req.csr_der)?;
        let now = self.state.clock.now_ms();
        let hash = token_hash(req.bootstrap_token.trim());
        let mut tx = self.state.db.begin().await?;
        let (org, cluster) = match store::clusters::bootstrap_token_state(&mut tx, &hash, now).await? {
            store::clusters::TokenState::Unknown => return Err(Error::UnknownToken),
            store::clusters::TokenState::Used => return Err(Error::TokenUsed),
            store::clusters::TokenState::Expired => return Err(Error::TokenExpired),
            store::clusters::TokenState::Valid => store::clusters::consume_bootstrap_token(&mut tx, &hash, now).await?.ok_or(Error::TokenUsed)?,
        };
        tracing::Span::current().record("org_id", tracing::field::display(org)).record("cluster_id", tracing::field::display(cluster));
        let signed = self.state.pki.sign_agent_csr(&req.csr_der, org, cluster, self.certificate_ttl_ms(), now)?;
        store::agents::insert_certificate(&mut tx, &signed.serial, org, cluster, signed.not_after_ms, now).await?;
        tx.commit().await?;
        tracing::info!(%org, %cluster, agent_version = %req.agent_version, "agent registered");
        Ok(RegisterResponse {
            organization_id: org.to_string(),
            cluster_id: cluster.to_string(),
            certificate: Some(Certificate { chain_pem: signed.chain_pem, not_after_unix_ms: signed.not_after_ms }),
        })
    }

    #[tracing::instrument(name = "connect", skip_all)]
    async fn do_connect(&self, request: Request<tonic::Streaming<meshfleet_agent_protocol::v1::AgentMessage>>) -> Result<session::ServerStream> {
        let opening = match tokio::time::timeout(OPENING_WAIT, self.opening.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                self.state.metrics.gateway_rejected.with_label_values(&["busy"]).inc();
                return Err(Error::Busy);
            }
        };
        let (peer, serial) = self.authenticate(&request).await?;
        // Per cluster, so an agent cannot refill its message bucket by reconnecting in a loop.
        if let Err(retry_in) = self.state.limits.connect(peer.cluster_id) {
            self.state.ingest.refused(peer.org_id, peer.cluster_id, "reconnects", 1, self.state.clock.now_ms());
            return Err(Error::Reconnects { per_min: self.state.config.gateway_connects_per_min, retry_in });
        }
        Ok(session::start(self.clone(), peer, serial, request.into_inner(), opening))
    }

    #[tracing::instrument(name = "renew", skip_all, fields(org_id = %peer.org_id, cluster_id = %peer.cluster_id))]
    async fn do_renew(&self, peer: PeerAgent, req: RenewRequest) -> Result<RenewResponse> {
        let now = self.state.clock.now_ms();
        let signed = self.state.pki.sign_agent_csr(&req.csr_der, peer.org_id, peer.cluster_id, self.certificate_ttl_ms(), now)?;
        let mut conn = self.state.db.pool.acquire().await?;
        store::agents::insert_certificate(&mut conn, &signed.serial, peer.org_id, peer.cluster_id, signed.not_after_ms, now).await?;
        tracing::info!(org = %peer.org_id, cluster = %peer.cluster_id, "agent certificate renewed");
        Ok(RenewResponse { certificate: Some(Certificate { chain_pem: signed.chain_pem, not_after_unix_ms: signed.not_after_ms }) })
    }
}
