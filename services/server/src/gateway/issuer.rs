//! `SignIssuer`: a cluster's mesh issuer, signed with its organization's active trust anchor for
//! a key the agent made in the cluster. Only for the calling agent's own cluster and
//! organization (both from its certificate), only while a rotate-issuer command is open for it,
//! and only what an issuer needs: the service sets every field of the certificate.

use std::collections::hash_map::{self, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshfleet_agent_protocol::v1::{SignIssuerRequest, SignIssuerResponse};
use meshfleet_pki::mint::{self, CaMaterial, CaProfile};
use meshfleet_pki::pem::{cert_to_pem, fingerprint};
use meshfleet_pki::{Issuer, KeyPair};
use tokio::sync::{mpsc, oneshot};

use super::pki::PeerAgent;
use super::{Error, Gateway, Result};
use crate::db::Db;
use crate::domain::audit::AuditEntry;
use crate::domain::trust::{Anchor, AnchorState, SignedIssuer};
use crate::domain::{CommandId, OrgId};
use crate::store;
use crate::store::commands::Command;

impl Gateway {
    #[tracing::instrument(name = "sign_issuer", skip_all, fields(org_id = %peer.org_id, cluster_id = %peer.cluster_id))]
    pub(super) async fn do_sign_issuer(&self, peer: PeerAgent, req: SignIssuerRequest) -> Result<SignIssuerResponse> {
        let command_id: CommandId = req.command_id.parse().map_err(|_| Error::NoIssuerRotation(req.command_id.chars().take(64).collect()))?;
        // A rotation may have made another anchor active since the anchors were read (or
        // remembered): read them again and sign with the new one.
        match self.sign_once(peer, command_id, &req.csr_der, false).await {
            Err(Error::AnchorMoved | Error::NoAnchor) => self.sign_once(peer, command_id, &req.csr_der, true).await,
            signed => signed,
        }
    }

    /// Reads the anchors, signs (outside any transaction) and has the issuer recorded, which
    /// checks the command is open and the anchor still active.
    async fn sign_once(&self, peer: PeerAgent, command_id: CommandId, csr_der: &[u8], fresh: bool) -> Result<SignIssuerResponse> {
        let state = &self.state;
        let now = state.clock.now_ms();
        let anchors = match state.signers.anchors(peer.org_id).filter(|_| !fresh) {
            Some(anchors) => anchors,
            None => {
                let mut conn = state.db.pool.acquire().await?;
                let anchors = store::trust::anchors(&mut conn, peer.org_id).await?;
                state.signers.remember_anchors(peer.org_id, anchors)
            }
        };
        let anchor = anchors.iter().find(|a| a.state == AnchorState::Active).ok_or(Error::NoAnchor)?;
        let signer = match state.signers.get(peer.org_id, &anchor.fingerprint) {
            Some(signer) => signer,
            None => {
                let mut conn = state.db.pool.acquire().await?;
                let trust_domain = store::trust::trust_domain(&mut conn, peer.org_id).await?;
                let (sealed_for, key_sealed) = store::trust::anchor_in(&mut conn, peer.org_id, AnchorState::Active).await?.ok_or(Error::NoAnchor)?;
                if sealed_for.fingerprint != anchor.fingerprint {
                    return Err(Error::AnchorMoved);
                }
                let key_pem = state.sealer.open(&key_sealed).map_err(|e| Error::Sign(meshfleet_pki::Error::Key(e.to_string())))?;
                let material = CaMaterial::from_pem(&anchor.cert_pem, &String::from_utf8_lossy(&key_pem))?;
                state.signers.insert(peer.org_id, &anchor.fingerprint, Signer { issuer: material.signer()?, trust_domain })
            }
        };
        let public_key = meshfleet_pki::csr::check_issuer_request(csr_der, &signer.trust_domain)?;

        let name = format!("meshfleet issuer {}", peer.cluster_id);
        let mut profile = CaProfile::new(&name, state.config.issuer_lifetime);
        profile.organization = Some(&signer.trust_domain);
        profile.path_len = Some(0);
        profile.not_before = state.clock.now_system() - mint::BACKDATE;
        // Never beyond the anchor: a chain is only as valid as its shortest-lived link.
        let anchor_end = std::time::UNIX_EPOCH + std::time::Duration::from_millis(anchor.not_after.max(0) as u64);
        profile.not_after = (state.clock.now_system() + state.config.issuer_lifetime).min(anchor_end);
        let der = mint::sign_ca(&signer.issuer, &public_key, &profile)?;

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
        let bundle = state.issuer_log.record(issuer.clone()).await?;
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

/// Signed issuers on their way to the database. One writer stores everything queued in one
/// transaction (group commit): concurrent signings would otherwise each take SQLite's single
/// writer in turn, polling for it (BENCHMARKS.md, "certificate rotation"). An issuer goes back
/// to its agent only once recorded.
#[derive(Clone)]
pub struct IssuerLog(mpsc::Sender<Entry>);

struct Entry {
    issuer: SignedIssuer,
    done: oneshot::Sender<Result<String>>,
}

/// Issuers recorded per transaction at most.
const BATCH: usize = 256;

impl IssuerLog {
    pub fn start(db: Db) -> IssuerLog {
        let (tx, rx) = mpsc::channel(BATCH * 4);
        tokio::spawn(write_issuers(db, rx));
        IssuerLog(tx)
    }

    /// Records `issuer` (and its audit entry) if its command is still open and its anchor
    /// still active; returns the organization's trust bundle as the transaction read it.
    async fn record(&self, issuer: SignedIssuer) -> Result<String> {
        let (done, recorded) = oneshot::channel();
        self.0.send(Entry { issuer, done }).await.map_err(|_| Error::ShuttingDown)?;
        recorded.await.map_err(|_| Error::ShuttingDown)?
    }
}

async fn write_issuers(db: Db, mut rx: mpsc::Receiver<Entry>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let outcomes = match record_all(&db, &batch).await {
            Ok(outcomes) => outcomes,
            // One issuer that cannot be stored (its cluster deleted a moment ago, say) must not
            // fail its neighbours: record them one by one, as ingest does.
            Err(e) if batch.len() > 1 => {
                tracing::warn!(error = %e, issuers = batch.len(), "recording signed issuers failed; retrying one at a time");
                let mut outcomes = Vec::with_capacity(batch.len());
                for entry in &batch {
                    outcomes.push(record_all(&db, std::slice::from_ref(entry)).await.map_or_else(not_stored, |mut o| o.remove(0)));
                }
                outcomes
            }
            Err(e) => vec![not_stored(e)],
        };
        for (entry, outcome) in batch.drain(..).zip(outcomes) {
            let _ = entry.done.send(outcome);
        }
    }
}

fn not_stored(e: sqlx::Error) -> Result<String> {
    tracing::error!(error = %e, "recording a signed issuer failed");
    Err(Error::NotStored)
}

/// What a batch's record needs of an organization, as its transaction reads it: the commands
/// the batch names, the active anchor's fingerprint and the trust bundle.
type OrgNow = (HashMap<CommandId, Command>, Option<String>, String);

/// One transaction for the batch, a few statements however many issuers it holds; each
/// issuer's own refusal (command closed, anchor moved) leaves the others alone.
async fn record_all(db: &Db, batch: &[Entry]) -> std::result::Result<Vec<Result<String>>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let mut orgs: HashMap<OrgId, OrgNow> = HashMap::new();
    for Entry { issuer, .. } in batch {
        if let hash_map::Entry::Vacant(slot) = orgs.entry(issuer.org_id) {
            let ids: Vec<CommandId> = batch.iter().filter(|e| e.issuer.org_id == issuer.org_id).map(|e| e.issuer.command_id).collect();
            let commands = store::commands::get_many(&mut tx, issuer.org_id, &ids).await?;
            let all = store::trust::anchors(&mut tx, issuer.org_id).await?;
            let active = all.iter().find(|a| a.state == AnchorState::Active).map(|a| a.fingerprint.clone());
            slot.insert((commands, active, all.into_iter().filter(|a| a.state.trusted()).map(|a| a.cert_pem).collect()));
        }
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    let (mut recorded, mut audit) = (Vec::with_capacity(batch.len()), Vec::with_capacity(batch.len()));
    for Entry { issuer, .. } in batch {
        let (commands, active, bundle) = &orgs[&issuer.org_id];
        let command = commands.get(&issuer.command_id).filter(|c| c.cluster_id == issuer.cluster_id);
        if !command.is_some_and(|c| c.kind == "rotate-issuer" && c.is_open(issuer.signed_at)) {
            outcomes.push(Err(Error::NoIssuerRotation(issuer.command_id.to_string())));
            continue;
        }
        if active.as_deref() != Some(issuer.anchor_fingerprint.as_str()) {
            outcomes.push(Err(Error::AnchorMoved));
            continue;
        }
        let details = serde_json::json!({
            "fingerprint": issuer.fingerprint, "anchor_fingerprint": issuer.anchor_fingerprint,
            "not_after": issuer.not_after, "command_id": issuer.command_id,
        });
        let by = format!("agent:{}", issuer.cluster_id);
        audit.push(AuditEntry::by_service(issuer.org_id, issuer.signed_at, &by, "issuer.sign", ("cluster", issuer.cluster_id.to_string()), details));
        recorded.push(issuer);
        outcomes.push(Ok(bundle.clone()));
    }
    store::trust::record_issuers(&mut tx, &recorded).await?;
    store::audit::insert_many(&mut tx, &audit).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// An active anchor ready to sign, with its organization's trust domain (fixed once the
/// organization has an anchor: `PUT /api/v1/trust-domain` is refused then).
pub struct Signer {
    /// Parsed once: reading a P-256 key back checks it, which costs about a signature.
    issuer: Issuer<'static, KeyPair>,
    trust_domain: String,
}

/// Anchors unsealed and parsed, by organization and fingerprint: opening the sealed key and
/// parsing it cost more than the signature. An anchor's key never changes under its
/// fingerprint, so an entry cannot go stale; the map starts over when it grows past `LIMIT`.
/// Each organization's anchors are remembered for `ANCHORS_FOR` too: the issuer's record checks
/// the anchor is still active (a signature by one that no longer is, or a missing anchor, is
/// tried again from the database) and the bundle the agent gets is read there.
/// An organization's anchors and when they were read.
type Remembered = (Instant, Arc<Vec<Anchor>>);

#[derive(Default)]
pub struct Signers {
    signers: Mutex<HashMap<(OrgId, String), Arc<Signer>>>,
    anchors: Mutex<HashMap<OrgId, Remembered>>,
}

impl Signers {
    const LIMIT: usize = 10_000;
    const ANCHORS_FOR: Duration = Duration::from_secs(1);

    fn get(&self, org: OrgId, fingerprint: &str) -> Option<Arc<Signer>> {
        self.signers.lock().unwrap_or_else(|e| e.into_inner()).get(&(org, fingerprint.to_owned())).cloned()
    }

    fn insert(&self, org: OrgId, fingerprint: &str, signer: Signer) -> Arc<Signer> {
        let signer = Arc::new(signer);
        let mut map = self.signers.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::LIMIT {
            map.clear();
        }
        map.insert((org, fingerprint.to_owned()), signer.clone());
        signer
    }

    fn anchors(&self, org: OrgId) -> Option<Arc<Vec<Anchor>>> {
        let map = self.anchors.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&org).filter(|(at, _)| at.elapsed() < Self::ANCHORS_FOR).map(|(_, anchors)| anchors.clone())
    }

    fn remember_anchors(&self, org: OrgId, anchors: Vec<Anchor>) -> Arc<Vec<Anchor>> {
        let anchors = Arc::new(anchors);
        let mut map = self.anchors.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (at, _)| at.elapsed() < Self::ANCHORS_FOR);
        map.insert(org, (Instant::now(), anchors.clone()));
        anchors
    }
}
