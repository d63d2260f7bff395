//! Certificates of the mesh: PEM in and out, what a certificate says (identity, expiry, CA-ness),
//! and minting anchors, issuers and leaves with rcgen. Nothing here writes a key to disk; callers
//! decide where (if anywhere) key material goes. Malformed input is an `Error`, never a panic.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("invalid certificate: {0}")]
    X509(String),
    #[error("invalid private key: {0}")]
    Key(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid workload identity {0:?}")]
    Identity(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every certificate in a PEM blob (other PEM sections are skipped).
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| Error::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(Error::NoCertificate);
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM blob, as a signing key.
pub fn key_from_pem(pem: &[u8]) -> Result<KeyPair> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::Key(e.to_string()))?;
    KeyPair::try_from(&der).map_err(|e| Error::Key(e.to_string()))
}

pub fn cert_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Hex SHA-256 of a DER blob: how bundles and anchors are named in logs and `/identity`.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// What the mesh needs to know about a certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    pub is_ca: bool,
    pub uri_sans: Vec<String>,
    /// DER SubjectPublicKeyInfo, to match a certificate with its key.
    pub spki: Vec<u8>,
}

impl CertInfo {
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uri_sans.iter().map(String::as_str).find(|u| u.starts_with("spiffe://"))
    }

    pub fn expired_at(&self, now: SystemTime) -> bool {
        unix(now) >= self.not_after_unix
    }
}

pub fn inspect(der: &[u8]) -> Result<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::X509(e.to_string()))?;
    let uri_sans = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(Error::X509(e.to_string())),
    };
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        uri_sans,
        spki: cert.public_key().raw.to_vec(),
    })
}

pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
/// Only `parse()`/`new()` build one, so an invalid identity cannot reach a certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl WorkloadId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self> {
        let whole = || format!("{trust_domain}/{namespace}/{service_account}");
        for part in [trust_domain, namespace, service_account] {
            let ok = !part.is_empty() && part.len() <= 253 && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !ok {
                return Err(Error::Identity(whole()));
            }
        }
        Ok(Self { trust_domain: trust_domain.into(), namespace: namespace.into(), service_account: service_account.into() })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl FromStr for WorkloadId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Identity(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Self::new(td, ns, sa).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// A CA certificate with its key, as PEM (what the issuer files and test fixtures hold).
pub struct CaMaterial {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca_params(common_name: &str, lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = SystemTime::now();
    params.not_before = odt(now - Duration::from_secs(60));
    params.not_after = odt(now + lifetime);
    params.serial_number = Some(random_serial());
    params
}

/// A self-signed trust anchor.
pub fn new_anchor(common_name: &str, lifetime: Duration) -> Result<CaMaterial> {
    let key = KeyPair::generate()?;
    let cert = ca_params(common_name, lifetime).self_signed(&key)?;
    Ok(CaMaterial { cert_pem: cert.pem(), cert_der: cert.der().clone(), key_pem: key.serialize_pem() })
}

/// An intermediate (cluster issuer) signed by `parent`.
pub fn new_issuer(parent: &CaMaterial, common_name: &str, lifetime: Duration) -> Result<CaMaterial> {
    let parent_key = key_from_pem(parent.key_pem.as_bytes())?;
    let parent_issuer = Issuer::from_ca_cert_der(&parent.cert_der, parent_key)?;
    let key = KeyPair::generate()?;
    let cert = ca_params(common_name, lifetime).signed_by(&key, &parent_issuer)?;
    Ok(CaMaterial { cert_pem: cert.pem(), cert_der: cert.der().clone(), key_pem: key.serialize_pem() })
}

/// A leaf for `id`, valid for both ends of an mTLS connection. The validity is backdated a
/// minute so a peer whose clock is slightly behind still accepts it.
pub fn issue_leaf(issuer: &Issuer<'_, KeyPair>, public_key: &impl PublicKeyData, id: &WorkloadId, not_after: SystemTime) -> Result<CertificateDer<'static>> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.to_string());
    params.distinguished_name = dn;
    let uri = rcgen::string::Ia5String::try_from(id.to_string())?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = odt(SystemTime::now() - Duration::from_secs(60));
    params.not_after = odt(not_after);
    params.serial_number = Some(random_serial());
    Ok(params.signed_by(public_key, issuer)?.der().clone())
}

fn odt(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix(t)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // a positive INTEGER, as RFC 5280 requires
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_id_round_trips_and_rejects_junk() {
        let id: WorkloadId = "spiffe://cluster.local/ns/web/sa/frontend".parse().unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/web/sa/frontend");
        for bad in ["", "spiffe://", "spiffe://td/ns/a/sa", "http://td/ns/a/sa/b", "spiffe://td/ns/A/sa/b", "spiffe://td/ns/a/sa/b/c"] {
            assert!(bad.parse::<WorkloadId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_pem_is_an_error_not_a_panic() {
        assert!(certs_from_pem(b"").is_err());
        assert!(certs_from_pem(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
        assert!(key_from_pem(b"garbage").is_err());
        assert!(inspect(b"\x30\x03\x02\x01").is_err());
    }

    #[test]
    fn leaf_carries_identity_and_chains_by_name() {
        let anchor = new_anchor("anchor", Duration::from_secs(3600)).unwrap();
        let issuer_m = new_issuer(&anchor, "issuer", Duration::from_secs(3600)).unwrap();
        let issuer = Issuer::from_ca_cert_der(&issuer_m.cert_der, key_from_pem(issuer_m.key_pem.as_bytes()).unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let id = WorkloadId::new("td", "ns1", "sa1").unwrap();
        let leaf = issue_leaf(&issuer, &leaf_key, &id, SystemTime::now() + Duration::from_secs(60)).unwrap();
        let info = inspect(&leaf).unwrap();
        assert_eq!(info.spiffe_id(), Some("spiffe://td/ns/ns1/sa/sa1"));
        assert_eq!(info.issuer, inspect(&issuer_m.cert_der).unwrap().subject);
        assert!(!info.is_ca);
        assert_eq!(certs_from_pem(cert_to_pem(&leaf).as_bytes()).unwrap()[0], leaf);
    }
}
