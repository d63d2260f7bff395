//! A small in-test gateway: tonic over rustls with a meshfleet-pki CA, client certificates optional
//! (only Register may go without). It records what agents send and lets a test withhold acks,
//! cut streams, push commands and refuse agents.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::Stream;
use meshfleet_agent::v1::{
    self,
    agent_gateway_server::{AgentGateway, AgentGatewayServer},
    agent_message::Body,
    server_message, Ack, AgentMessage, RegisterRequest, RegisterResponse, RenewRequest, RenewResponse, ServerMessage, SignIssuerRequest, SignIssuerResponse,
};
use meshfleet_pki::mint::{self, CaProfile, LeafProfile, Usage};
use meshfleet_pki::{Issuer, KeyPair};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

pub const ORG: &str = "org-1";
pub const CLUSTER: &str = "cluster-1";

#[derive(Default)]
pub struct Recorded {
    /// Every message of every session, with its session number (1-based).
    pub messages: Vec<(u64, AgentMessage)>,
    pub sessions: u64,
    pub renewals: u64,
}

struct Control {
    tokens: HashSet<String>,
    auto_ack: bool,
    deny: bool,
    cert_lifetime: Duration,
    /// Sender of the current session's server stream.
    current: Option<mpsc::Sender<Result<ServerMessage, Status>>>,
}

pub struct TestGateway {
    pub url: String,
    pub ca_pem: String,
    recorded: Arc<Mutex<Recorded>>,
    control: Arc<Mutex<Control>>,
    _stop: oneshot::Sender<()>,
}

#[derive(Clone)]
struct Svc {
    ca: Arc<Issuer<'static, KeyPair>>,
    recorded: Arc<Mutex<Recorded>>,
    control: Arc<Mutex<Control>>,
}

impl TestGateway {
    pub async fn start(token: &str) -> TestGateway {
        let ca = mint::new_anchor(&CaProfile::new("test gateway CA", Duration::from_secs(86400))).unwrap();
        let ca_pem = ca.cert_pem.clone();
        let ca = Arc::new(ca.signer().unwrap());
        let server_key = mint::new_key().unwrap();
        let now = SystemTime::now();
        let server = LeafProfile {
            common_name: "test gateway".into(),
            uris: Vec::new(),
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            usage: Usage::Server,
            not_before: now - mint::BACKDATE,
            not_after: now + Duration::from_secs(86400),
        };
        let server_cert = mint::issue_leaf(&ca, &server_key, &server).unwrap();
        let control = Arc::new(Mutex::new(Control {
            tokens: [token.to_owned()].into(),
            auto_ack: true,
            deny: false,
            cert_lifetime: Duration::from_secs(3600),
            current: None,
        }));
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let svc = Svc { ca, recorded: recorded.clone(), control: control.clone() };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(server_cert.pem(), server_key.serialize_pem()))
            .client_ca_root(Certificate::from_pem(&ca_pem))
            .client_auth_optional(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(AgentGatewayServer::new(svc))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestGateway { url: format!("https://127.0.0.1:{}", addr.port()), ca_pem, recorded, control, _stop: stop }
    }

    pub fn set_auto_ack(&self, on: bool) {
        self.control.lock().unwrap().auto_ack = on;
    }
    pub fn set_deny(&self, on: bool) {
        self.control.lock().unwrap().deny = on;
    }
    pub fn set_cert_lifetime(&self, d: Duration) {
        self.control.lock().unwrap().cert_lifetime = d;
    }
    /// Ends the current session's stream with an error, as a crashing gateway would.
    pub fn cut_stream(&self) {
        if let Some(tx) = self.control.lock().unwrap().current.take() {
            let _ = tx.try_send(Err(Status::unavailable("test gateway cut the stream")));
        }
    }

    pub fn send(&self, msg: server_message::Body) {
        let tx = self.control.lock().unwrap().current.clone().expect("a session is open");
        tx.try_send(Ok(ServerMessage { body: Some(msg) })).unwrap();
    }

    /// A command by kind alone, as servers sent it before typed commands.
    pub fn command(&self, id: &str, kind: &str) {
        self.send(server_message::Body::Command(v1::Command { id: id.into(), kind: kind.into(), ..Default::default() }));
    }

    pub fn recorded<R>(&self, f: impl FnOnce(&Recorded) -> R) -> R {
        f(&self.recorded.lock().unwrap())
    }

    /// Bodies received in one session, in order.
    pub fn session(&self, n: u64) -> Vec<AgentMessage> {
        self.recorded(|r| r.messages.iter().filter(|(s, _)| *s == n).map(|(_, m)| m.clone()).collect())
    }

    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Recorded) -> bool) {
        for _ in 0..500 {
            if self.recorded(&pred) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

impl Svc {
    fn issue(&self, csr_der: &[u8], cluster: &str) -> Result<v1::Certificate, Status> {
        let public_key = meshfleet_pki::csr::check(csr_der).map_err(|e| Status::invalid_argument(format!("bad CSR: {e}")))?;
        let lifetime = self.control.lock().unwrap().cert_lifetime;
        let now = SystemTime::now();
        let profile = LeafProfile {
            common_name: String::new(),
            uris: vec![meshfleet_agent_protocol::agent_spiffe_id(ORG, cluster)],
            hosts: Vec::new(),
            usage: Usage::Client,
            not_before: now,
            not_after: now + lifetime,
        };
        let cert = mint::issue_leaf(&self.ca, &public_key, &profile).unwrap();
        Ok(v1::Certificate { chain_pem: cert.pem(), not_after_unix_ms: meshfleet_pki::unix(profile.not_after) * 1000 })
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<String, Status> {
        if self.control.lock().unwrap().deny {
            return Err(Status::permission_denied("cluster deleted"));
        }
        let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("client certificate required"))?;
        let cert = meshfleet_pki::inspect::inspect(certs.first().ok_or_else(|| Status::unauthenticated("no certificate"))?)
            .map_err(|_| Status::unauthenticated("bad certificate"))?;
        let cluster = cert.uris().find_map(|u| meshfleet_agent_protocol::parse_agent_spiffe_id(u).map(|(_, cluster)| cluster.to_owned()));
        cluster.ok_or_else(|| Status::unauthenticated("not an agent certificate"))
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentGateway for Svc {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let req = req.into_inner();
        if !self.control.lock().unwrap().tokens.remove(&req.bootstrap_token) {
            return Err(Status::unauthenticated("unknown or used bootstrap token"));
        }
        let certificate = self.issue(&req.csr_der, CLUSTER)?;
        Ok(Response::new(RegisterResponse { organization_id: ORG.into(), cluster_id: CLUSTER.into(), certificate: Some(certificate) }))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let cluster = self.authenticate(&req)?;
        let certificate = self.issue(&req.into_inner().csr_der, &cluster)?;
        self.recorded.lock().unwrap().renewals += 1;
        Ok(Response::new(RenewResponse { certificate: Some(certificate) }))
    }

    async fn sign_issuer(&self, _req: Request<SignIssuerRequest>) -> Result<Response<SignIssuerResponse>, Status> {
        // The agent's transport tests need no mesh issuer; the real gateway's is tested there.
        Err(Status::unimplemented("not part of this stand-in"))
    }

    type ConnectStream = OutStream;

    async fn connect(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<OutStream>, Status> {
        self.authenticate(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let session = {
            let mut r = self.recorded.lock().unwrap();
            r.sessions += 1;
            r.sessions
        };
        self.control.lock().unwrap().current = Some(tx.clone());
        let (recorded, control) = (self.recorded.clone(), self.control.clone());
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let is_report = !matches!(msg.body, Some(Body::Hello(_)) | Some(Body::Heartbeat(_)) | None);
                let seq = msg.seq;
                recorded.lock().unwrap().messages.push((session, msg));
                if is_report && control.lock().unwrap().auto_ack {
                    let _ = tx.send(Ok(ServerMessage { body: Some(server_message::Body::Ack(Ack { seq })) })).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
