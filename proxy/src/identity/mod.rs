//! The `meshfleet.identity.v1` protocol: generated types, and a client channel that dials the
//! controller over TLS 1.3, trusting whatever bundle the caller holds at the moment it dials.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

pub mod pb {
    tonic::include_proto!("meshfleet.identity.v1");
}

/// Yields the TLS config to dial with; called per connection so trust-bundle updates apply to
/// the next reconnect without rebuilding the channel.
pub type TlsSource = Arc<dyn Fn() -> Arc<ClientConfig> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid controller address {0:?}")]
    Address(String),
}

/// A lazily connecting channel to the controller at `addr` (`host:port`).
pub fn channel(addr: &str, tls: TlsSource) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| Error::Address(addr.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    let target = addr.to_string();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = tls();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect(&target).await?;
            let _ = tcp.set_nodelay(true);
            let stream = TlsConnector::from(config).connect(crate::tls::mesh_server_name(), tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
