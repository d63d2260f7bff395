//! rotate-issuer: a new mesh issuer whose key is made here and never leaves the cluster. The
//! gateway signs the CSR with the organization's active anchor; the bundle is written before
//! the issuer, and only ever grows here (removing an anchor is a trust-anchor rotation's last
//! step), so no proxy meets a leaf its bundle does not trust.

use std::collections::BTreeMap;
use std::time::SystemTime;

use ::kube::api::{Api, PostParams};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use meshfleet_agent_protocol::v1::{CommandResult, CommandState};
use meshfleet_pki::pem::{fingerprint, merged_bundle, readable_certs};
use meshfleet_pki::verify::{check_issuer, TrustBundle};
use serde_json::json;

use super::commands::{done, Executor};
use super::config::{ISSUER_SECRET, TRUST_BUNDLE};
use super::conflict::retry_on_conflict;

/// The ConfigMap key the controller reads the bundle from, and the issuer Secret's keys.
pub const BUNDLE_KEY: &str = "ca-bundle.crt";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
/// On the issuer Secret: the rotate-issuer command that wrote it, so a redelivered command
/// does not sign and write a second issuer.
pub const ROTATED_BY: &str = "meshfleet.io/rotated-by";

impl Executor {
    pub(super) async fn rotate_issuer(&self, id: &str) -> Result<CommandResult, String> {
        let ns = &self.config.mesh_namespace;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let missing = |what: &str, e: ::kube::Error| format!("reading the {what} in {ns}: {e} (install the mesh first)");
        let secret = secrets.get(ISSUER_SECRET).await.map_err(|e| missing("issuer Secret", e))?;
        if let Some(done_before) = already_rotated(&secret, id) {
            return Ok(done_before);
        }
        let reporter = self.reporter.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or("the agent is not connected yet")?;

        let (key, csr) = crate::identity::new_key_and_csr().map_err(|e| e.to_string())?;
        let signed = reporter.sign_issuer(id, csr).await.map_err(|e| format!("the service did not sign the issuer: {e}"))?;

        let current = maps.get(TRUST_BUNDLE).await.map_err(|e| missing("trust bundle ConfigMap", e))?;
        let had: Vec<&str> = current.data.iter().flatten().filter(|(k, _)| k.ends_with(".crt") || k.ends_with(".pem")).map(|(_, v)| v.as_str()).collect();
        let bundle = merged_bundle(&[had.as_slice(), &[signed.trust_bundle_pem.as_str()]].concat());
        let key_pem = key.serialize_pem();
        // What the controller will check before it switches: refuse here rather than there.
        let trust = TrustBundle::from_pem(bundle.as_bytes()).map_err(|e| format!("the bundle is unusable: {e}"))?;
        check_issuer(signed.issuer_pem.as_bytes(), key_pem.as_bytes(), &trust, SystemTime::now()).map_err(|e| format!("the signed issuer is unusable: {e}"))?;

        retry_on_conflict("trust bundle", || async {
            let mut map = maps.get(TRUST_BUNDLE).await?;
            map.data = Some(BTreeMap::from([(BUNDLE_KEY.to_owned(), bundle.clone())]));
            maps.replace(TRUST_BUNDLE, &PostParams::default(), &map).await
        })
        .await
        .map_err(|e| format!("writing the trust bundle: {e}"))?;
        retry_on_conflict("issuer Secret", || async {
            let mut s = secrets.get(ISSUER_SECRET).await?;
            let data = s.data.get_or_insert_with(BTreeMap::new);
            data.insert(CERT_KEY.to_owned(), ByteString(signed.issuer_pem.clone().into_bytes()));
            data.insert(KEY_KEY.to_owned(), ByteString(key_pem.clone().into_bytes()));
            s.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(ROTATED_BY.to_owned(), id.to_owned());
            secrets.replace(ISSUER_SECRET, &PostParams::default(), &s).await
        })
        .await
        .map_err(|e| format!("writing the issuer Secret: {e}"))?;
        tracing::info!(command = id, issuer = %signed.issuer_fingerprint, anchor = %signed.anchor_fingerprint, "mesh issuer rotated");
        let output = json!({
            "issuer_fingerprint": signed.issuer_fingerprint,
            "anchor_fingerprint": signed.anchor_fingerprint,
            "not_after_unix_ms": signed.not_after_unix_ms,
        });
        Ok(done(CommandState::Succeeded, "issuer rotated", output))
    }
}

impl Executor {
    pub(super) async fn set_trust_bundle(&self, bundle_pem: &str) -> Result<CommandResult, String> {
        let wanted = TrustBundle::from_pem(bundle_pem.as_bytes()).map_err(|e| format!("the bundle is unusable: {e}"))?;
        let ns = &self.config.mesh_namespace;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        // The current issuer must still verify under the new bundle, or every proxy would
        // refuse its peers' next leaves: retiring an anchor comes after re-issuing.
        let secret = secrets.get(ISSUER_SECRET).await.map_err(|e| format!("reading the issuer Secret in {ns}: {e}"))?;
        let data = secret.data.unwrap_or_default();
        let (cert, key) = (data.get(CERT_KEY).map(|b| b.0.as_slice()).unwrap_or_default(), data.get(KEY_KEY).map(|b| b.0.as_slice()).unwrap_or_default());
        check_issuer(cert, key, &wanted, SystemTime::now()).map_err(|e| format!("refused: the current issuer would not verify under this bundle: {e}"))?;
        let pem = merged_bundle(&[bundle_pem]);
        let output = json!({ "bundle_fingerprints": wanted.fingerprints() });
        retry_on_conflict("trust bundle", || async {
            let mut map = maps.get(TRUST_BUNDLE).await?;
            if map.data.as_ref().and_then(|d| d.get(BUNDLE_KEY)) == Some(&pem) {
                return Ok(());
            }
            map.data = Some(BTreeMap::from([(BUNDLE_KEY.to_owned(), pem.clone())]));
            maps.replace(TRUST_BUNDLE, &PostParams::default(), &map).await.map(|_| ())
        })
        .await
        .map_err(|e| format!("writing the trust bundle: {e}"))?;
        tracing::info!(anchors = ?wanted.fingerprints(), "trust bundle set");
        Ok(done(CommandState::Succeeded, "trust bundle set", output))
    }
}

/// The result of this command when it already wrote the issuer (a redelivery after a restart).
fn already_rotated(secret: &Secret, id: &str) -> Option<CommandResult> {
    (secret.metadata.annotations.as_ref()?.get(ROTATED_BY)? == id).then_some(())?;
    let pem = secret.data.as_ref()?.get(CERT_KEY)?;
    let cert = readable_certs(&pem.0).into_iter().next()?;
    let not_after = meshfleet_pki::inspect::inspect(&cert).ok()?.not_after_unix * 1000;
    Some(done(CommandState::Succeeded, "issuer rotated", json!({ "issuer_fingerprint": fingerprint(&cert), "not_after_unix_ms": not_after })))
}
