//! The gRPC channel to the gateway: TLS that trusts only the service's gateway CA (never the
//! system roots), the server name taken from the URL host, and the agent certificate when it has
//! one. Built fresh per session so a renewed certificate takes effect on the next connect.

use std::time::Duration;

use meshfleet_agent_protocol::v1::agent_gateway_client::AgentGatewayClient;
use meshfleet_agent_protocol::MAX_MESSAGE_BYTES;
use secrecy::ExposeSecret;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::{Error, Identity, Result};

pub(crate) type GatewayClient = AgentGatewayClient<Channel>;

pub(crate) async fn connect(url: &str, ca_pem: &str, identity: Option<&Identity>) -> Result<GatewayClient> {
    let bad = |reason: &str| Error::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad(&e.to_string()))?;
    if endpoint.uri().scheme_str() != Some("https") {
        return Err(bad("the gateway is only reachable over https"));
    }
    let host = endpoint.uri().host().ok_or_else(|| bad("no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(Error::BadCertificate("the gateway CA bundle holds no PEM certificate".into()));
    }
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(host);
    if let Some(id) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(&id.chain_pem, id.key_pem.expose_secret()));
    }
    let channel = endpoint
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        // Keepalive finds a dead path (NAT timeout, half-open TCP) that TCP alone would not.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    Ok(AgentGatewayClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
}
