//! Decides whether an (issuer, trust bundle) pair, as a source read it, may be used, with
//! `meshfleet_pki::verify::check_issuer` (key matches, current CA, a leaf it signs verifies
//! against the bundle exactly as proxies will verify it). A refused pair is never used.

use std::time::SystemTime;

use meshfleet_pki::verify::{check_issuer, AcceptedIssuer, IssuerError as Refused, TrustBundle};

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0} is missing")]
    Missing(String),
    #[error("trust bundle is invalid: {0}")]
    Bundle(#[source] meshfleet_pki::Error),
    #[error(transparent)]
    Refused(#[from] Refused),
}

impl IssuerError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Missing(_) => "missing",
            Self::Bundle(_) => "bundle_invalid",
            Self::Refused(e) => e.reason(),
        }
    }
}

/// A consistent pair: the issuer chains to this bundle.
pub struct Pair {
    pub issuer: AcceptedIssuer,
    pub bundle: TrustBundle,
    /// Hex SHA-256 of the issuer certificate, announced to proxies so they renew when it changes.
    pub issuer_fingerprint: String,
}

/// Raw contents as a source read them, so the switch can tell a change from a re-read.
#[derive(Clone, PartialEq, Eq)]
pub struct Sources {
    pub issuer_cert: Vec<u8>,
    pub issuer_key: Vec<u8>,
    pub bundle: Vec<u8>,
}

pub fn validate(src: &Sources, now: SystemTime) -> Result<Pair, IssuerError> {
    let bundle = TrustBundle::from_pem(&src.bundle).map_err(IssuerError::Bundle)?;
    let issuer = check_issuer(&src.issuer_cert, &src.issuer_key, &bundle, now)?;
    let issuer_fingerprint = issuer.chain.first().map(|c| meshfleet_pki::pem::fingerprint(c)).unwrap_or_default();
    Ok(Pair { issuer, bundle, issuer_fingerprint })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshfleet_pki::mint::{self, CaMaterial, CaProfile};
    use std::time::Duration;

    const HOUR: Duration = Duration::from_secs(3600);

    fn new_anchor(name: &str, lifetime: Duration) -> Result<CaMaterial, meshfleet_pki::Error> {
        mint::new_anchor(&CaProfile::new(name, lifetime))
    }

    fn new_issuer(parent: &CaMaterial, name: &str, lifetime: Duration) -> Result<CaMaterial, meshfleet_pki::Error> {
        mint::new_issuer(parent, &CaProfile::new(name, lifetime))
    }

    fn sources(issuer: &CaMaterial, bundle: &str) -> Sources {
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
