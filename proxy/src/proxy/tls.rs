//! The proxy's live TLS state: its in-memory key, current leaf, and current trust bundle, with
//! rustls configs rebuilt whenever either changes. Connections take a config when they start, so
//! a rotation never disturbs a connection in flight. The key never leaves this struct.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use meshfleet_pki::verify::TrustBundle;

use crate::tls;

/// Inbound client-certificate policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundAuth {
    /// A client certificate that chains to the bundle is required (the default).
    Authenticated,
    /// TLS is required, a client certificate is optional (but verified if presented).
    Unauthenticated,
}

#[derive(Clone, Debug)]
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub identity: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// The issuer's subject name.
    pub issuer: String,
    /// Hex SHA-256 of the issuer certificate (the chain's second), as the controller announces it.
    pub issuer_fingerprint: String,
}

pub struct TlsState {
    key: PrivateKeyDer<'static>,
    auth: InboundAuth,
    controller_id: String,
    inner: RwLock<Inner>,
}

struct Inner {
    bundle: Arc<TrustBundle>,
    leaf: Option<Arc<Leaf>>,
    server: Option<Arc<ServerConfig>>,
    clients: HashMap<Option<String>, Arc<ClientConfig>>,
    controller: Arc<ClientConfig>,
}

impl TlsState {
    pub fn new(key: PrivateKeyDer<'static>, bundle: TrustBundle, auth: InboundAuth, controller_id: String) -> tls::Result<Self> {
        let controller = Arc::new(tls::client_config(&bundle, Some(controller_id.clone()), None, &[b"h2"])?);
        let inner = Inner { bundle: Arc::new(bundle), leaf: None, server: None, clients: HashMap::new(), controller };
        Ok(Self { key, auth, controller_id, inner: RwLock::new(inner) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn leaf(&self) -> Option<Arc<Leaf>> {
        self.read().leaf.clone()
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.read().bundle.clone()
    }

    /// The inbound server config; `None` until the proxy holds a certificate.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.read().server.clone()
    }

    pub fn controller_config(&self) -> Arc<ClientConfig> {
        self.read().controller.clone()
    }

    /// A client config expecting `expected` on the far end; `None` until the proxy holds a
    /// certificate (mesh peers require client certificates).
    pub fn client_config(&self, expected: Option<&str>) -> Option<Arc<ClientConfig>> {
        let key = expected.map(str::to_string);
        if let Some(c) = self.read().clients.get(&key) {
            return Some(c.clone());
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let leaf = inner.leaf.clone()?;
        match tls::client_config(&inner.bundle, key.clone(), Some((leaf.chain.clone(), self.key.clone_key())), &[]) {
            Ok(c) => {
                let c = Arc::new(c);
                inner.clients.insert(key, c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot build client TLS config");
                None
            }
        }
    }

    pub fn set_leaf(&self, leaf: Leaf) -> tls::Result<()> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let server = self.build_server(&inner.bundle, &leaf)?;
        inner.leaf = Some(Arc::new(leaf));
        inner.server = Some(server);
        inner.clients.clear();
        Ok(())
    }

    pub fn set_bundle(&self, bundle: TrustBundle) -> tls::Result<()> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(leaf) = &inner.leaf {
            inner.server = Some(self.build_server(&bundle, leaf)?);
        }
        inner.controller = Arc::new(tls::client_config(&bundle, Some(self.controller_id.clone()), None, &[b"h2"])?);
        inner.clients.clear();
        inner.bundle = Arc::new(bundle);
        Ok(())
    }

    fn build_server(&self, bundle: &TrustBundle, leaf: &Leaf) -> tls::Result<Arc<ServerConfig>> {
        let provider = tls::provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(bundle.roots().clone(), provider.clone());
        let verifier = match self.auth {
            InboundAuth::Authenticated => verifier.build()?,
            InboundAuth::Unauthenticated => verifier.allow_unauthenticated().build()?,
        };
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(leaf.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}
