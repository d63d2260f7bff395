//! `SignIssuer`: a cluster's mesh issuer, signed with its organization's active trust anchor for
//! a key the agent made in the cluster. Only for the calling agent's own cluster and
//! organization (both from its certificate), only while a rotate-issuer command is open for it,
//! and only what an issuer needs: the service sets every field of the certificate.

use meshfleet_agent_protocol::v1::{SignIssuerRequest, SignIssuerResponse};
use meshfleet_pki::mint::{self, CaMaterial, CaProfile};
use meshfleet_pki::pem::{cert_to_pem, fingerprint};

use super::pki::PeerAgent;
use super::{Error, Gateway, Result};
use crate::domain::audit::AuditEntry;
use crate::domain::trust::{AnchorState, SignedIssuer};
use crate::domain::CommandId;
use crate::store;

impl Gateway {
    #[tracing::instrument(name = "sign_issuer", skip_all, fields(org_id = %peer.org_id, cluster_id = %peer.cluster_id))]
    pub(super) async fn do_sign_issuer(&self, peer: PeerAgent, req: SignIssuerRequest) -> Result<SignIssuerResponse> {
        let state = &self.state;
        let now = state.clock.now_ms();
        let not_open = || Error::NoIssuerRotation(req.command_id.chars().take(64).collect());
        let command_id: CommandId = req.command_id.parse().map_err(|_| not_open())?;
        let mut tx = state.db.begin().await?;
        let command = store::commands::get(&mut tx, peer.org_id, peer.cluster_id, command_id).await?;
        if !command.is_some_and(|c| c.kind == "rotate-issuer" && c.is_open(now)) {
            return Err(not_open());
        }
        let trust_domain = store::trust::trust_domain(&mut tx, peer.org_id).await?;
        let public_key = meshfleet_pki::csr::check_issuer_request(&req.csr_der, &trust_domain)?;
        let (anchor, key_sealed) = store::trust::anchor_in(&mut tx, peer.org_id, AnchorState::Active).await?.ok_or(Error::NoAnchor)?;
        let key_pem = state.sealer.open(&key_sealed).map_err(|e| Error::Sign(meshfleet_pki::Error::Key(e.to_string())))?;
        let signer = CaMaterial::from_pem(&anchor.cert_pem, &String::from_utf8_lossy(&key_pem))?;

        let name = format!("meshfleet issuer {}", peer.cluster_id);
        let mut profile = CaProfile::new(&name, state.config.issuer_lifetime);
        profile.organization = Some(&trust_domain);
        profile.path_len = Some(0);
        profile.not_before = state.clock.now_system() - mint::BACKDATE;
        // Never beyond the anchor: a chain is only as valid as its shortest-lived link.
        let anchor_end = std::time::UNIX_EPOCH + std::time::Duration::from_millis(anchor.not_after.max(0) as u64);
        profile.not_after = (state.clock.now_system() + state.config.issuer_lifetime).min(anchor_end);
        let der = mint::sign_ca(&signer, &public_key, &profile)?;

        let issuer = SignedIssuer {
            cluster_id: peer.cluster_id,
            org_id: peer.org_id,
            command_id,
            fingerprint: fingerprint(&der),
            anchor_fingerprint: anchor.fingerprint.clone(),
            cert_pem: cert_to_pem(&der),
            not_before: meshfleet_pki::unix(profile.not_before) * 1000,
            not_after: meshfleet_pki::unix(profile.not_after) * 1000,
            signed_at: now,
        };
        store::trust::record_issuer(&mut tx, &issuer).await?;
        let details = serde_json::json!({
            "fingerprint": issuer.fingerprint, "anchor_fingerprint": issuer.anchor_fingerprint,
            "not_after": issuer.not_after, "command_id": command_id,
        });
        let by = format!("agent:{}", peer.cluster_id);
        store::audit::insert(&mut tx, &AuditEntry::by_service(peer.org_id, now, &by, "issuer.sign", ("cluster", peer.cluster_id.to_string()), details)).await?;
        let bundle: String = store::trust::anchors(&mut tx, peer.org_id).await?.into_iter().filter(|a| a.state.trusted()).map(|a| a.cert_pem).collect();
        tx.commit().await?;
        tracing::info!(issuer = %issuer.fingerprint, anchor = %issuer.anchor_fingerprint, "cluster issuer signed");
        Ok(SignIssuerResponse {
            issuer_pem: issuer.cert_pem,
            trust_bundle_pem: bundle,
            not_after_unix_ms: issuer.not_after,
            issuer_fingerprint: issuer.fingerprint,
            anchor_fingerprint: issuer.anchor_fingerprint,
        })
    }
}
