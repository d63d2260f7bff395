//! Certificate signing requests: making one for a key, and checking one before anything is
//! signed for it. The CSR only proves possession of its key; whoever signs decides the subject
//! and SANs, so nothing else in it is used.

use rcgen::{CertificateParams, CertificateSigningRequestParams, KeyPair};
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_SIG_ED25519};
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey as ParsedKey;
use x509_parser::x509::SubjectPublicKeyInfo;

pub use rcgen::PublicKey;

use crate::Result;

/// Why a CSR was refused; the message goes back to whoever sent it.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is not valid DER or its signature does not verify")]
    Malformed,
    #[error("weak or unsupported key: {0}; use ECDSA P-256/P-384 or Ed25519")]
    WeakKey(String),
    #[error("the CSR asks for a CA that may sign other CAs; an issuer's path length is 0")]
    PathLength,
    #[error("the CSR names {0:?}, outside the trust domain {1:?}")]
    TrustDomain(String, String),
}

/// A DER CSR for `key`, with no subject or extensions.
pub fn new_csr(key: &KeyPair) -> Result<Vec<u8>> {
    Ok(CertificateParams::default().serialize_request(key)?.der().to_vec())
}

/// The public key of a CSR, once its key is one we vouch for (ECDSA P-256/P-384 or Ed25519;
/// RSA of any size is refused, since everything Meshfleet makes is ECDSA P-256) and its
/// signature verifies.
pub fn check(der: &[u8]) -> Result<PublicKey, CsrError> {
    checked(der).map(|(_, public)| public)
}

/// `check`, returning the parsed CSR too.
fn checked(der: &[u8]) -> Result<(X509CertificationRequest<'_>, PublicKey), CsrError> {
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    // The key first: its message says what to use instead, the signature check's would not.
    vouched_key(&csr.certification_request_info.subject_pki).map_err(CsrError::WeakKey)?;
    // rcgen verifies the signature (`InvalidCertificationRequestSignature`): verifying it here
    // as well doubled the cost of the check, which is most of the cost of signing.
    let params = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der)).map_err(|_| CsrError::Malformed)?;
    Ok((csr, params.public_key))
}

/// Whether a public key is one we vouch for; the error names what it is instead.
pub(crate) fn vouched_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), String> {
    match spki.parsed() {
        Ok(ParsedKey::EC(_)) => match spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()) {
            Some(c) if [OID_EC_P256, OID_NIST_EC_P384].contains(&c) => Ok(()),
            other => Err(format!("elliptic curve {other:?}")),
        },
        Ok(ParsedKey::RSA(rsa)) => Err(format!("RSA with {} bits", rsa.key_size())),
        _ if spki.algorithm.algorithm == OID_SIG_ED25519 => Ok(()),
        _ => Err(format!("algorithm {}", spki.algorithm.algorithm)),
    }
}

/// `check` for a cluster's issuer: besides the key, what the CSR asks for must be something the
/// service would grant, so a tampered or confused agent is told rather than silently
/// overruled: no CA that may sign CAs (path length above 0, or unlimited), no SPIFFE id (or any
/// other URI) outside `trust_domain`. The service still sets every field of what it signs.
pub fn check_issuer_request(der: &[u8], trust_domain: &str) -> Result<PublicKey, CsrError> {
    let (csr, public) = checked(der)?;
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::BasicConstraints(bc) if bc.ca && bc.path_len_constraint != Some(0) => return Err(CsrError::PathLength),
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        let domain = uri.strip_prefix("spiffe://").map(|rest| rest.split('/').next().unwrap_or_default());
                        if domain != Some(trust_domain) {
                            return Err(CsrError::TrustDomain(uri.to_string(), trust_domain.to_owned()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    fn csr_of(alg: &'static rcgen::SignatureAlgorithm) -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate_for(alg).expect("key");
        let der = new_csr(&key).expect("CSR");
        (key, der)
    }

    #[test]
    fn the_keys_we_name_are_accepted_with_their_public_key() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let (key, der) = csr_of(alg);
            let public = check(&der).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(public.der_bytes(), key.der_bytes(), "{alg:?}");
        }
    }

    #[test]
    fn rsa_keys_are_refused_whatever_their_size() {
        // An RSA-2048 CSR made with openssl (ring cannot generate RSA keys).
        let pem = include_bytes!("../testdata/rsa2048.csr.pem");
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem).map(|d: CertificateSigningRequestDer| d.as_ref().to_vec()).expect("PEM CSR");
        let err = check(&der).expect_err("RSA-2048 accepted");
        assert_eq!(err.to_string(), "weak or unsupported key: RSA with 2048 bits; use ECDSA P-256/P-384 or Ed25519");
    }

    fn csr_asking_for(ca: Option<rcgen::BasicConstraints>, uri: Option<&str>) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        if let Some(bc) = ca {
            params.is_ca = rcgen::IsCa::Ca(bc);
        }
        if let Some(uri) = uri {
            params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().expect("URI")));
        }
        params.serialize_request(&key).expect("CSR").der().to_vec()
    }

    #[test]
    fn issuer_requests_for_more_than_an_issuer_are_refused() {
        use rcgen::BasicConstraints::{Constrained, Unconstrained};
        assert!(check_issuer_request(&csr_asking_for(None, None), "td").is_ok());
        assert!(check_issuer_request(&csr_asking_for(Some(Constrained(0)), Some("spiffe://td/ns/a")), "td").is_ok());
        assert!(matches!(check_issuer_request(&csr_asking_for(Some(Constrained(1)), None), "td"), Err(CsrError::PathLength)));
        assert!(matches!(check_issuer_request(&csr_asking_for(Some(Unconstrained), None), "td"), Err(CsrError::PathLength)));
        let other = check_issuer_request(&csr_asking_for(None, Some("spiffe://other/ns/a")), "td").expect_err("another trust domain");
        assert_eq!(other.to_string(), "the CSR names \"spiffe://other/ns/a\", outside the trust domain \"td\"");
        assert!(matches!(check_issuer_request(&csr_asking_for(None, Some("https://td/")), "td"), Err(CsrError::TrustDomain(..))));
        assert!(matches!(check_issuer_request(b"junk", "td"), Err(CsrError::Malformed)));
    }

    #[test]
    fn garbage_and_tampered_csrs_are_malformed() {
        assert!(matches!(check(b"not a csr"), Err(CsrError::Malformed)));
        let (_, mut der) = csr_of(&rcgen::PKCS_ECDSA_P256_SHA256);
        // The last byte is inside the signature: the CSR still parses but no longer verifies.
        *der.last_mut().unwrap() ^= 1;
        assert!(matches!(check(&der), Err(CsrError::Malformed)));
    }
}
