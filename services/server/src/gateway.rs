//! The agent gateway: tonic gRPC over rustls for `meshfleet.agent.v1`. `Register` is the only
//! call without a client certificate; every other call takes the cluster from the verified
//! certificate (never from the payload) and re-checks it against the database.

pub mod convert;
pub mod dispatch;
pub mod ingest;
pub mod limits;
pub mod pki;
pub mod registry;
pub mod session;

use std::net::SocketAddr;

use meshfleet_agent_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use meshfleet_agent_proto::v1::{Certificate, RegisterRequest, RegisterResponse, RenewRequest, RenewResponse};
use meshfleet_agent_proto::MAX_MESSAGE_BYTES;
use secrecy::ExposeSecret;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::app::AppState;
use crate::secrets::token_hash;
use crate::store;
use pki::PeerAgent;

#[derive(Clone)]
pub struct Gateway {
    state: AppState,
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(state: AppState, listener: tokio::net::TcpListener, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&state.pki.server_chain_pem, state.pki.server_key_pem.expose_secret()))
        .client_ca_root(tonic::transport::Certificate::from_pem(&state.pki.agent_ca_pem))
        // Register comes without a client certificate; the other calls check for one.
        .client_auth_optional(true);
    let service =
        AgentGatewayServer::new(Gateway { state: state.clone() }).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Binds the gateway's address (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(addr).await?)
}

impl Gateway {
    /// The agent behind the request's client certificate, if that certificate is still valid:
    /// issued to this cluster, unrevoked, and the cluster not deleted.
    pub(crate) async fn authenticate<T>(&self, request: &Request<T>) -> Result<PeerAgent, Status> {
        let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let (peer, serial) = pki::peer_agent(leaf.as_ref()).ok_or_else(|| Status::unauthenticated("the certificate names no Meshfleet agent"))?;
        self.check_certificate(peer, &serial).await?;
        Ok(peer)
    }

    pub(crate) async fn check_certificate(&self, peer: PeerAgent, serial: &str) -> Result<(), Status> {
        let mut conn = self.state.db.pool.acquire().await.map_err(internal)?;
        let now = self.state.clock.now_ms();
        if store::agents::certificate_is_valid(&mut conn, serial, peer.org_id, peer.cluster_id, now).await.map_err(internal)? {
            Ok(())
        } else {
            Err(Status::permission_denied("this agent certificate was revoked or its cluster deleted; register again"))
        }
    }

    fn certificate_ttl_ms(&self) -> i64 {
        self.state.config.agent_cert_ttl_secs * 1000
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "gateway call failed");
    Status::internal("internal error; it has been logged")
}

fn csr_status(e: pki::CsrError) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl AgentGateway for Gateway {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let req = request.into_inner();
        pki::check_csr_key(&req.csr_der).map_err(csr_status)?;
        let now = self.state.clock.now_ms();
        let hash = token_hash(req.bootstrap_token.trim());
        let mut tx = self.state.db.begin().await.map_err(internal)?;
        let (org, cluster) = match store::clusters::bootstrap_token_state(&mut tx, &hash, now).await.map_err(internal)? {
            store::clusters::TokenState::Unknown => return Err(Status::unauthenticated("unknown bootstrap token")),
            store::clusters::TokenState::Used => return Err(Status::unauthenticated("this bootstrap token was already used; issue a new one for the cluster")),
            store::clusters::TokenState::Expired => return Err(Status::unauthenticated("this bootstrap token has expired; issue a new one")),
            store::clusters::TokenState::Valid => store::clusters::consume_bootstrap_token(&mut tx, &hash, now)
                .await
                .map_err(internal)?
                .ok_or_else(|| Status::unauthenticated("this bootstrap token was already used; issue a new one for the cluster"))?,
        };
        let signed = self.state.pki.sign_agent_csr(&req.csr_der, org, cluster, self.certificate_ttl_ms(), now).map_err(csr_status)?;
        store::agents::insert_certificate(&mut tx, &signed.serial, org, cluster, signed.not_after_ms, now).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        tracing::info!(%org, %cluster, agent_version = %req.agent_version, "agent registered");
        Ok(Response::new(RegisterResponse {
            organization_id: org.to_string(),
            cluster_id: cluster.to_string(),
            certificate: Some(Certificate { chain_pem: signed.chain_pem, not_after_unix_ms: signed.not_after_ms }),
        }))
    }

    type ConnectStream = session::ServerStream;

    async fn connect(&self, request: Request<tonic::Streaming<meshfleet_agent_proto::v1::AgentMessage>>) -> Result<Response<Self::ConnectStream>, Status> {
        let peer = self.authenticate(&request).await?;
        // Per cluster, so an agent cannot refill its message bucket by reconnecting in a loop.
        if let Err(wait) = self.state.limits.connect(peer.cluster_id) {
            self.state.ingest.refused(peer.org_id, peer.cluster_id, "reconnects", 1, self.state.clock.now_ms());
            return Err(Status::resource_exhausted(format!(
                "this cluster's agent connects more than {} times a minute; retry in {} s",
                self.state.config.gateway_connects_per_min,
                wait.as_secs().max(1)
            )));
        }
        let serial = request.peer_certs().and_then(|c| c.first().and_then(|leaf| pki::peer_agent(leaf.as_ref())).map(|(_, s)| s)).unwrap_or_default();
        Ok(Response::new(session::start(self.clone(), peer, serial, request.into_inner())))
    }

    async fn renew(&self, request: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let peer = self.authenticate(&request).await?;
        let req = request.into_inner();
        let now = self.state.clock.now_ms();
        let signed = self.state.pki.sign_agent_csr(&req.csr_der, peer.org_id, peer.cluster_id, self.certificate_ttl_ms(), now).map_err(csr_status)?;
        let mut conn = self.state.db.pool.acquire().await.map_err(internal)?;
        store::agents::insert_certificate(&mut conn, &signed.serial, peer.org_id, peer.cluster_id, signed.not_after_ms, now).await.map_err(internal)?;
        tracing::info!(org = %peer.org_id, cluster = %peer.cluster_id, "agent certificate renewed");
        Ok(Response::new(RenewResponse { certificate: Some(Certificate { chain_pem: signed.chain_pem, not_after_unix_ms: signed.not_after_ms }) }))
    }
}
