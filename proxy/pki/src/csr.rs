//! Certificate signing requests: making one for a key, and checking one before anything is
//! signed for it. The CSR only proves possession of its key; whoever signs decides the subject
//! and SANs, so nothing else in it is used.

use rcgen::{CertificateParams, CertificateSigningRequestParams, KeyPair};
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_SIG_ED25519};
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey as ParsedKey;

pub use rcgen::PublicKey;

use crate::Result;

/// Why a CSR was refused; the message goes back to whoever sent it.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is not valid DER or its signature does not verify")]
    Malformed,
    #[error("weak or unsupported key: {0}; use ECDSA P-256/P-384 or Ed25519")]
    WeakKey(String),
}

/// A DER CSR for `key`, with no subject or extensions.
pub fn new_csr(key: &KeyPair) -> Result<Vec<u8>> {
    Ok(CertificateParams::default().serialize_request(key)?.der().to_vec())
}

/// The public key of a CSR, once its key is one we vouch for (ECDSA P-256/P-384 or Ed25519;
/// RSA of any size is refused, since everything Meshfleet makes is ECDSA P-256) and its
/// signature verifies.
pub fn check(der: &[u8]) -> Result<PublicKey, CsrError> {
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    // The key first: its message says what to use instead, the signature check's would not.
    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(ParsedKey::EC(_)) => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if [OID_EC_P256, OID_NIST_EC_P384].contains(&c) => {}
                other => return Err(CsrError::WeakKey(format!("elliptic curve {other:?}"))),
            }
        }
        Ok(ParsedKey::RSA(rsa)) => return Err(CsrError::WeakKey(format!("RSA with {} bits", rsa.key_size()))),
        _ if spki.algorithm.algorithm == OID_SIG_ED25519 => {}
        _ => return Err(CsrError::WeakKey(format!("algorithm {}", spki.algorithm.algorithm))),
    }
    csr.verify_signature().map_err(|_| CsrError::Malformed)?;
    let params = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der)).map_err(|_| CsrError::Malformed)?;
    Ok(params.public_key)
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

    #[test]
    fn garbage_and_tampered_csrs_are_malformed() {
        assert!(matches!(check(b"not a csr"), Err(CsrError::Malformed)));
        let (_, mut der) = csr_of(&rcgen::PKCS_ECDSA_P256_SHA256);
        // The last byte is inside the signature: the CSR still parses but no longer verifies.
        *der.last_mut().unwrap() ^= 1;
        assert!(matches!(check(&der), Err(CsrError::Malformed)));
    }
}
