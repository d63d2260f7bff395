//! Keeping the controller current: re-reads the issuer and bundle files, switches to a new pair
//! only when it validates, and keeps the controller's own serving certificate fresh. It never
//! replaces a good pair with a refused one.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use meshfleet_pki::mint::{issue_leaf, new_key, LeafProfile};
use meshfleet_pki::spiffe::WorkloadId;
use meshfleet_pki::unix;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::issuer::{self, Pair, Sources};
use super::{Config, Shared};

/// The controller's own TLS certificate, swapped in place when the issuer changes.
#[derive(Debug)]
pub(super) struct ServingCert {
    pub(super) current: RwLock<Arc<CertifiedKey>>,
    pub(super) not_after: RwLock<(i64, i64)>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

pub(super) fn serving_cert(pair: &Pair, id: &WorkloadId, lifetime: Duration) -> anyhow::Result<(Arc<CertifiedKey>, (i64, i64))> {
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

pub(super) fn read_sources(c: &Config) -> Result<Sources, issuer::IssuerError> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|source| issuer::IssuerError::Read { path: p.display().to_string(), source });
    Ok(Sources { issuer_cert: read(&c.issuer_cert)?, issuer_key: read(&c.issuer_key)?, bundle: read(&c.trust_bundle)? })
}

/// Logs and counts a refused reload once per distinct error, so a bad file left in place does
/// not repeat the same error every poll.
fn refuse(shared: &Shared, last_error: &mut Option<String>, msg: String, label: &'static str, what: &str) {
    if last_error.as_deref() != Some(msg.as_str()) {
        tracing::error!(error = %msg, reason = label, "{what}");
        shared.metrics.reloads.with_label_values(&["refused", label]).inc();
        *last_error = Some(msg);
    }
}

/// Polls the files and switches to a new pair only when it validates; a refused pair leaves
/// the current one in place, with an error log and `identity_issuer_reload_total{result="refused"}`.
pub(super) async fn watch_files(shared: Arc<Shared>, mut last: Sources, own_id: WorkloadId, own_lifetime: Duration) {
    let mut tick = tokio::time::interval(Duration::from_millis(shared.config.reload_interval_ms.max(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tick.tick().await;
        let mut changed_issuer = false;
        match read_sources(&shared.config) {
            Ok(src) if src == last => {}
            Ok(src) => match issuer::validate(&src, SystemTime::now()) {
                Ok(pair) => {
                    let m = &shared.metrics;
                    let bundle_changed = pair.bundle.version() != shared.pair().bundle.version();
                    tracing::info!(
                        issuer = %pair.issuer.info.subject,
                        not_after = pair.issuer.info.not_after_unix,
                        bundle = %pair.bundle.version(),
                        bundle_changed,
                        "loaded issuer and trust bundle"
                    );
                    m.issuer_expiry.set(pair.issuer.info.not_after_unix);
                    m.bundle_anchors.set(pair.bundle.anchors().len() as i64);
                    m.reloads.with_label_values(&["accepted", ""]).inc();
                    let bundle = Arc::new(pair.bundle.clone());
                    *shared.pair.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
                    if bundle_changed {
                        shared.bundle_tx.send_replace(bundle);
                    }
                    last = src;
                    last_error = None;
                    changed_issuer = true;
                }
                Err(e) => refuse(&shared, &mut last_error, e.to_string(), e.metric_label(), "refused new issuer/trust bundle; keeping the current one"),
            },
            Err(e) => refuse(&shared, &mut last_error, e.to_string(), e.metric_label(), "cannot read issuer/trust bundle files; keeping the current pair"),
        }
        let (from, until) = *shared.serving.not_after.read().unwrap_or_else(|e| e.into_inner());
        let renew_at = from + (until - from) * 7 / 10;
        if changed_issuer || unix(SystemTime::now()) >= renew_at {
            match serving_cert(&shared.pair(), &own_id, own_lifetime) {
                Ok((cert, validity)) => {
                    *shared.serving.current.write().unwrap_or_else(|e| e.into_inner()) = cert;
                    *shared.serving.not_after.write().unwrap_or_else(|e| e.into_inner()) = validity;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew the controller's serving certificate")
                }
            }
        }
    }
}
