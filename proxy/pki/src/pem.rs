//! PEM in and out, and the SHA-256 fingerprints bundles and anchors are named by.

use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Every certificate in a PEM blob (other PEM sections are skipped); none, or a malformed
/// section, is an error.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| Error::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(Error::NoCertificate);
    }
    Ok(certs)
}

/// The certificates in a PEM blob up to the first malformed section: for reporting on whatever
/// a cluster holds, where part of a bundle is better than none.
pub fn readable_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).map_while(Result::ok).collect()
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM blob, as a signing key.
pub fn key_from_pem(pem: &[u8]) -> Result<KeyPair> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::Key(e.to_string()))?;
    KeyPair::try_from(&der).map_err(|e| Error::Key(e.to_string()))
}

pub fn cert_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Every certificate of `pems`, each once (by fingerprint), in order, as one PEM bundle: how a
/// cluster's trust bundle grows without repeating an anchor (unreadable input is skipped).
pub fn merged_bundle(pems: &[&str]) -> String {
    let mut seen = std::collections::HashSet::new();
    pems.iter().flat_map(|p| readable_certs(p.as_bytes())).filter(|c| seen.insert(fingerprint(c))).map(|c| cert_to_pem(&c)).collect()
}

/// Hex SHA-256 of a DER blob.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merged_bundle_keeps_each_anchor_once_in_order() {
        use crate::mint::{new_anchor, CaProfile};
        let day = std::time::Duration::from_secs(86_400);
        let (a, b) = (new_anchor(&CaProfile::new("a", day)).unwrap(), new_anchor(&CaProfile::new("b", day)).unwrap());
        let both = merged_bundle(&[&a.cert_pem, &format!("{}{}", b.cert_pem, a.cert_pem)]);
        let fps: Vec<String> = readable_certs(both.as_bytes()).iter().map(|c| fingerprint(c)).collect();
        assert_eq!(fps, [fingerprint(&a.cert_der), fingerprint(&b.cert_der)]);
        assert_eq!(merged_bundle(&["not pem", &a.cert_pem]), a.cert_pem);
    }

    #[test]
    fn malformed_pem_is_an_error_not_a_panic() {
        assert!(matches!(certs_from_pem(b""), Err(Error::NoCertificate)));
        assert!(certs_from_pem(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
        assert!(key_from_pem(b"garbage").is_err());
    }

    #[test]
    fn pem_round_trips_and_a_bad_section_ends_the_readable_ones() {
        let key = KeyPair::generate().unwrap();
        let der = rcgen::CertificateParams::default().self_signed(&key).unwrap().der().clone();
        let pem = cert_to_pem(&der);
        assert_eq!(certs_from_pem(pem.as_bytes()).unwrap(), vec![der.clone()]);
        let mixed = format!("{}{pem}-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n{pem}", key.serialize_pem());
        assert_eq!(readable_certs(mixed.as_bytes()), vec![der.clone()]);
        assert_eq!(fingerprint(&der).len(), 64);
    }
}
