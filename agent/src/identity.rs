//! The agent's identity with the service: the client certificate chain, its private key (made
//! here and never sent anywhere) and the ids the certificate names. Register and renew live
//! here; the key is only ever written to a 0600 file and never logged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshfleet_agent_protocol::v1::{self, RegisterRequest, RenewRequest, SignIssuerRequest, SignIssuerResponse};
use meshfleet_pki::inspect::{inspect, CertInfo};
use meshfleet_pki::{KeyPair, PublicKeyData};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::{tls, Error, Result};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Identity {
    pub org_id: String,
    pub cluster_id: String,
    /// The agent certificate followed by its issuing CA, PEM.
    pub chain_pem: String,
    pub key_pem: SecretString,
    pub not_after_unix_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    org_id: String,
    cluster_id: String,
    chain_pem: String,
    key_pem: String,
    not_after_unix_ms: i64,
}

impl Identity {
    /// Writes the identity with [`write_private`].
    pub fn save(&self, path: &Path) -> Result<()> {
        write_private(path, &self.to_json())
    }

    /// The identity as the JSON document `save` writes (for storing it in a Kubernetes Secret).
    /// It contains the private key: only ever write it somewhere as private as a 0600 file.
    pub fn to_json(&self) -> Vec<u8> {
        let file = IdentityFile {
            org_id: self.org_id.clone(),
            cluster_id: self.cluster_id.clone(),
            chain_pem: self.chain_pem.clone(),
            key_pem: self.key_pem.expose_secret().to_owned(),
            not_after_unix_ms: self.not_after_unix_ms,
        };
        serde_json::to_vec_pretty(&file).expect("identity serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Identity, serde_json::Error> {
        let f: IdentityFile = serde_json::from_slice(bytes)?;
        Ok(Identity { org_id: f.org_id, cluster_id: f.cluster_id, chain_pem: f.chain_pem, key_pem: f.key_pem.into(), not_after_unix_ms: f.not_after_unix_ms })
    }

    pub fn load(path: &Path) -> Result<Identity> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        let f: IdentityFile = serde_json::from_slice(&bytes).map_err(|source| Error::IdentityFormat { path: path.to_owned(), source })?;
        Ok(Identity { org_id: f.org_id, cluster_id: f.cluster_id, chain_pem: f.chain_pem, key_pem: f.key_pem.into(), not_after_unix_ms: f.not_after_unix_ms })
    }

    /// The certificate's notBefore, if the chain parses.
    pub fn not_before_unix_ms(&self) -> Option<i64> {
        leaf(&self.chain_pem).ok().map(|l| l.not_before_unix * 1000)
    }

    /// When to renew: two thirds into the certificate's lifetime.
    pub fn renew_at_unix_ms(&self) -> i64 {
        let not_before = self.not_before_unix_ms().unwrap_or(self.not_after_unix_ms);
        not_before + (self.not_after_unix_ms - not_before).max(0) * 2 / 3
    }

    /// Builds an identity from what the gateway issued for `key`, checking that the certificate
    /// really is for that key (and for the cluster, when known) before trusting it.
    fn from_issued(org_id: String, cluster_id: String, cert: Option<v1::Certificate>, key: &KeyPair) -> Result<Identity> {
        let cert = cert.ok_or_else(|| Error::BadCertificate("no certificate in the answer".into()))?;
        let leaf = leaf(&cert.chain_pem)?;
        if leaf.spki != key.subject_public_key_info() {
            return Err(Error::BadCertificate("the certificate is not for this agent's key".into()));
        }
        let want = meshfleet_agent_protocol::agent_spiffe_id(&org_id, &cluster_id);
        if !leaf.uris().any(|u| u == want) {
            return Err(Error::BadCertificate(format!("the certificate does not name {want}")));
        }
        Ok(Identity { org_id, cluster_id, chain_pem: cert.chain_pem, key_pem: key.serialize_pem().into(), not_after_unix_ms: leaf.not_after_unix * 1000 })
    }
}

/// Generates an ECDSA P-256 key in memory, sends a CSR with the bootstrap token over TLS that
/// trusts only `ca_pem`, and returns the issued identity.
pub async fn register(gateway_url: &str, ca_pem: &str, bootstrap_token: &str, agent_version: &str) -> Result<Identity, Error> {
    let (key, csr_der) = new_key_and_csr()?;
    let mut client = tls::connect(gateway_url, ca_pem, None).await?;
    let mut req = tonic::Request::new(RegisterRequest { bootstrap_token: bootstrap_token.to_owned(), csr_der, agent_version: agent_version.to_owned() });
    req.set_timeout(CALL_TIMEOUT);
    let resp = client.register(req).await?.into_inner();
    let (org, cluster) = (resp.organization_id, resp.cluster_id);
    if org.is_empty() || cluster.is_empty() {
        return Err(Error::BadCertificate("the answer names no organization or cluster".into()));
    }
    Identity::from_issued(org, cluster, resp.certificate, &key)
}

/// A new certificate for a new key, requested over mTLS with the current identity.
pub async fn renew(gateway_url: &str, ca_pem: &str, identity: &Identity) -> Result<Identity, Error> {
    let (key, csr_der) = new_key_and_csr()?;
    let mut client = tls::connect(gateway_url, ca_pem, Some(identity)).await?;
    let mut req = tonic::Request::new(RenewRequest { csr_der });
    req.set_timeout(CALL_TIMEOUT);
    let resp = client.renew(req).await?.into_inner();
    Identity::from_issued(identity.org_id.clone(), identity.cluster_id.clone(), resp.certificate, &key)
}

/// A connection to the gateway under the agent's identity, for unary calls beside the stream:
/// the agent's client shares its live session's (one mTLS handshake per session, not per call).
#[derive(Clone)]
pub struct GatewayConnection(tls::GatewayClient);

impl GatewayConnection {
    pub async fn open(gateway_url: &str, ca_pem: &str, identity: &Identity) -> Result<GatewayConnection, Error> {
        tls::connect(gateway_url, ca_pem, Some(identity)).await.map(GatewayConnection)
    }

    pub(crate) fn of(client: tls::GatewayClient) -> GatewayConnection {
        GatewayConnection(client)
    }

    /// The mesh issuer for `csr_der` (a key made in the cluster), while the gateway's
    /// rotate-issuer command `command_id` is open.
    pub async fn sign_issuer(&self, command_id: &str, csr_der: Vec<u8>) -> Result<SignIssuerResponse, Error> {
        let mut req = tonic::Request::new(SignIssuerRequest { command_id: command_id.to_owned(), csr_der });
        req.set_timeout(CALL_TIMEOUT);
        Ok(self.0.clone().sign_issuer(req).await?.into_inner())
    }
}

/// A fresh key and a CSR that only proves possession of it: the gateway sets every field of
/// what it signs.
pub fn new_key_and_csr() -> Result<(KeyPair, Vec<u8>)> {
    let key = meshfleet_pki::mint::new_key()?;
    let csr = meshfleet_pki::csr::new_csr(&key)?;
    Ok((key, csr))
}

/// Writes a file that holds a private key atomically (temp file + rename) with mode 0600, so a
/// crash never leaves half a key and no other user can read it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = || -> std::io::Result<()> {
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io { path: path.to_owned(), source }
    })
}

/// What the first certificate of a chain (the agent's own) says.
fn leaf(chain_pem: &str) -> Result<CertInfo> {
    let bad = |e: meshfleet_pki::Error| Error::BadCertificate(e.to_string());
    let certs = meshfleet_pki::pem::certs_from_pem(chain_pem.as_bytes()).map_err(bad)?;
    inspect(&certs[0]).map_err(bad)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Identity {
        Identity { org_id: "o".into(), cluster_id: "c".into(), chain_pem: "chain".into(), key_pem: "SECRET-KEY".to_string().into(), not_after_unix_ms: 42 }
    }

    #[test]
    fn save_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.json");
        sample().save(&path).unwrap();
        sample().save(&path).unwrap(); // overwrite works
        let back = Identity::load(&path).unwrap();
        assert_eq!((back.org_id.as_str(), back.cluster_id.as_str(), back.not_after_unix_ms), ("o", "c", 42));
        assert_eq!(back.key_pem.expose_secret(), "SECRET-KEY");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left behind");
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert!(!format!("{:?}", sample()).contains("SECRET-KEY"));
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.json");
        std::fs::write(&path, "nope").unwrap();
        assert!(matches!(Identity::load(&path), Err(Error::IdentityFormat { .. })));
    }
}
