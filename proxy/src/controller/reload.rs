//! Keeping the controller current: the one switch every source (files, the Kubernetes API) feeds.
//! It validates what a source offers, moves to the new pair only when it passes, and keeps the
//! controller's own serving certificate fresh. It never replaces a good pair with a refused one.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use meshfleet_pki::mint::{issue_leaf, new_key, LeafProfile};
use meshfleet_pki::spiffe::WorkloadId;
use meshfleet_pki::unix;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::mpsc;

use super::issuer::{self, IssuerError, Pair, Sources};
use super::Shared;

/// What a source read: the raw pair, or why it could not read one.
pub(super) type Offer = Result<Sources, IssuerError>;

/// How often a refused offer is tried again (an issuer not yet valid becomes valid) and the
/// serving certificate's age is checked, even when no source says anything.
const RECHECK: Duration = Duration::from_secs(1);

/// A serving certificate and its validity (not_before, not_after), Unix seconds.
type Served = (Arc<CertifiedKey>, (i64, i64));

/// The controller's own TLS certificate, swapped in place when the issuer changes; none until
/// the controller holds a valid pair, so no client handshakes with it before then.
#[derive(Debug, Default)]
pub(super) struct ServingCert {
    current: RwLock<Option<Served>>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(c, _)| c.clone())
    }
}

fn serving_cert(pair: &Pair, id: &WorkloadId, lifetime: Duration) -> anyhow::Result<Served> {
    let key = new_key()?;
    let issuer_end = SystemTime::UNIX_EPOCH + Duration::from_secs(pair.issuer.info.not_after_unix.max(0) as u64);
    let now = SystemTime::now();
    let not_after = (now + lifetime).min(issuer_end);
    let leaf = issue_leaf(&pair.issuer.signer, &key, &LeafProfile::workload(id, not_after))?;
    let mut chain = vec![leaf.der];
    chain.extend(pair.issuer.chain.iter().cloned());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)?;
    Ok((Arc::new(CertifiedKey::new(chain, signing)), (unix(now), unix(not_after))))
}

pub(super) struct Switch {
    shared: Arc<Shared>,
    own_id: WorkloadId,
    own_lifetime: Duration,
    /// What the pair in use was built from, so a re-read of the same contents is not a reload.
    accepted: Option<Sources>,
    /// The last refusal, so a bad source left in place is logged and counted once.
    last_error: Option<String>,
}

impl Switch {
    pub(super) fn new(shared: Arc<Shared>, own_id: WorkloadId, own_lifetime: Duration) -> Self {
        Self { shared, own_id, own_lifetime, accepted: None, last_error: None }
    }

    /// Validates what a source offers and switches to it if it passes; a refusal leaves the
    /// current pair in place, with an error log and `identity_issuer_reload_total{result="refused"}`.
    pub(super) fn offer(&mut self, offer: &Offer) {
        match offer {
            Ok(src) if self.accepted.as_ref() == Some(src) => self.last_error = None,
            Ok(src) => match issuer::validate(src, SystemTime::now()) {
                Ok(pair) => self.install(src.clone(), pair),
                Err(e) => self.refuse(&e, "refused new issuer/trust bundle; keeping the current one"),
            },
            Err(e) => self.refuse(e, "cannot read the issuer/trust bundle; keeping the current pair"),
        }
    }

    /// Puts a validated pair in service: bundle streams, signing and the serving certificate
    /// all follow it. Replacing a pair counts as a reload; the first pair does not. The serving
    /// certificate comes first, so a controller that says it is ready also completes handshakes.
    pub(super) fn install(&mut self, src: Sources, pair: Pair) {
        let m = &self.shared.metrics;
        let previous = self.shared.pair();
        if previous.is_some() {
            m.reloads.with_label_values(&["accepted", ""]).inc();
        }
        tracing::info!(
            issuer = %pair.issuer.info.subject,
            not_after = pair.issuer.info.not_after_unix,
            bundle = %pair.bundle.version(),
            bundle_changed = previous.is_none_or(|p| p.bundle.version() != pair.bundle.version()),
            "loaded issuer and trust bundle"
        );
        m.issuer_expiry.set(pair.issuer.info.not_after_unix);
        m.bundle_anchors.set(pair.bundle.anchors().len() as i64);
        self.renew_serving(&pair);
        self.shared.current.send_replace(Some(Arc::new(pair)));
        self.accepted = Some(src);
        self.last_error = None;
    }

    fn refuse(&mut self, e: &IssuerError, what: &str) {
        let msg = e.to_string();
        if self.last_error.as_deref() != Some(msg.as_str()) {
            tracing::error!(error = %msg, reason = e.metric_label(), "{what}");
            self.shared.metrics.reloads.with_label_values(&["refused", e.metric_label()]).inc();
            self.last_error = Some(msg);
        }
    }

    fn renew_serving(&self, pair: &Pair) {
        match serving_cert(pair, &self.own_id, self.own_lifetime) {
            Ok(cert) => *self.shared.serving.current.write().unwrap_or_else(|e| e.into_inner()) = Some(cert),
            Err(e) => tracing::error!(error = %e, "cannot renew the controller's serving certificate"),
        }
    }

    /// Renews the serving certificate at 70% of its lifetime.
    fn renew_serving_if_due(&self) {
        let validity = self.shared.serving.current.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(_, v)| *v);
        if let Some((from, until)) = validity {
            if let Some(pair) = self.shared.pair().filter(|_| unix(SystemTime::now()) >= from + (until - from) * 7 / 10) {
                self.renew_serving(&pair);
            }
        }
    }

    /// Takes offers until every source has stopped, re-trying the latest refused one on a timer.
    pub(super) async fn run(mut self, mut offers: mpsc::Receiver<Offer>) {
        let mut tick = tokio::time::interval(RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut latest: Option<Offer> = None;
        loop {
            tokio::select! {
                offer = offers.recv() => match offer {
                    Some(o) => latest = Some(o),
                    None => return,
                },
                _ = tick.tick() => {}
            }
            if let Some(o) = &latest {
                self.offer(o);
            }
            self.renew_serving_if_due();
        }
    }
}
