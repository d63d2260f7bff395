//! The gateway's PKI: the gateway CA (signs the server certificate agents pin) and the agent
//! CA (signs agent client certificates). Created on first start, stored in the database with
//! sealed keys so every replica serves the same ones. Minting, CSR checks and reading
//! certificates are `meshfleet_pki`'s; what is here is which certificates and where they live.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshfleet_pki::inspect::inspect;
use meshfleet_pki::mint::{self, CaMaterial, CaProfile, LeafProfile, Usage};
use meshfleet_pki::{Issuer, KeyPair};
use secrecy::SecretString;

use super::Error;
use crate::db::Db;
use crate::domain::{ClusterId, OrgId};
use crate::secrets::Sealer;
use crate::store::{self, pki::PkiEntry};

const GATEWAY_CA: &str = "gateway-ca";
const AGENT_CA: &str = "agent-ca";
const SERVER: &str = "gateway-server";
const DAY_MS: i64 = 86_400_000;
const CA_LIFETIME_DAYS: i64 = 3650;
const SERVER_LIFETIME_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("certificate: {0}")]
    Cert(#[from] meshfleet_pki::Error),
    #[error("stored key {0} cannot be unsealed: was the sealing key changed?")]
    Unseal(&'static str),
    #[error("stored certificate {0} is unreadable")]
    Corrupt(&'static str),
}

pub struct Pki {
    pub gateway_ca_pem: String,
    pub agent_ca_pem: String,
    agent_issuer: Issuer<'static, KeyPair>,
    /// The server certificate followed by the gateway CA.
    pub server_chain_pem: String,
    pub server_key_pem: SecretString,
}

/// A signed agent certificate.
pub struct Signed {
    pub chain_pem: String,
    pub serial: String,
    pub not_after_ms: i64,
}

/// The service keeps time in Unix milliseconds; certificates in `SystemTime`.
fn at_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

impl Pki {
    /// Loads the PKI, creating what is missing; re-issues the server certificate when it is
    /// within 30 days of expiry or does not cover `hostnames`.
    pub async fn load_or_create(db: &Db, sealer: &Sealer, hostnames: &[String], now: i64) -> Result<Pki, PkiError> {
        let mut conn = db.pool.acquire().await?;
        let gateway_ca = load_or_create_ca(&mut conn, sealer, GATEWAY_CA, "Meshfleet gateway CA", now).await?;
        let agent_ca = load_or_create_ca(&mut conn, sealer, AGENT_CA, "Meshfleet agent CA", now).await?;

        let stored = store::pki::get(&mut conn, SERVER).await?;
        let usable = stored.as_ref().and_then(|e| {
            let key = sealer.open(&e.key_sealed).ok()?;
            let fits = server_cert_fits(&e.cert_pem, hostnames, now)?;
            fits.then(|| (e.cert_pem.clone(), String::from_utf8(key).ok()))
        });
        let (server_pem, server_key) = match usable {
            Some((cert, Some(key))) => (cert, key),
            _ => {
                let key = mint::new_key()?;
                let profile = LeafProfile {
                    common_name: "Meshfleet gateway".into(),
                    uris: Vec::new(),
                    hosts: hostnames.to_vec(),
                    usage: Usage::Server,
                    not_before: at_ms(now - 3_600_000),
                    not_after: at_ms(now + SERVER_LIFETIME_DAYS * DAY_MS),
                };
                let cert = mint::issue_leaf(&gateway_ca.signer()?, &key, &profile)?;
                let entry = PkiEntry { cert_pem: cert.pem(), key_sealed: sealer.seal(key.serialize_pem().as_bytes()), created_at: now };
                if stored.is_some() {
                    store::pki::replace(&mut conn, SERVER, &entry).await?;
                    (entry.cert_pem, key.serialize_pem())
                } else {
                    let kept = store::pki::insert_or_get(&mut conn, SERVER, &entry).await?;
                    let key = String::from_utf8(sealer.open(&kept.key_sealed).map_err(|_| PkiError::Unseal(SERVER))?).map_err(|_| PkiError::Corrupt(SERVER))?;
                    (kept.cert_pem, key)
                }
            }
        };
        Ok(Pki {
            server_chain_pem: format!("{server_pem}{}", gateway_ca.cert_pem),
            server_key_pem: SecretString::from(server_key),
            agent_issuer: agent_ca.signer()?,
            gateway_ca_pem: gateway_ca.cert_pem,
            agent_ca_pem: agent_ca.cert_pem,
        })
    }

    /// Serves the gateway with a certificate and key from files (say, from a public CA or a
    /// secret manager), and has install manifests pin `ca` instead of the gateway CA.
    pub fn use_server_files(&mut self, cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) -> std::io::Result<()> {
        let read = |p: &std::path::Path| std::fs::read_to_string(p);
        let (chain, key, ca) = (read(cert)?, read(key)?, read(ca)?);
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what} is not PEM"));
        if !chain.contains("-----BEGIN CERTIFICATE-----") {
            return Err(invalid("the certificate"));
        }
        if !key.contains("PRIVATE KEY-----") {
            return Err(invalid("the key"));
        }
        if !ca.contains("-----BEGIN CERTIFICATE-----") {
            return Err(invalid("the CA bundle"));
        }
        self.server_chain_pem = chain;
        self.server_key_pem = SecretString::from(key);
        self.gateway_ca_pem = ca;
        Ok(())
    }

    /// Signs an agent's CSR once `meshfleet_pki::csr::check` accepts it: the identity comes from
    /// the caller (the bootstrap token or the current certificate), never from the CSR, whose
    /// subject and extensions are ignored.
    pub fn sign_agent_csr(&self, csr_der: &[u8], org: OrgId, cluster: ClusterId, ttl_ms: i64, now: i64) -> Result<Signed, Error> {
        let public_key = meshfleet_pki::csr::check(csr_der)?;
        let not_after_ms = now + ttl_ms;
        let profile = LeafProfile {
            common_name: format!("meshfleet-agent {cluster}"),
            uris: vec![meshfleet_agent_protocol::agent_spiffe_id(&org.to_string(), &cluster.to_string())],
            hosts: Vec::new(),
            usage: Usage::Client,
            not_before: at_ms(now - 60_000),
            not_after: at_ms(not_after_ms),
        };
        let cert = mint::issue_leaf(&self.agent_issuer, &public_key, &profile)?;
        Ok(Signed { chain_pem: format!("{}{}", cert.pem(), self.agent_ca_pem), serial: cert.serial_hex, not_after_ms })
    }
}

/// A CA of the gateway from the store, minted (valid from an hour ago for ten years, signing
/// leaves only) on first start.
async fn load_or_create_ca(conn: &mut store::Conn, sealer: &Sealer, name: &'static str, cn: &str, now: i64) -> Result<CaMaterial, PkiError> {
    let entry = match store::pki::get(conn, name).await? {
        Some(e) => e,
        None => {
            let profile = CaProfile {
                common_name: cn,
                organization: Some("Meshfleet"),
                path_len: Some(0),
                not_before: at_ms(now - 3_600_000),
                not_after: at_ms(now + CA_LIFETIME_DAYS * DAY_MS),
            };
            let ca = mint::new_anchor(&profile)?;
            let entry = PkiEntry { cert_pem: ca.cert_pem, key_sealed: sealer.seal(ca.key_pem.as_bytes()), created_at: now };
            store::pki::insert_or_get(conn, name, &entry).await?
        }
    };
    let key = String::from_utf8(sealer.open(&entry.key_sealed).map_err(|_| PkiError::Unseal(name))?).map_err(|_| PkiError::Corrupt(name))?;
    Ok(CaMaterial::from_pem(&entry.cert_pem, &key)?)
}

/// Some(true) when the stored server certificate is valid for 30 more days and names every host.
fn server_cert_fits(pem: &str, hostnames: &[String], now: i64) -> Option<bool> {
    let cert = inspect(meshfleet_pki::pem::certs_from_pem(pem.as_bytes()).ok()?.first()?).ok()?;
    let names: Vec<String> = cert.hosts().collect();
    Some(cert.not_after_unix * 1000 - now > 30 * DAY_MS && hostnames.iter().all(|h| names.contains(h)))
}

/// The agent behind a verified client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAgent {
    pub org_id: OrgId,
    pub cluster_id: ClusterId,
}

/// Client certificates already read, by their DER: an agent makes every call on its session's
/// connection with the same one, and reading an X.509 certificate costs far more than hashing
/// it. What a certificate names never changes; whether it is still valid is checked apart.
#[derive(Default)]
pub struct KnownPeers(Mutex<HashMap<Box<[u8]>, PeerWithSerial>>);

/// The agent a certificate names, and the certificate's serial.
type PeerWithSerial = (PeerAgent, String);

impl KnownPeers {
    /// Starts over past this many (a replica holds a few tens of thousands of agents).
    const LIMIT: usize = 50_000;

    /// `peer_agent`, remembered.
    pub fn peer_agent(&self, cert_der: &[u8]) -> Option<PeerWithSerial> {
        if let Some(known) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(cert_der) {
            return Some(known.clone());
        }
        let read = peer_agent(cert_der)?;
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= Self::LIMIT {
            known.clear();
        }
        known.insert(cert_der.into(), read.clone());
        Some(read)
    }
}

/// The org, cluster and serial of a client certificate the TLS layer already verified
/// against the agent CA.
pub fn peer_agent(cert_der: &[u8]) -> Option<PeerWithSerial> {
    let cert = inspect(cert_der).ok()?;
    let peer = cert.uris().find_map(|uri| {
        let (org, cluster) = meshfleet_agent_protocol::parse_agent_spiffe_id(uri)?;
        Some(PeerAgent { org_id: org.parse().ok()?, cluster_id: cluster.parse().ok()? })
    })?;
    Some((peer, cert.serial_hex))
}
