//! What a certificate says: names, SANs, serial, validity and CA-ness, read with x509-parser.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use x509_parser::extensions::GeneralName;

use crate::{unix, Error, Result};

/// A subject alternative name this code reads; other kinds are skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    Uri(String),
    Dns(String),
    Ip(IpAddr),
}

#[derive(Clone, Debug)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Hex of the serial's DER content bytes, as `mint` reports the serials it assigns.
    pub serial_hex: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    pub is_ca: bool,
    /// In certificate order.
    pub sans: Vec<San>,
    /// DER SubjectPublicKeyInfo, to match a certificate with its key.
    pub spki: Vec<u8>,
}

impl CertInfo {
    pub fn uris(&self) -> impl Iterator<Item = &str> {
        self.sans.iter().filter_map(|s| match s {
            San::Uri(u) => Some(u.as_str()),
            _ => None,
        })
    }

    /// The names a TLS client may dial this certificate by: DNS names and IP addresses.
    pub fn hosts(&self) -> impl Iterator<Item = String> + '_ {
        self.sans.iter().filter_map(|s| match s {
            San::Dns(d) => Some(d.clone()),
            San::Ip(ip) => Some(ip.to_string()),
            San::Uri(_) => None,
        })
    }

    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris().find(|u| u.starts_with("spiffe://"))
    }

    pub fn expired_at(&self, now: SystemTime) -> bool {
        unix(now) >= self.not_after_unix
    }

    pub fn not_yet_valid_at(&self, now: SystemTime) -> bool {
        unix(now) < self.not_before_unix
    }

    /// Time left before expiry (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        Duration::from_secs((self.not_after_unix - unix(now)).max(0) as u64)
    }
}

pub fn inspect(der: &[u8]) -> Result<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::X509(e.to_string()))?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(San::Uri(u.to_string())),
                GeneralName::DNSName(d) => Some(San::Dns(d.to_string())),
                GeneralName::IPAddress(ip) => ip_addr(ip).map(San::Ip),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(Error::X509(e.to_string())),
    };
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial_hex: hex::encode(cert.raw_serial()),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        sans,
        spki: cert.public_key().raw.to_vec(),
    })
}

fn ip_addr(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mint::{issue_leaf, new_anchor, CaProfile, LeafProfile, Usage};
    use crate::KeyPair;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(inspect(b"\x30\x03\x02\x01").is_err());
        assert!(inspect(b"").is_err());
    }

    #[test]
    fn sans_are_read_in_order_with_their_kind() {
        let anchor = new_anchor(&CaProfile::new("anchor", HOUR)).unwrap();
        let now = SystemTime::now();
        let profile = LeafProfile {
            common_name: "server".into(),
            uris: vec!["spiffe://td/ns/a/sa/b".into()],
            hosts: vec!["example.test".into(), "127.0.0.1".into(), "::1".into()],
            usage: Usage::Server,
            not_before: now,
            not_after: now + HOUR,
        };
        let leaf = issue_leaf(&anchor.signer().unwrap(), &KeyPair::generate().unwrap(), &profile).unwrap();
        let info = inspect(&leaf.der).unwrap();
        assert_eq!(info.spiffe_id(), Some("spiffe://td/ns/a/sa/b"));
        assert_eq!(info.hosts().collect::<Vec<_>>(), ["example.test", "127.0.0.1", "::1"]);
        assert_eq!(info.sans.len(), 4);
        assert_eq!(info.serial_hex, leaf.serial_hex);
        assert!(!info.is_ca);
    }

    #[test]
    fn expiry_is_read_to_the_second() {
        let anchor = new_anchor(&CaProfile::new("anchor", HOUR)).unwrap();
        let info = inspect(&anchor.cert_der).unwrap();
        let now = SystemTime::now();
        assert!(info.is_ca);
        assert!(!info.expired_at(now) && !info.not_yet_valid_at(now));
        assert!(info.remaining(now) > HOUR - Duration::from_secs(5) && info.remaining(now) <= HOUR);
        assert!(info.expired_at(now + HOUR + Duration::from_secs(1)));
        assert_eq!(info.remaining(now + 2 * HOUR), Duration::ZERO);
        // Backdated a minute, so a peer whose clock is slightly behind still accepts it.
        assert!(!info.not_yet_valid_at(now - Duration::from_secs(30)));
        assert!(info.not_yet_valid_at(now - Duration::from_secs(120)));
    }
}
