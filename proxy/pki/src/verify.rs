//! Chain verification exactly as proxies verify peers: webpki (through rustls) against a trust
//! bundle, then the SPIFFE id, which webpki does not match. Also the check an issuer must pass
//! before a controller signs with it, so whoever mints issuers can run the same check first.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::{CertificateError, RootCertStore};

use crate::inspect::{inspect, CertInfo};
use crate::mint::{issue_leaf, LeafProfile};
use crate::pem::{certs_from_pem, fingerprint, key_from_pem};
use crate::spiffe::WorkloadId;
use crate::{unix, Error, Result};

/// One or more trust anchors; more than one while an anchor rotates.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    anchors: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    version: String,
}

impl TrustBundle {
    pub fn new(anchors: Vec<CertificateDer<'static>>) -> Result<Self> {
        if anchors.is_empty() {
            return Err(Error::EmptyBundle);
        }
        let mut roots = RootCertStore::empty();
        let mut all = Vec::new();
        for a in &anchors {
            if !inspect(a)?.is_ca {
                return Err(Error::Anchor("not a CA certificate".into()));
            }
            roots.add(a.clone()).map_err(|e| Error::Anchor(e.to_string()))?;
            all.extend_from_slice(a);
        }
        Ok(Self { version: fingerprint(&all), anchors, roots: Arc::new(roots) })
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        Self::new(certs_from_pem(pem)?)
    }

    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// Hex SHA-256 over all anchors: changes exactly when the bundle does.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.anchors.iter().map(|a| fingerprint(a)).collect()
    }

    /// The anchor `end_entity` chains to through `intermediates` at `now`, if any: which of
    /// several anchors a certificate depends on while they rotate.
    pub fn anchor_of(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], now: UnixTime) -> Option<&CertificateDer<'static>> {
        self.anchors.iter().find(|a| {
            let mut one = RootCertStore::empty();
            one.add((*a).clone()).is_ok() && verify_chain(end_entity, intermediates, &one, now).is_ok()
        })
    }
}

/// Checks `end_entity` chains to `roots` through `intermediates` at `now`, for TLS server use.
pub fn verify_chain(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], roots: &RootCertStore, now: UnixTime) -> Result<(), rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, roots, intermediates, now, algs.all)
}

/// A mesh peer: its chain must verify, and when the caller knows whom it dials, the leaf's
/// SPIFFE id must be `expected`. DNS names are never looked at: mesh identities are URIs.
pub fn verify_peer(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
    expected: Option<&str>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    verify_chain(end_entity, intermediates, roots, now)?;
    if let Some(expected) = expected {
        let info = inspect(end_entity).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if info.spiffe_id() != Some(expected) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        }
    }
    Ok(())
}

/// Why an issuer was refused.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("issuer certificate or key is invalid: {0}")]
    Parse(#[source] Error),
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
    Sign(#[source] Error),
}

impl IssuerError {
    /// A short stable reason, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
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

/// An issuer that passed `check_issuer`: the signer, the chain to send with each leaf (issuer
/// first), and what the issuer certificate says.
pub struct AcceptedIssuer {
    pub signer: Issuer<'static, KeyPair>,
    pub chain: Vec<CertificateDer<'static>>,
    pub info: CertInfo,
}

/// Decides whether an issuer (certificate chain and key, PEM) may sign leaves for peers that
/// trust `bundle`: the key must match, the certificate must be a current CA, and a leaf it signs
/// must verify exactly as a proxy verifies a peer.
pub fn check_issuer(cert_pem: &[u8], key_pem: &[u8], bundle: &TrustBundle, now: SystemTime) -> Result<AcceptedIssuer, IssuerError> {
    let chain = certs_from_pem(cert_pem).map_err(IssuerError::Parse)?;
    let key = key_from_pem(key_pem).map_err(IssuerError::Parse)?;
    let info = inspect(&chain[0]).map_err(IssuerError::Parse)?;
    if key.subject_public_key_info() != info.spki {
        return Err(IssuerError::KeyMismatch);
    }
    if !info.is_ca {
        return Err(IssuerError::NotCa);
    }
    if info.expired_at(now) {
        return Err(IssuerError::Expired(info.not_after_unix));
    }
    if info.not_before_unix > unix(now) {
        return Err(IssuerError::NotYetValid(info.not_before_unix));
    }
    let signer = Issuer::from_ca_cert_der(&chain[0], key).map_err(|e| IssuerError::Sign(e.into()))?;
    // A probe leaf verified the way a proxy verifies peers catches every way the pair can be
    // inconsistent (wrong anchor, path length, key usage), not just the ones listed above.
    let probe_key = crate::mint::new_key().map_err(IssuerError::Sign)?;
    let probe_id = WorkloadId::new("probe.invalid", "probe", "probe").map_err(IssuerError::Sign)?;
    let probe = issue_leaf(&signer, &probe_key, &LeafProfile::workload(&probe_id, now + Duration::from_secs(60))).map_err(IssuerError::Sign)?;
    let at = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    verify_chain(&probe.der, &chain, bundle.roots(), at).map_err(|e| IssuerError::NotChained(e.to_string()))?;
    Ok(AcceptedIssuer { signer, chain, info })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mint::{new_anchor, new_issuer, CaMaterial, CaProfile};

    const HOUR: Duration = Duration::from_secs(3600);

    fn leaf(issuer: &CaMaterial, id: &str) -> CertificateDer<'static> {
        let id: WorkloadId = id.parse().unwrap();
        issue_leaf(&issuer.signer().unwrap(), &crate::mint::new_key().unwrap(), &LeafProfile::workload(&id, SystemTime::now() + HOUR)).unwrap().der
    }

    fn bundle(anchor: &CaMaterial) -> TrustBundle {
        TrustBundle::from_pem(anchor.cert_pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_leaf_verifies_through_its_issuer_and_by_its_spiffe_id() {
        let anchor = new_anchor(&CaProfile::new("anchor", HOUR)).unwrap();
        let issuer = new_issuer(&anchor, &CaProfile::new("issuer", HOUR)).unwrap();
        let leaf = leaf(&issuer, "spiffe://td/ns/web/sa/client");
        let roots = bundle(&anchor).roots().clone();
        let inter = [issuer.cert_der.clone()];
        verify_peer(&leaf, &inter, &roots, None, UnixTime::now()).unwrap();
        verify_peer(&leaf, &inter, &roots, Some("spiffe://td/ns/web/sa/client"), UnixTime::now()).unwrap();
        let other = verify_peer(&leaf, &inter, &roots, Some("spiffe://td/ns/web/sa/other"), UnixTime::now()).unwrap_err();
        assert_eq!(other, rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        // Without the intermediate there is no path to the anchor.
        assert!(verify_chain(&leaf, &[], &roots, UnixTime::now()).is_err());
    }

    #[test]
    fn anchor_of_names_the_anchor_a_leaf_chains_to_or_none() {
        let (a, b) = (new_anchor(&CaProfile::new("a", HOUR)).unwrap(), new_anchor(&CaProfile::new("b", HOUR)).unwrap());
        let issuer = new_issuer(&b, &CaProfile::new("issuer", HOUR)).unwrap();
        let leaf = leaf(&issuer, "spiffe://td/ns/web/sa/client");
        let both = TrustBundle::new(vec![a.cert_der.clone(), b.cert_der.clone()]).unwrap();
        let inter = [issuer.cert_der.clone()];
        assert_eq!(both.anchor_of(&leaf, &inter, UnixTime::now()), Some(&b.cert_der));
        assert_eq!(bundle(&a).anchor_of(&leaf, &inter, UnixTime::now()), None);
        assert_eq!(both.anchor_of(&leaf, &[], UnixTime::now()), None);
    }

    #[test]
    fn a_leaf_from_another_anchor_fails_verification() {
        let anchor = new_anchor(&CaProfile::new("anchor", HOUR)).unwrap();
        let foreign = new_anchor(&CaProfile::new("foreign", HOUR)).unwrap();
        let foreign_issuer = new_issuer(&foreign, &CaProfile::new("foreign issuer", HOUR)).unwrap();
        let leaf = leaf(&foreign_issuer, "spiffe://td/ns/web/sa/client");
        let err = verify_chain(&leaf, std::slice::from_ref(&foreign_issuer.cert_der), bundle(&anchor).roots(), UnixTime::now()).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn an_expired_leaf_fails_verification() {
        let anchor = new_anchor(&CaProfile::new("anchor", 4 * HOUR)).unwrap();
        let leaf = leaf(&anchor, "spiffe://td/ns/web/sa/client");
        let later = UnixTime::since_unix_epoch(Duration::from_secs(unix(SystemTime::now() + 2 * HOUR) as u64));
        let err = verify_chain(&leaf, &[], bundle(&anchor).roots(), later).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })), "{err:?}");
    }

    #[test]
    fn bundles_hold_cas_only_and_are_versioned_by_content() {
        assert!(matches!(TrustBundle::new(Vec::new()), Err(Error::EmptyBundle)));
        let anchor = new_anchor(&CaProfile::new("anchor", HOUR)).unwrap();
        let leaf = leaf(&anchor, "spiffe://td/ns/a/sa/b");
        assert!(matches!(TrustBundle::new(vec![leaf]), Err(Error::Anchor(_))));
        let other = new_anchor(&CaProfile::new("other", HOUR)).unwrap();
        let one = bundle(&anchor);
        let two = TrustBundle::new(vec![anchor.cert_der.clone(), other.cert_der.clone()]).unwrap();
        assert_ne!(one.version(), two.version());
        assert_eq!(one.version(), bundle(&anchor).version());
        assert_eq!(two.fingerprints().len(), 2);
    }

    #[test]
    fn issuers_are_checked_as_proxies_will_verify_their_leaves() {
        let anchor = new_anchor(&CaProfile::new("anchor", HOUR)).unwrap();
        let issuer = new_issuer(&anchor, &CaProfile::new("issuer", HOUR)).unwrap();
        let check =
            |i: &CaMaterial, key: &str, b: &CaMaterial, now| check_issuer(i.cert_pem.as_bytes(), key.as_bytes(), &bundle(b), now).err().map(|e| e.reason());
        assert_eq!(check(&issuer, &issuer.key_pem, &anchor, SystemTime::now()), None);
        let foreign = new_anchor(&CaProfile::new("foreign", HOUR)).unwrap();
        assert_eq!(check(&issuer, &issuer.key_pem, &foreign, SystemTime::now()), Some("not_chained"));
        assert_eq!(check(&issuer, &anchor.key_pem, &anchor, SystemTime::now()), Some("key_mismatch"));
        assert_eq!(check(&issuer, &issuer.key_pem, &anchor, SystemTime::now() + 2 * HOUR), Some("expired"));
        assert_eq!(check(&issuer, &issuer.key_pem, &anchor, SystemTime::now() - HOUR), Some("not_yet_valid"));
        assert_eq!(check(&issuer, "garbage", &anchor, SystemTime::now()), Some("parse"));
        // A CA below an intermediate with path length 0 is refused, with the chain sent whole.
        // (Webpki ignores constraints on the anchor itself: an anchor is only a name and a key.)
        let mut strict = CaProfile::new("strict issuer", HOUR);
        strict.path_len = Some(0);
        let strict = new_issuer(&anchor, &strict).unwrap();
        let below = new_issuer(&strict, &CaProfile::new("issuer below", HOUR)).unwrap();
        let chain = format!("{}{}", below.cert_pem, strict.cert_pem);
        let err = check_issuer(chain.as_bytes(), below.key_pem.as_bytes(), &bundle(&anchor), SystemTime::now()).err().unwrap();
        assert_eq!(err.reason(), "not_chained", "{err}");
        assert_eq!(check(&strict, &strict.key_pem, &anchor, SystemTime::now()), None);
        let accepted = check_issuer(issuer.cert_pem.as_bytes(), issuer.key_pem.as_bytes(), &bundle(&anchor), SystemTime::now()).ok().unwrap();
        assert_eq!(accepted.chain, vec![issuer.cert_der.clone()]);
        assert!(accepted.info.is_ca);
    }
}
