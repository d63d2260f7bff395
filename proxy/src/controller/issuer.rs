//! Loads an (issuer, trust bundle) pair from files and decides whether it may be used: the key
//! must match the certificate, the certificate must be a current CA, and a leaf it signs must
//! verify against the bundle exactly as proxies will verify it. A refused pair is never used.

use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, UnixTime};

use crate::certs::{self, CertInfo, WorkloadId};
use crate::tls::{self, TrustBundle};

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("trust bundle is invalid: {0}")]
    Bundle(#[source] tls::Error),
    #[error("issuer certificate or key is invalid: {0}")]
    Parse(#[from] certs::Error),
    #[error("issuer key does not match the issuer certificate")]
    KeyMismatch,
    #[error("issuer certificate is not a CA")]
    NotCa,
    #[error("issuer certificate expired at {0} (Unix seconds)")]
    Expired(i64),
    #[error("issuer certificate is not valid before {0} (Unix seconds)")]
    NotYetValid(i64),
    #[error("issuer does not chain to the trust bundle: {0}")]
    NotChained(String),
    #[error("cannot sign with the issuer: {0}")]
    Sign(#[from] rcgen::Error),
}

impl IssuerError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Bundle(_) => "bundle_invalid",
            Self::Parse(_) => "parse",
            Self::KeyMismatch => "key_mismatch",
            Self::NotCa => "not_ca",
            Self::Expired(_) => "expired",
            Self::NotYetValid(_) => "not_yet_valid",
            Self::NotChained(_) => "not_chained",
            Self::Sign(_) => "sign",
        }
    }
}

/// The issuer in use: signer, the chain sent with each leaf, and what its certificate says.
pub struct IssuerState {
    pub signer: Issuer<'static, KeyPair>,
    pub chain: Vec<CertificateDer<'static>>,
    pub info: CertInfo,
}

/// A consistent pair: the issuer chains to this bundle.
pub struct Pair {
    pub issuer: IssuerState,
    pub bundle: TrustBundle,
}

/// Raw file contents, so the watcher can tell a change from a re-read.
#[derive(Clone, PartialEq, Eq)]
pub struct Sources {
    pub issuer_cert: Vec<u8>,
    pub issuer_key: Vec<u8>,
    pub bundle: Vec<u8>,
}

pub fn validate(src: &Sources, now: SystemTime) -> Result<Pair, IssuerError> {
    let bundle = TrustBundle::from_pem(&src.bundle).map_err(IssuerError::Bundle)?;
    let chain = certs::certs_from_pem(&src.issuer_cert)?;
    let key = certs::key_from_pem(&src.issuer_key)?;
    let info = certs::inspect(&chain[0])?;
    if rcgen::PublicKeyData::subject_public_key_info(&key) != info.spki {
        return Err(IssuerError::KeyMismatch);
    }
    if !info.is_ca {
        return Err(IssuerError::NotCa);
    }
    if info.expired_at(now) {
        return Err(IssuerError::Expired(info.not_after_unix));
    }
    if info.not_before_unix > certs::unix(now) {
        return Err(IssuerError::NotYetValid(info.not_before_unix));
    }
    let signer = Issuer::from_ca_cert_der(&chain[0], key)?;
    // A probe leaf verified the way a proxy verifies peers catches every way the pair can be
    // inconsistent (wrong anchor, path length, key usage), not just the ones listed above.
    let probe_key = KeyPair::generate()?;
    let probe_id = WorkloadId::new("probe.invalid", "probe", "probe")?;
    let probe = certs::issue_leaf(&signer, &probe_key, &probe_id, now + Duration::from_secs(60))?;
    tls::verify_chain(&probe, &chain, bundle.roots(), UnixTime::since_unix_epoch(since_epoch(now))).map_err(|e| IssuerError::NotChained(e.to_string()))?;
    Ok(Pair { issuer: IssuerState { signer, chain, info }, bundle })
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{new_anchor, new_issuer};

    const HOUR: Duration = Duration::from_secs(3600);

    fn sources(issuer: &certs::CaMaterial, bundle: &str) -> Sources {
        Sources { issuer_cert: issuer.cert_pem.clone().into(), issuer_key: issuer.key_pem.clone().into(), bundle: bundle.into() }
    }

    #[test]
    fn issuer_chaining_to_bundle_is_accepted() {
        let anchor = new_anchor("a", HOUR).unwrap();
        let issuer = new_issuer(&anchor, "i", HOUR).unwrap();
        assert!(validate(&sources(&issuer, &anchor.cert_pem), SystemTime::now()).is_ok());
    }

    #[test]
    fn issuer_from_another_anchor_is_refused() {
        let anchor = new_anchor("a", HOUR).unwrap();
        let other = new_anchor("b", HOUR).unwrap();
        let issuer = new_issuer(&other, "i", HOUR).unwrap();
        let err = validate(&sources(&issuer, &anchor.cert_pem), SystemTime::now()).err().unwrap();
        assert_eq!(err.metric_label(), "not_chained", "{err}");
    }

    #[test]
    fn expired_issuer_and_mismatched_key_are_refused() {
        let anchor = new_anchor("a", HOUR).unwrap();
        let issuer = new_issuer(&anchor, "i", HOUR).unwrap();
        let later = SystemTime::now() + 2 * HOUR;
        assert_eq!(validate(&sources(&issuer, &anchor.cert_pem), later).err().unwrap().metric_label(), "expired");
        let other = new_issuer(&anchor, "j", HOUR).unwrap();
        let mut src = sources(&issuer, &anchor.cert_pem);
        src.issuer_key = other.key_pem.into();
        assert_eq!(validate(&src, SystemTime::now()).err().unwrap().metric_label(), "key_mismatch");
    }

    #[test]
    fn garbage_files_are_errors() {
        let src = Sources { issuer_cert: b"x".to_vec(), issuer_key: b"y".to_vec(), bundle: b"z".to_vec() };
        assert!(validate(&src, SystemTime::now()).is_err());
    }
}
