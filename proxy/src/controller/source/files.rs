//! The file source: the issuer certificate, key and bundle read from disk (mounted Secret and
//! ConfigMap volumes), re-read on a timer because mounted volumes change by rename.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::controller::issuer::{IssuerError, Sources};
use crate::controller::reload::Offer;
use crate::controller::Config;

pub(in crate::controller) fn read(c: &Config) -> Offer {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|source| IssuerError::Read { path: p.display().to_string(), source });
    Ok(Sources { issuer_cert: read(&c.issuer_cert)?, issuer_key: read(&c.issuer_key)?, bundle: read(&c.trust_bundle)? })
}

/// Offers the files every `--reload-interval-ms` until the switch stops listening.
pub(in crate::controller) async fn poll(config: Config, offers: mpsc::Sender<Offer>) {
    let mut tick = tokio::time::interval(Duration::from_millis(config.reload_interval_ms.max(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if offers.send(read(&config)).await.is_err() {
            return;
        }
    }
}
