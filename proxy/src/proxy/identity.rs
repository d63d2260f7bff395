//! The proxy's side of identity: obtains its leaf from the controller with a CSR for the key it
//! generated in memory, renews at ~70% of the lifetime (with jitter), and at once (within a
//! second of jitter) when the controller announces an issuer other than the one that signed the
//! current leaf. It keeps the current leaf while the controller is unreachable, and follows the
//! trust bundle stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfleet_pki::inspect::inspect;
use meshfleet_pki::pem::fingerprint;
use meshfleet_pki::verify::{verify_chain, TrustBundle};
use meshfleet_pki::{KeyPair, PublicKeyData};
use rand::Rng;
use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;
use tonic::transport::Channel;

use super::metrics::Metrics;
use super::tls::{Leaf, TlsState};
use crate::identity::pb::{self, identity_client::IdentityClient};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read token file {0}: {1}")]
    Token(String, std::io::Error),
    #[error("controller refused or failed: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("controller returned an unusable certificate: {0}")]
    BadCert(String),
    #[error(transparent)]
    Pki(#[from] meshfleet_pki::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Early renewals wait a random 0.1–1 s, so a fleet told of a new issuer does not renew at once.
const ISSUER_JITTER_MS: std::ops::Range<u64> = 100..1000;

pub struct Certifier {
    pub state: Arc<TlsState>,
    pub metrics: Metrics,
    pub channel: Channel,
    pub token_file: PathBuf,
    pub key: KeyPair,
    /// The issuer fingerprint the controller announces on the bundle stream ("" until known).
    pub announced_issuer: watch::Receiver<String>,
}

impl Certifier {
    pub async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.certify().await {
                Ok(lifetime) => {
                    backoff = MIN_BACKOFF;
                    // Renew at 65–75% of the remaining lifetime so a fleet does not renew in step.
                    let fraction = rand::thread_rng().gen_range(0.65..0.75);
                    tokio::select! {
                        _ = tokio::time::sleep(lifetime.mul_f64(fraction)) => {}
                        _ = self.issuer_moved() => {
                            let jitter = Duration::from_millis(rand::thread_rng().gen_range(ISSUER_JITTER_MS));
                            tracing::info!(jitter_ms = jitter.as_millis() as u64, "controller announced a new issuer; renewing early");
                            tokio::time::sleep(jitter).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "certificate request failed; keeping the current certificate");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Resolves once the controller announces an issuer other than the one that signed the
    /// current leaf; never for a controller that announces none.
    async fn issuer_moved(&mut self) {
        loop {
            let signed_by = self.state.leaf().map(|l| l.issuer_fingerprint.clone()).unwrap_or_default();
            let announced = self.announced_issuer.borrow_and_update().clone();
            if !announced.is_empty() && !signed_by.is_empty() && announced != signed_by {
                return;
            }
            if self.announced_issuer.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// One round: CSR -> leaf, checked locally before it is used. Returns the remaining lifetime.
    async fn certify(&self) -> Result<Duration, Error> {
        let token = tokio::fs::read_to_string(&self.token_file).await.map_err(|e| Error::Token(self.token_file.display().to_string(), e))?;
        let csr_der = meshfleet_pki::csr::new_csr(&self.key)?;
        let mut client = IdentityClient::new(self.channel.clone());
        let req = pb::CertifyRequest { token: token.trim().to_string(), csr_der };
        let resp = client.certify(req).await?.into_inner();
        let leaf = CertificateDer::from(resp.leaf_der);
        let info = inspect(&leaf)?;
        if info.spki != self.key.subject_public_key_info() {
            return Err(Error::BadCert("leaf is not for this proxy's key".into()));
        }
        let mut chain = vec![leaf];
        chain.extend(resp.intermediates_der.into_iter().map(CertificateDer::from));
        let bundle = self.state.bundle();
        verify_chain(&chain[0], &chain[1..], bundle.roots(), UnixTime::now())
            .map_err(|e| Error::BadCert(format!("does not chain to the trust bundle: {e}")))?;
        let issuer = chain.get(1).and_then(|c| inspect(c).ok()).map(|i| i.subject).unwrap_or_default();
        let issuer_fingerprint = chain.get(1).map(|c| fingerprint(c)).unwrap_or_default();
        let identity = info.spiffe_id().unwrap_or_default().to_string();
        let (not_before_unix, not_after_unix) = (info.not_before_unix, info.not_after_unix);
        self.state.set_leaf(Leaf { chain, identity: identity.clone(), not_before_unix, not_after_unix, issuer, issuer_fingerprint })?;
        self.metrics.cert_expiry.set(info.not_after_unix as f64);
        self.metrics.cert_refresh.inc();
        tracing::info!(%identity, not_after = info.not_after_unix, "obtained certificate");
        Ok(info.remaining(SystemTime::now()).max(Duration::from_secs(1)))
    }
}

/// Follows the controller's trust bundle stream for the life of the proxy, reconnecting on error,
/// and passes on the issuer it announces.
pub async fn follow_bundle(state: Arc<TlsState>, metrics: Metrics, channel: Channel, announced_issuer: watch::Sender<String>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut client = IdentityClient::new(channel.clone());
        match client.watch_trust_bundle(pb::WatchTrustBundleRequest {}).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => {
                            backoff = MIN_BACKOFF;
                            // Only a changed value wakes the certifier.
                            announced_issuer.send_if_modified(|current| {
                                let changed = *current != msg.issuer_fingerprint;
                                current.clone_from(&msg.issuer_fingerprint);
                                changed
                            });
                            apply_bundle(&state, &metrics, msg);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "trust bundle stream ended");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot watch the trust bundle"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn apply_bundle(state: &TlsState, metrics: &Metrics, msg: pb::TrustBundle) {
    let anchors = msg.anchors_der.into_iter().map(CertificateDer::from).collect();
    match TrustBundle::new(anchors) {
        Ok(bundle) if bundle.version() == state.bundle().version() => {}
        Ok(bundle) => {
            tracing::info!(version = %bundle.version(), anchors = bundle.anchors().len(), "trust bundle updated");
            if let Err(e) = state.set_bundle(bundle) {
                tracing::error!(error = %e, "cannot apply the trust bundle");
            } else {
                metrics.trust_bundle_updates.inc();
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "controller sent an invalid trust bundle; keeping the current one")
        }
    }
}
