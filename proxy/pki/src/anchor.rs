//! Trust anchors an organization brings itself: an uploaded certificate and key are checked
//! here before anything trusts them, each refusal naming its reason.

use std::time::SystemTime;

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::mint::CaMaterial;
use crate::pem::{certs_from_pem, key_from_pem};
use crate::{unix, PublicKeyData};

/// Why an uploaded anchor was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("the certificate is not a single PEM certificate: {0}")]
    Certificate(String),
    #[error("the private key is not a PEM private key: {0}")]
    PrivateKey(String),
    #[error("the certificate is not a CA (basicConstraints cA is not set)")]
    NotCa,
    #[error("the certificate's key usage does not include keyCertSign")]
    NoKeyCertSign,
    #[error("the certificate is not self-signed: an anchor is a root")]
    NotSelfSigned,
    #[error("the certificate expired at {0} (Unix seconds)")]
    Expired(i64),
    #[error("the certificate is not valid before {0} (Unix seconds)")]
    NotYetValid(i64),
    #[error("weak or unsupported key: {0}; use ECDSA P-256/P-384 or Ed25519")]
    Algorithm(String),
    #[error("the private key is not the certificate's")]
    KeyMismatch,
}

impl AnchorError {
    /// A short stable reason, for API error types and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Certificate(_) => "malformed-certificate",
            Self::PrivateKey(_) => "malformed-key",
            Self::NotCa => "not-a-ca",
            Self::NoKeyCertSign => "no-key-cert-sign",
            Self::NotSelfSigned => "not-self-signed",
            Self::Expired(_) => "expired",
            Self::NotYetValid(_) => "not-yet-valid",
            Self::Algorithm(_) => "unsupported-algorithm",
            Self::KeyMismatch => "key-mismatch",
        }
    }

    /// Which of the two inputs is at fault: `certificate_pem` or `private_key_pem`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::PrivateKey(_) | Self::KeyMismatch => "private_key_pem",
            _ => "certificate_pem",
        }
    }
}

/// An uploaded anchor, once it is a current, self-signed CA that may sign certificates, with a
/// key we vouch for that matches it.
pub fn check_upload(cert_pem: &str, key_pem: &str, now: SystemTime) -> Result<CaMaterial, AnchorError> {
    let certs = certs_from_pem(cert_pem.as_bytes()).map_err(|e| AnchorError::Certificate(e.to_string()))?;
    if certs.len() != 1 {
        return Err(AnchorError::Certificate(format!("{} certificates; upload one anchor at a time", certs.len())));
    }
    let (_, cert) = X509Certificate::from_der(&certs[0]).map_err(|e| AnchorError::Certificate(e.to_string()))?;
    if !cert.is_ca() {
        return Err(AnchorError::NotCa);
    }
    match cert.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() => {}
        _ => return Err(AnchorError::NoKeyCertSign),
    }
    crate::csr::vouched_key(cert.public_key()).map_err(AnchorError::Algorithm)?;
    if cert.subject() != cert.issuer() || cert.verify_signature(None).is_err() {
        return Err(AnchorError::NotSelfSigned);
    }
    let (not_before, not_after) = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
    if unix(now) >= not_after {
        return Err(AnchorError::Expired(not_after));
    }
    if unix(now) < not_before {
        return Err(AnchorError::NotYetValid(not_before));
    }
    let key = key_from_pem(key_pem.as_bytes()).map_err(|e| AnchorError::PrivateKey(e.to_string()))?;
    if key.subject_public_key_info() != cert.public_key().raw {
        return Err(AnchorError::KeyMismatch);
    }
    CaMaterial::from_pem(cert_pem, key_pem).map_err(|e| AnchorError::Certificate(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mint::{issue_leaf, new_anchor, new_issuer, new_key, CaProfile, LeafProfile};
    use crate::spiffe::WorkloadId;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_generated_anchor_passes() {
        let a = new_anchor(&CaProfile::new("org anchor", DAY)).unwrap();
        let checked = check_upload(&a.cert_pem, &a.key_pem, SystemTime::now()).unwrap();
        assert_eq!(checked.cert_der, a.cert_der);
    }

    #[test]
    fn each_refusal_names_its_reason() {
        let now = SystemTime::now();
        let a = new_anchor(&CaProfile::new("a", DAY)).unwrap();
        let b = new_anchor(&CaProfile::new("b", DAY)).unwrap();
        let issuer = new_issuer(&a, &CaProfile::new("issuer", DAY)).unwrap();
        let key = new_key().unwrap();
        let id = WorkloadId::new("td", "ns", "sa").unwrap();
        let leaf = issue_leaf(&a.signer().unwrap(), &key, &LeafProfile::workload(&id, now + DAY)).unwrap();
        let reason = |cert: &str, key: &str, at: SystemTime| check_upload(cert, key, at).map(|_| ()).unwrap_err().reason();
        assert_eq!(reason("junk", &a.key_pem, now), "malformed-certificate");
        assert_eq!(reason(&format!("{}{}", a.cert_pem, b.cert_pem), &a.key_pem, now), "malformed-certificate");
        assert_eq!(reason(&a.cert_pem, "junk", now), "malformed-key");
        assert_eq!(reason(&a.cert_pem, &b.key_pem, now), "key-mismatch");
        assert_eq!(reason(&leaf.pem(), &key.serialize_pem(), now), "not-a-ca");
        assert_eq!(reason(&issuer.cert_pem, &issuer.key_pem, now), "not-self-signed");
        assert_eq!(reason(&a.cert_pem, &a.key_pem, now + 2 * DAY), "expired");
        assert_eq!(reason(&a.cert_pem, &a.key_pem, now - DAY), "not-yet-valid");
        assert_eq!(check_upload(&a.cert_pem, &b.key_pem, now).unwrap_err().field(), "private_key_pem");
    }

    #[test]
    fn rsa_and_key_usage_without_cert_sign_are_refused() {
        // An RSA key: ring cannot generate one, so a CA made with openssl.
        let rsa = include_str!("../testdata/rsa_ca.pem");
        let (cert, key) = rsa.split_at(rsa.find("-----BEGIN PRIVATE KEY-----").unwrap());
        assert_eq!(check_upload(cert, key, SystemTime::now()).unwrap_err().reason(), "unsupported-algorithm");
        let key = new_key().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(check_upload(&cert.pem(), &key.serialize_pem(), SystemTime::now()).unwrap_err().reason(), "no-key-cert-sign");
    }
}
