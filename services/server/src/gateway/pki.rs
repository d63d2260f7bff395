//! The gateway's PKI: the gateway CA (signs the server certificate agents pin) and the agent
//! CA (signs agent client certificates). Created on first start, stored in the database with
//! sealed keys so every replica serves the same ones. Agent CSRs are checked here.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use secrecy::SecretString;
use x509_parser::prelude::*;

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
    Cert(#[from] rcgen::Error),
    #[error("stored key {0} cannot be unsealed: was the sealing key changed?")]
    Unseal(&'static str),
    #[error("stored certificate {0} is unreadable")]
    Corrupt(&'static str),
}

/// Why a CSR was refused; the message goes back to the agent.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is not valid DER or its signature does not verify")]
    Malformed,
    #[error("weak or unsupported key: {0}; use ECDSA P-256/P-384 or Ed25519")]
    WeakKey(String),
    #[error("cannot sign: {0}")]
    Sign(String),
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

fn ms_to_time(ms: i64) -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(::time::OffsetDateTime::UNIX_EPOCH)
}

fn ca_params(name: &str, now: i64) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationName, "Meshfleet");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = ms_to_time(now - 3_600_000);
    params.not_after = ms_to_time(now + CA_LIFETIME_DAYS * DAY_MS);
    Ok(params)
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    // Positive and without a leading zero byte, so the DER encoding keeps all 16 bytes and the
    // hex matches what x509-parser reads back.
    bytes[0] = (bytes[0] & 0x7f).max(1);
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

impl Pki {
    /// Loads the PKI, creating what is missing; re-issues the server certificate when it is
    /// within 30 days of expiry or does not cover `hostnames`.
    pub async fn load_or_create(db: &Db, sealer: &Sealer, hostnames: &[String], now: i64) -> Result<Pki, PkiError> {
        let mut conn = db.pool.acquire().await?;
        let (gateway_ca_pem, gateway_ca_key) = load_or_create_ca(&mut conn, sealer, GATEWAY_CA, "Meshfleet gateway CA", now).await?;
        let (agent_ca_pem, agent_ca_key) = load_or_create_ca(&mut conn, sealer, AGENT_CA, "Meshfleet agent CA", now).await?;

        let stored = store::pki::get(&mut conn, SERVER).await?;
        let usable = stored.as_ref().and_then(|e| {
            let key = sealer.open(&e.key_sealed).ok()?;
            let fits = server_cert_fits(&e.cert_pem, hostnames, now)?;
            fits.then(|| (e.cert_pem.clone(), String::from_utf8(key).ok()))
        });
        let (server_pem, server_key) = match usable {
            Some((cert, Some(key))) => (cert, key),
            _ => {
                let gateway_issuer = Issuer::from_ca_cert_pem(&gateway_ca_pem, gateway_ca_key)?;
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(hostnames.to_vec())?;
                params.distinguished_name.push(DnType::CommonName, "Meshfleet gateway");
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                params.not_before = ms_to_time(now - 3_600_000);
                params.not_after = ms_to_time(now + SERVER_LIFETIME_DAYS * DAY_MS);
                params.serial_number = Some(random_serial().0);
                let cert = params.signed_by(&key, &gateway_issuer)?;
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
            server_chain_pem: format!("{server_pem}{gateway_ca_pem}"),
            server_key_pem: SecretString::from(server_key),
            agent_issuer: Issuer::from_ca_cert_pem(&agent_ca_pem, agent_ca_key)?,
            gateway_ca_pem,
            agent_ca_pem,
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

    /// Signs an agent's CSR: the identity comes from the caller (the bootstrap token or the
    /// current certificate), never from the CSR, whose subject and extensions are ignored.
    pub fn sign_agent_csr(&self, csr_der: &[u8], org: OrgId, cluster: ClusterId, ttl_ms: i64, now: i64) -> Result<Signed, CsrError> {
        check_csr_key(csr_der)?;
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der)).map_err(|_| CsrError::Malformed)?;
        let uri = meshfleet_agent_proto::agent_spiffe_id(&org.to_string(), &cluster.to_string());
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| CsrError::Sign(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, format!("meshfleet-agent {cluster}"));
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(|_| CsrError::Sign("bad SAN".into()))?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        params.not_before = ms_to_time(now - 60_000);
        let not_after_ms = now + ttl_ms;
        params.not_after = ms_to_time(not_after_ms);
        let cert = params.signed_by(&csr.public_key, &self.agent_issuer).map_err(|e| CsrError::Sign(e.to_string()))?;
        Ok(Signed { chain_pem: format!("{}{}", cert.pem(), self.agent_ca_pem), serial: serial_hex, not_after_ms })
    }
}

async fn load_or_create_ca(conn: &mut store::Conn, sealer: &Sealer, name: &'static str, cn: &str, now: i64) -> Result<(String, KeyPair), PkiError> {
    let entry = match store::pki::get(conn, name).await? {
        Some(e) => e,
        None => {
            let key = KeyPair::generate()?;
            let cert = ca_params(cn, now)?.self_signed(&key)?;
            let entry = PkiEntry { cert_pem: cert.pem(), key_sealed: sealer.seal(key.serialize_pem().as_bytes()), created_at: now };
            store::pki::insert_or_get(conn, name, &entry).await?
        }
    };
    let key = String::from_utf8(sealer.open(&entry.key_sealed).map_err(|_| PkiError::Unseal(name))?).map_err(|_| PkiError::Corrupt(name))?;
    Ok((entry.cert_pem, KeyPair::from_pem(&key)?))
}

/// Some(true) when the stored server certificate is valid for 30 more days and names every host.
fn server_cert_fits(pem: &str, hostnames: &[String], now: i64) -> Option<bool> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let expires = cert.validity().not_after.timestamp() * 1000;
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    GeneralName::IPAddress(ip) => ip_to_string(ip),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(expires - now > 30 * DAY_MS && hostnames.iter().all(|h| sans.contains(h)))
}

fn ip_to_string(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

/// Accepts ECDSA P-256/P-384 and Ed25519 keys, as the protocol states, and refuses RSA of any
/// size and everything else: agents generate ECDSA P-256, so an RSA key is not ours to vouch for.
pub fn check_csr_key(der: &[u8]) -> Result<(), CsrError> {
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    // The key first: its message says what to use instead, the signature check's would not.
    let spki = &csr.certification_request_info.subject_pki;
    let key = match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(_)) => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            let allowed = [x509_parser::oid_registry::OID_EC_P256, x509_parser::oid_registry::OID_NIST_EC_P384];
            match curve {
                Some(c) if allowed.contains(&c) => Ok(()),
                other => Err(CsrError::WeakKey(format!("elliptic curve {other:?}"))),
            }
        }
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => Err(CsrError::WeakKey(format!("RSA with {} bits", rsa.key_size()))),
        _ if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => Ok(()),
        _ => Err(CsrError::WeakKey(format!("algorithm {}", spki.algorithm.algorithm))),
    };
    key?;
    csr.verify_signature().map_err(|_| CsrError::Malformed)
}

/// The agent behind a verified client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAgent {
    pub org_id: OrgId,
    pub cluster_id: ClusterId,
}

/// The org, cluster and serial of a client certificate the TLS layer already verified
/// against the agent CA.
pub fn peer_agent(cert_der: &[u8]) -> Option<(PeerAgent, String)> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let serial = hex::encode(cert.raw_serial());
    let sans = cert.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => {
            let (org, cluster) = meshfleet_agent_proto::parse_agent_spiffe_id(uri)?;
            Some((PeerAgent { org_id: org.parse().ok()?, cluster_id: cluster.parse().ok()? }, serial.clone()))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_of(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).expect("key");
        let params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.serialize_request(&key).expect("CSR").der().to_vec()
    }

    #[test]
    fn the_keys_the_protocol_names_are_accepted() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            check_csr_key(&csr_of(alg)).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        }
    }

    #[test]
    fn rsa_keys_are_refused_whatever_their_size() {
        let pem = include_bytes!("../../tests/api/rsa2048.csr.pem");
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem).map(|d: CertificateSigningRequestDer| d.as_ref().to_vec()).expect("PEM CSR");
        let err = check_csr_key(&der).expect_err("RSA-2048 accepted");
        assert_eq!(err.to_string(), "weak or unsupported key: RSA with 2048 bits; use ECDSA P-256/P-384 or Ed25519");
    }
}
