//! What a meshed pod's proxy trusts and presents, from its admin `/identity` JSON: the bundle's
//! anchor fingerprints, the anchor its leaf chains to and when the leaf expires. The answer
//! comes from inside the cluster's pods, so it is validated and bounded here and a bad one is
//! an error, never a panic and never half applied.

use meshfleet_agent_protocol::v1;
use serde::Deserialize;

/// Far more than any proxy answers (a few hundred bytes per anchor); larger is not parsed.
const MAX_LEN: usize = 64 * 1024;
/// More anchors than any rotation holds at once.
const MAX_ANCHORS: usize = 32;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyIdentity {
    /// Hex SHA-256 of each anchor of the bundle the proxy verifies peers with.
    pub bundle_fingerprints: Vec<String>,
    /// The bundle anchor the proxy's leaf chains to; empty without a leaf or when none does.
    pub leaf_anchor_fingerprint: String,
    /// 0 without a leaf.
    pub leaf_not_after_unix_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error("longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("more than {MAX_ANCHORS} anchors")]
    TooManyAnchors,
    #[error("not a hex SHA-256 fingerprint: {0:.80}")]
    Fingerprint(String),
    #[error("leaf expiry out of range: {0}")]
    Expiry(i64),
}

#[derive(Deserialize)]
struct Answer {
    bundle_fingerprints: Vec<String>,
    leaf: Option<Leaf>,
}

#[derive(Deserialize)]
struct Leaf {
    not_after_unix: i64,
    anchor_fingerprint: Option<String>,
}

impl ProxyIdentity {
    /// Parses the proxy's `/identity` answer; unknown fields are ignored.
    pub fn parse(text: &str) -> Result<ProxyIdentity, Malformed> {
        if text.len() > MAX_LEN {
            return Err(Malformed::TooLong);
        }
        let answer: Answer = serde_json::from_str(text)?;
        if answer.bundle_fingerprints.len() > MAX_ANCHORS {
            return Err(Malformed::TooManyAnchors);
        }
        let bundle_fingerprints = answer.bundle_fingerprints.into_iter().map(fingerprint).collect::<Result<_, _>>()?;
        let (leaf_anchor_fingerprint, leaf_not_after_unix_ms) = match answer.leaf {
            None => (String::new(), 0),
            Some(leaf) => {
                let ms = leaf.not_after_unix.checked_mul(1000).filter(|ms| *ms > 0).ok_or(Malformed::Expiry(leaf.not_after_unix))?;
                (leaf.anchor_fingerprint.map(fingerprint).transpose()?.unwrap_or_default(), ms)
            }
        };
        Ok(ProxyIdentity { bundle_fingerprints, leaf_anchor_fingerprint, leaf_not_after_unix_ms })
    }

    /// The identity a reported pod carries.
    pub fn of(pod: &v1::Pod) -> ProxyIdentity {
        ProxyIdentity {
            bundle_fingerprints: pod.bundle_fingerprints.clone(),
            leaf_anchor_fingerprint: pod.leaf_anchor_fingerprint.clone(),
            leaf_not_after_unix_ms: pod.leaf_not_after_unix_ms,
        }
    }

    /// Sets the pod's fields to this identity; true when that changed them.
    pub fn write_to(self, pod: &mut v1::Pod) -> bool {
        if ProxyIdentity::of(pod) == self {
            return false;
        }
        pod.bundle_fingerprints = self.bundle_fingerprints;
        pod.leaf_anchor_fingerprint = self.leaf_anchor_fingerprint;
        pod.leaf_not_after_unix_ms = self.leaf_not_after_unix_ms;
        true
    }
}

/// Lowercase, as `meshfleet_pki::pem::fingerprint` writes it and the certificates list holds it.
fn fingerprint(s: String) -> Result<String, Malformed> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(Malformed::Fingerprint(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "5f1d4c2e0b9a8877665544332211ffeeddccbbaa99887766554433221100aabb";
    const B: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn answer(leaf: &str) -> String {
        format!(
            r#"{{"identity":"spiffe://cluster.local/ns/shop/sa/web","not_after_unix":1700086400,"issuer":"CN=x",
                "trust_bundle":{{"version":3,"anchors":["{A}","{B}"]}},"bundle_fingerprints":["{A}","{B}"],"leaf":{leaf}}}"#
        )
    }

    #[test]
    fn a_proxy_with_a_leaf_reports_its_bundle_anchor_and_expiry() {
        let leaf =
            format!(r#"{{"not_before_unix":1700000000,"not_after_unix":1700086400,"issuer_fingerprint":null,"anchor_fingerprint":"{}"}}"#, A.to_uppercase());
        let id = ProxyIdentity::parse(&answer(&leaf)).unwrap();
        assert_eq!(
            id,
            ProxyIdentity { bundle_fingerprints: vec![A.into(), B.into()], leaf_anchor_fingerprint: A.into(), leaf_not_after_unix_ms: 1_700_086_400_000 }
        );
    }

    #[test]
    fn a_proxy_without_a_leaf_reports_its_bundle_only() {
        let id = ProxyIdentity::parse(&answer("null")).unwrap();
        assert_eq!(id, ProxyIdentity { bundle_fingerprints: vec![A.into(), B.into()], ..Default::default() });
    }

    #[test]
    fn a_leaf_that_chains_to_no_bundle_anchor_has_no_anchor() {
        let leaf = r#"{"not_before_unix":1700000000,"not_after_unix":1700086400,"issuer_fingerprint":"ab","anchor_fingerprint":null}"#;
        let id = ProxyIdentity::parse(&answer(leaf)).unwrap();
        assert_eq!((id.leaf_anchor_fingerprint.as_str(), id.leaf_not_after_unix_ms), ("", 1_700_086_400_000));
    }

    #[test]
    fn garbage_and_hostile_answers_are_errors_not_panics() {
        let many = format!(r#"{{"bundle_fingerprints":[{}],"leaf":null}}"#, vec![format!("\"{A}\""); 33].join(","));
        let huge = format!(r#"{{"bundle_fingerprints":["{}"],"leaf":null}}"#, "a".repeat(MAX_LEN));
        for text in [
            "",
            "not json",
            "[]",
            "null",
            r#"{"leaf":null}"#,
            r#"{"bundle_fingerprints":"abc","leaf":null}"#,
            r#"{"bundle_fingerprints":["not hex"],"leaf":null}"#,
            r#"{"bundle_fingerprints":["é5f1d4c2e0b9a8877665544332211ffeeddccbbaa99887766554433221100aa"],"leaf":null}"#,
            &format!(r#"{{"bundle_fingerprints":["{A}"],"leaf":{{"not_after_unix":9223372036854775807,"anchor_fingerprint":null}}}}"#),
            &format!(r#"{{"bundle_fingerprints":["{A}"],"leaf":{{"not_after_unix":-5,"anchor_fingerprint":null}}}}"#),
            &format!(r#"{{"bundle_fingerprints":["{A}"],"leaf":{{"not_after_unix":1.5e300,"anchor_fingerprint":null}}}}"#),
            &format!(r#"{{"bundle_fingerprints":["{A}"],"leaf":{{"not_after_unix":1700086400,"anchor_fingerprint":"{A}0"}}}}"#),
            &format!(r#"{{"bundle_fingerprints":["{A}"],"leaf":"yes"}}"#),
            &many,
            &huge,
        ] {
            assert!(ProxyIdentity::parse(text).is_err(), "{:.200} was accepted", text);
        }
    }

    #[test]
    fn writing_the_same_identity_changes_nothing() {
        let mut pod = v1::Pod::default();
        let id = ProxyIdentity { bundle_fingerprints: vec![A.into()], leaf_anchor_fingerprint: A.into(), leaf_not_after_unix_ms: 5 };
        assert!(id.clone().write_to(&mut pod));
        assert_eq!(ProxyIdentity::of(&pod), id);
        assert!(!id.write_to(&mut pod));
    }
}
