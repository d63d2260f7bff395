//! Minting: keys, trust anchors, issuers (intermediate CAs) and leaves. Every certificate gets a
//! random serial; callers choose the validity, names and where (if anywhere) keys are kept.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::pem::{cert_to_pem, key_from_pem};
use crate::spiffe::WorkloadId;
use crate::{unix, Error, Result};

/// How far validity starts in the past by default, so a peer whose clock is slightly behind
/// still accepts a certificate minted a moment ago.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// A new ECDSA P-256 key: what proxies, the controller and agents use.
pub fn new_key() -> Result<KeyPair> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// A CA certificate with its key, as PEM (what issuer files, the service's store and test
/// fixtures hold).
pub struct CaMaterial {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The key stays out of logs and panic messages.
impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl CaMaterial {
    /// A CA kept as PEM; the key must be the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert_der = crate::pem::certs_from_pem(cert_pem.as_bytes())?.swap_remove(0);
        let key = key_from_pem(key_pem.as_bytes())?;
        if key.subject_public_key_info() != crate::inspect::inspect(&cert_der)?.spki {
            return Err(Error::Key("the key is not the certificate's".into()));
        }
        Ok(Self { cert_der, cert_pem: cert_pem.to_owned(), key_pem: key_pem.to_owned() })
    }

    /// The CA as a signer of certificates.
    pub fn signer(&self) -> Result<Issuer<'static, KeyPair>> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, key_from_pem(self.key_pem.as_bytes())?)?)
    }
}

/// What a CA certificate says besides its key.
#[derive(Clone, Debug)]
pub struct CaProfile<'a> {
    pub common_name: &'a str,
    pub organization: Option<&'a str>,
    /// How many CAs may follow this one in a chain; `None` for no limit.
    pub path_len: Option<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl<'a> CaProfile<'a> {
    /// Valid from `BACKDATE` ago for `lifetime`, no organization, no path length limit.
    pub fn new(common_name: &'a str, lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Self { common_name, organization: None, path_len: None, not_before: now - BACKDATE, not_after: now + lifetime }
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.common_name);
        if let Some(o) = self.organization {
            dn.push(DnType::OrganizationName, o);
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(self.path_len.map_or(BasicConstraints::Unconstrained, BasicConstraints::Constrained));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = odt(self.not_before);
        params.not_after = odt(self.not_after);
        params.serial_number = Some(random_serial().0);
        params
    }
}

/// A self-signed trust anchor.
pub fn new_anchor(profile: &CaProfile<'_>) -> Result<CaMaterial> {
    let key = new_key()?;
    let cert = profile.params().self_signed(&key)?;
    Ok(CaMaterial { cert_pem: cert.pem(), cert_der: cert.der().clone(), key_pem: key.serialize_pem() })
}

/// An intermediate CA (say, a cluster's issuer) signed by `parent`.
pub fn new_issuer(parent: &CaMaterial, profile: &CaProfile<'_>) -> Result<CaMaterial> {
    let key = new_key()?;
    let cert = profile.params().signed_by(&key, &parent.signer()?)?;
    Ok(CaMaterial { cert_pem: cert.pem(), cert_der: cert.der().clone(), key_pem: key.serialize_pem() })
}

/// A CA certificate for a key held elsewhere (a cluster's issuer, whose key never leaves the
/// cluster: `public_key` comes from a checked CSR), signed by `parent`.
pub fn sign_ca(parent: &Issuer<'_, impl rcgen::SigningKey>, public_key: &impl PublicKeyData, profile: &CaProfile<'_>) -> Result<CertificateDer<'static>> {
    Ok(profile.params().signed_by(public_key, parent)?.der().clone())
}

/// Which end of a TLS connection a leaf may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// Mesh workloads are both: a proxy dials out and accepts with the same leaf.
    Both,
}

/// What a leaf certificate says besides its key.
#[derive(Clone, Debug)]
pub struct LeafProfile {
    /// Empty for a leaf named by its SANs only.
    pub common_name: String,
    /// URI SANs (SPIFFE ids).
    pub uris: Vec<String>,
    /// DNS names and IP addresses a client dials (an entry that parses as an IP is one).
    pub hosts: Vec<String>,
    pub usage: Usage,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl LeafProfile {
    /// A mesh workload's leaf: its SPIFFE id as subject and URI SAN, usable at both ends of
    /// mTLS, valid from `BACKDATE` ago.
    pub fn workload(id: &WorkloadId, not_after: SystemTime) -> Self {
        Self {
            common_name: id.to_string(),
            uris: vec![id.to_string()],
            hosts: Vec::new(),
            usage: Usage::Both,
            not_before: SystemTime::now() - BACKDATE,
            not_after,
        }
    }
}

/// A signed leaf and the serial it was given.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    /// Hex, as `inspect` reads it back.
    pub serial_hex: String,
}

impl Leaf {
    pub fn pem(&self) -> String {
        cert_to_pem(&self.der)
    }
}

/// A leaf for `public_key` (from a checked CSR, or a key made here), signed by `issuer`.
pub fn issue_leaf(issuer: &Issuer<'_, impl rcgen::SigningKey>, public_key: &impl PublicKeyData, profile: &LeafProfile) -> Result<Leaf> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if !profile.common_name.is_empty() {
        dn.push(DnType::CommonName, profile.common_name.as_str());
    }
    params.distinguished_name = dn;
    for uri in &profile.uris {
        params.subject_alt_names.push(SanType::URI(rcgen::string::Ia5String::try_from(uri.as_str())?));
    }
    for host in &profile.hosts {
        params.subject_alt_names.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(rcgen::string::Ia5String::try_from(host.as_str())?),
        });
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match profile.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Both => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = odt(profile.not_before);
    params.not_after = odt(profile.not_after);
    let (serial, serial_hex) = random_serial();
    params.serial_number = Some(serial);
    Ok(Leaf { der: params.signed_by(public_key, issuer)?.der().clone(), serial_hex })
}

fn odt(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix(t)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    // Positive (RFC 5280) and without a leading zero byte, so the DER encoding keeps all 16
    // bytes and the hex matches what `inspect` reads back.
    bytes[0] = (bytes[0] & 0x7f).max(1);
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::inspect;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn leaf_carries_identity_and_chains_by_name() {
        let anchor = new_anchor(&CaProfile::new("anchor", HOUR)).unwrap();
        let issuer = new_issuer(&anchor, &CaProfile::new("issuer", HOUR)).unwrap();
        let id = WorkloadId::new("td", "ns1", "sa1").unwrap();
        let leaf = issue_leaf(&issuer.signer().unwrap(), &new_key().unwrap(), &LeafProfile::workload(&id, SystemTime::now() + HOUR)).unwrap();
        let info = inspect(&leaf.der).unwrap();
        assert_eq!(info.spiffe_id(), Some("spiffe://td/ns/ns1/sa/sa1"));
        assert_eq!(info.subject, "CN=spiffe://td/ns/ns1/sa/sa1");
        assert_eq!(info.issuer, inspect(&issuer.cert_der).unwrap().subject);
        assert_eq!(inspect(&issuer.cert_der).unwrap().issuer, inspect(&anchor.cert_der).unwrap().subject);
        assert!(!info.is_ca);
        assert_eq!(crate::pem::certs_from_pem(leaf.pem().as_bytes()).unwrap()[0], leaf.der);
    }

    #[test]
    fn ca_profile_sets_organization_and_path_length() {
        let mut profile = CaProfile::new("gateway CA", HOUR);
        profile.organization = Some("Meshfleet");
        profile.path_len = Some(0);
        let ca = new_anchor(&profile).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&ca.cert_der).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert_eq!(inspect(&ca.cert_der).unwrap().subject, "CN=gateway CA, O=Meshfleet");
    }

    #[test]
    fn ca_material_round_trips_through_pem_and_refuses_a_foreign_key() {
        let a = new_anchor(&CaProfile::new("a", HOUR)).unwrap();
        let b = new_anchor(&CaProfile::new("b", HOUR)).unwrap();
        let back = CaMaterial::from_pem(&a.cert_pem, &a.key_pem).unwrap();
        assert_eq!(back.cert_der, a.cert_der);
        assert!(back.signer().is_ok());
        assert!(matches!(CaMaterial::from_pem(&a.cert_pem, &b.key_pem), Err(Error::Key(_))));
    }

    #[test]
    fn serials_are_random_and_read_back_whole() {
        let anchor = new_anchor(&CaProfile::new("anchor", HOUR)).unwrap();
        let signer = anchor.signer().unwrap();
        let key = new_key().unwrap();
        let profile = LeafProfile::workload(&WorkloadId::new("td", "a", "b").unwrap(), SystemTime::now() + HOUR);
        let (one, two) = (issue_leaf(&signer, &key, &profile).unwrap(), issue_leaf(&signer, &key, &profile).unwrap());
        assert_ne!(one.serial_hex, two.serial_hex);
        assert_eq!(one.serial_hex.len(), 32);
        assert_eq!(inspect(&one.der).unwrap().serial_hex, one.serial_hex);
    }
}
