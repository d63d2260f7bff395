//! TLS building blocks shared by controller and proxy: a rustls verifier that checks a peer the
//! way `meshfleet_pki::verify` does (chain to the trust bundle, then its SPIFFE identity, which
//! webpki does not match), and TLS-1.3-only rustls configs. Never accepts TLS 1.2 and never skips
//! chain verification.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use meshfleet_pki::inspect::inspect;
use meshfleet_pki::verify::{verify_peer, TrustBundle};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pki(#[from] meshfleet_pki::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server verification for mesh peers: chain to the bundle, then (when the caller knows whom it
/// dials) the SPIFFE URI SAN must equal the expected identity. The TLS server name is ignored:
/// mesh identities are URIs, not DNS names.
#[derive(Debug)]
pub struct PeerVerifier {
    roots: Arc<RootCertStore>,
    expected: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_peer(end_entity, intermediates, &self.roots, self.expected.as_deref(), now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable: every config here is TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that trusts `bundle` and expects `expected` (if any) on the other end.
pub fn client_config(
    bundle: &TrustBundle,
    expected: Option<String>,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier { roots: bundle.roots().clone(), expected, provider: provider.clone() });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The server name a mesh client sends; verification ignores it (see `PeerVerifier`).
pub fn mesh_server_name() -> ServerName<'static> {
    ServerName::try_from("meshfleet.mesh").expect("static DNS name is valid")
}

/// The first SPIFFE identity in a peer's presented chain, if any.
pub fn peer_identity(peer_certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = peer_certs?.first()?;
    inspect(leaf).ok()?.spiffe_id().map(str::to_string)
}
