//! A simulated cluster's mesh PKI, kept as a real cluster keeps it in its issuer Secret and
//! trust-bundle ConfigMap, and changed by the same commands with the same checks as the real
//! agent's (`meshfleet_agent::k8s::issuer`): rotate-issuer makes a real key and CSR here, has the
//! gateway sign it and checks the chain before adopting it (the bundle only grows); set-trust-bundle
//! replaces the bundle unless the current issuer would not verify under it. Saved next to the
//! agent's identity, so a restarted simulator's clusters still hold their issuers.

use std::path::Path;
use std::time::SystemTime;

use meshfleet_agent::k8s::certs::describe;
use meshfleet_agent::Reporter;
use meshfleet_agent_protocol::v1::CertificateInfo;
use meshfleet_pki::pem::merged_bundle;
use meshfleet_pki::verify::{check_issuer, TrustBundle};
use serde::{Deserialize, Serialize};

/// What a simulated cluster needs to reach the gateway (a rotate-issuer signs over its agent's
/// connection) and to report what a command changed.
#[derive(Clone)]
pub struct GatewayLink {
    pub reporter: Reporter,
    /// Where the cluster's PKI is saved (none: kept in memory only).
    pub state_path: Option<std::path::PathBuf>,
}

/// The issuer (certificate and key, PEM) and the bundle; empty until the service signs one.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshPki {
    issuer_pem: String,
    issuer_key_pem: String,
    bundle_pem: String,
    /// The anchor that signed the issuer (as the gateway said, and the chain check confirmed).
    issuer_anchor: String,
    /// The rotate-issuer command that wrote this issuer: a redelivered one does not sign again.
    rotated_by: String,
}

impl std::fmt::Debug for MeshPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the issuer key.
        f.debug_struct("MeshPki").field("issuer", &self.issuer_output()).field("bundle", &self.bundle_fingerprints()).finish_non_exhaustive()
    }
}

impl MeshPki {
    pub fn load(path: &Path) -> Option<MeshPki> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Saved with mode 0600: it holds the issuer's private key.
    pub fn save(&self, path: &Path) -> meshfleet_agent::Result<()> {
        meshfleet_agent::identity::write_private(path, &serde_json::to_vec_pretty(self).expect("serializes"))
    }

    /// Whether the service has signed an issuer for this cluster.
    pub fn is_managed(&self) -> bool {
        !self.issuer_pem.is_empty()
    }

    pub fn rotated_by(&self) -> &str {
        &self.rotated_by
    }

    /// The anchors and the issuer, as the agent reports them.
    pub fn certificates(&self) -> Vec<CertificateInfo> {
        let mut out = describe("trust-anchor", self.bundle_pem.as_bytes());
        out.extend(describe("issuer", self.issuer_pem.as_bytes()));
        out
    }

    pub fn bundle_fingerprints(&self) -> Vec<String> {
        TrustBundle::from_pem(self.bundle_pem.as_bytes()).map(|b| b.fingerprints()).unwrap_or_default()
    }

    /// The anchor the issuer chains to: the one every proxy's leaf chains to.
    pub fn issuer_anchor(&self) -> Option<String> {
        Some(self.issuer_anchor.clone()).filter(|a| !a.is_empty())
    }

    /// rotate-issuer: a key and CSR made here, signed by the gateway for command `id`, checked
    /// against the bundle grown by what the gateway sent. Returns the new PKI and the command's
    /// output.
    pub async fn rotate_issuer(&self, link: &GatewayLink, id: &str) -> Result<(MeshPki, serde_json::Value), String> {
        let (key, csr) = meshfleet_agent::identity::new_key_and_csr().map_err(|e| e.to_string())?;
        let signed = link.reporter.sign_issuer(id, csr).await.map_err(|e| format!("the service did not sign the issuer: {e}"))?;
        let next = MeshPki {
            issuer_pem: signed.issuer_pem,
            issuer_key_pem: key.serialize_pem(),
            bundle_pem: merged_bundle(&[&self.bundle_pem, &signed.trust_bundle_pem]),
            issuer_anchor: signed.anchor_fingerprint,
            rotated_by: id.to_owned(),
        };
        next.check(&next.bundle_pem).map_err(|e| format!("the signed issuer is unusable: {e}"))?;
        let anchor = TrustBundle::from_pem(signed.trust_bundle_pem.as_bytes()).ok().filter(|b| b.fingerprints().contains(&next.issuer_anchor));
        if anchor.is_none() {
            return Err(format!("the gateway named anchor {} but did not send it", next.issuer_anchor));
        }
        let output = next.issuer_output();
        Ok((next, output))
    }

    /// rotate-issuer's output, as the real agent's: the issuer, its anchor, its expiry.
    pub fn issuer_output(&self) -> serde_json::Value {
        let issuer = describe("issuer", self.issuer_pem.as_bytes()).into_iter().next().unwrap_or_default();
        serde_json::json!({
            "issuer_fingerprint": issuer.sha256_fingerprint,
            "anchor_fingerprint": self.issuer_anchor(),
            "not_after_unix_ms": issuer.not_after_unix_ms,
        })
    }

    /// set-trust-bundle: the new bundle, refused unless the current issuer verifies under it
    /// (an anchor leaves only after the issuer moved off it).
    pub fn set_trust_bundle(&self, bundle_pem: &str) -> Result<MeshPki, String> {
        if !self.is_managed() {
            return Err("refused: this cluster has no issuer signed by the service yet (send rotate-issuer first)".into());
        }
        self.check(bundle_pem).map_err(|e| format!("refused: the current issuer would not verify under this bundle: {e}"))?;
        Ok(MeshPki { bundle_pem: merged_bundle(&[bundle_pem]), ..self.clone() })
    }

    fn check(&self, bundle_pem: &str) -> Result<(), String> {
        let bundle = TrustBundle::from_pem(bundle_pem.as_bytes()).map_err(|e| format!("the bundle is unusable: {e}"))?;
        check_issuer(self.issuer_pem.as_bytes(), self.issuer_key_pem.as_bytes(), &bundle, SystemTime::now()).map(|_| ()).map_err(|e| e.to_string())
    }
}
