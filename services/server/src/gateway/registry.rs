//! The agent streams open on this replica: one per cluster (a newer one supersedes the older),
//! each with a wake-up for new commands and a way to cut it (cluster deleted, agent revoked);
//! and the agent certificates this replica found valid lately, forgotten at the same moments.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use crate::domain::{ClusterId, OrgId};

/// Why a stream was ended from the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    Open,
    Superseded,
    Revoked,
    /// The re-check found its certificate expired or revoked (a missed notification).
    CertificateInvalid,
    /// This replica is stopping: the agent reconnects (to another replica, or to this one when
    /// it is back) and resends what was not acknowledged.
    ShuttingDown,
}

pub struct Session {
    pub epoch: u64,
    /// Unique across replicas: tells streams of the same cluster on other replicas apart.
    pub id: String,
    pub wake: Arc<Notify>,
    pub cut: watch::Receiver<Cut>,
}

struct Entry {
    epoch: u64,
    id: String,
    org: OrgId,
    /// The serial of the certificate the stream was opened with.
    serial: String,
    wake: Arc<Notify>,
    cut: watch::Sender<Cut>,
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<ClusterId, Entry>>,
    next_epoch: AtomicU64,
    /// Set once the replica stops: a stream that opens after that is cut at once.
    stopping: std::sync::atomic::AtomicBool,
    verified: Mutex<Verified>,
}

/// Agent certificates found valid in the database, so that the calls an agent makes beside its
/// open stream (`SignIssuer`, `Renew`) and its reconnections skip the query. A revocation
/// forgets the cluster's entry exactly where it cuts its stream, and an entry is trusted no
/// longer than the streams' re-check interval, so a missed revocation goes unnoticed no longer
/// than it does for a stream.
#[derive(Default)]
struct Verified {
    /// The serial last found valid per cluster, and until when (ms) it may be trusted.
    by_cluster: HashMap<ClusterId, (String, i64)>,
    /// Revocations seen so far: a check that a revocation overtook must not be remembered.
    revocations: u64,
}

/// A check's ticket: the revocations seen when it started.
#[derive(Clone, Copy)]
pub struct CheckStarted(u64);

impl Registry {
    /// Registers a new stream for the cluster, opened with the certificate `serial`,
    /// superseding any older one.
    pub fn open(&self, org: OrgId, cluster: ClusterId, serial: &str) -> Session {
        let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        let (cut_tx, cut_rx) = watch::channel(Cut::Open);
        let wake = Arc::new(Notify::new());
        let id = uuid::Uuid::now_v7().to_string();
        let mut sessions = self.lock();
        // Checked under the lock the insert holds: either this sees `shut_down`'s flag, or
        // `shut_down` (which sets it before it locks) finds this stream once it is in.
        if self.stopping.load(Ordering::SeqCst) {
            let _ = cut_tx.send(Cut::ShuttingDown);
        }
        let old = sessions.insert(cluster, Entry { epoch, id: id.clone(), org, serial: serial.to_owned(), wake: wake.clone(), cut: cut_tx });
        drop(sessions);
        if let Some(old) = old {
            let _ = old.cut.send(Cut::Superseded);
        }
        Session { epoch, id, wake, cut: cut_rx }
    }

    /// Ends every stream of this replica, now and from now on: the gateway's graceful stop
    /// waits for open calls, and an agent's stream never ends by itself.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for entry in self.lock().values() {
            let _ = entry.cut.send(Cut::ShuttingDown);
        }
    }

    /// Whether this replica is stopping (`shut_down` was called).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A stream of the cluster opened elsewhere (session `id`): cut ours if it is another one.
    pub fn superseded_elsewhere(&self, cluster: ClusterId, id: &str) {
        let mut map = self.lock();
        if map.get(&cluster).is_some_and(|e| e.id != id) {
            if let Some(old) = map.remove(&cluster) {
                let _ = old.cut.send(Cut::Superseded);
            }
        }
    }

    /// Forgets the stream unless a newer one replaced it; true when it was the current one.
    pub fn close(&self, cluster: ClusterId, epoch: u64) -> bool {
        let mut map = self.lock();
        if map.get(&cluster).is_some_and(|e| e.epoch == epoch) {
            map.remove(&cluster);
            true
        } else {
            false
        }
    }

    /// Tells the cluster's stream (if open here) to look for new commands.
    pub fn wake(&self, cluster: ClusterId) {
        if let Some(e) = self.lock().get(&cluster) {
            e.wake.notify_one();
        }
    }

    /// Cuts the cluster's stream, if open here, and forgets its certificate was valid.
    pub fn revoke(&self, cluster: ClusterId) {
        self.forget_verified(cluster, None);
        self.cut(cluster, None, Cut::Revoked);
    }

    /// Whether `serial` was found valid for the cluster lately (and may still be trusted).
    pub fn verified(&self, cluster: ClusterId, serial: &str, now: i64) -> bool {
        self.verified_lock().by_cluster.get(&cluster).is_some_and(|(s, until)| s == serial && now < *until)
    }

    /// Call before reading a certificate's validity from the database; hand the ticket to
    /// `remember_verified`.
    pub fn check_started(&self) -> CheckStarted {
        CheckStarted(self.verified_lock().revocations)
    }

    /// Remembers `serial` as valid for the cluster until `until` (ms), unless a revocation came
    /// in since `started`.
    pub fn remember_verified(&self, cluster: ClusterId, serial: &str, until: i64, started: CheckStarted) {
        const LIMIT: usize = 200_000;
        let mut v = self.verified_lock();
        if v.revocations != started.0 {
            return;
        }
        if v.by_cluster.len() >= LIMIT {
            v.by_cluster.clear();
        }
        v.by_cluster.insert(cluster, (serial.to_owned(), until));
    }

    fn forget_verified(&self, cluster: ClusterId, serial: Option<&str>) {
        let mut v = self.verified_lock();
        v.revocations += 1;
        if v.by_cluster.get(&cluster).is_some_and(|(s, _)| serial.is_none_or(|serial| serial == s)) {
            v.by_cluster.remove(&cluster);
        }
    }

    fn verified_lock(&self) -> std::sync::MutexGuard<'_, Verified> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open streams' (org, cluster, certificate serial).
    pub fn certificates(&self) -> Vec<(OrgId, ClusterId, String)> {
        self.lock().iter().map(|(cluster, e)| (e.org, *cluster, e.serial.clone())).collect()
    }

    /// Cuts the cluster's stream if it is still the one opened with `serial`: its certificate
    /// was found invalid.
    pub fn certificate_invalid(&self, cluster: ClusterId, serial: &str) {
        self.forget_verified(cluster, Some(serial));
        self.cut(cluster, Some(serial), Cut::CertificateInvalid);
    }

    fn cut(&self, cluster: ClusterId, serial: Option<&str>, why: Cut) {
        let mut map = self.lock();
        if map.get(&cluster).is_some_and(|e| serial.is_none_or(|s| s == e.serial)) {
            if let Some(e) = map.remove(&cluster) {
                let _ = e.cut.send(why);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterId, Entry>> {
        self.sessions.lock().expect("registry lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_certificate_is_forgotten_on_revocation_and_expiry() {
        let registry = Registry::default();
        let (one, two) = (ClusterId::new(), ClusterId::new());
        registry.remember_verified(one, "aa", 1_000, registry.check_started());
        registry.remember_verified(two, "bb", 1_000, registry.check_started());
        assert!(registry.verified(one, "aa", 999));
        assert!(!registry.verified(one, "aa", 1_000), "trusted only until its time");
        assert!(!registry.verified(one, "cc", 10), "another certificate of the cluster");

        // Found invalid with another serial (an older certificate): this one stands.
        registry.certificate_invalid(one, "zz");
        assert!(registry.verified(one, "aa", 10));
        registry.certificate_invalid(one, "aa");
        assert!(!registry.verified(one, "aa", 10));
        registry.revoke(two);
        assert!(!registry.verified(two, "bb", 10));

        // A check that a revocation overtook is not remembered.
        let started = registry.check_started();
        registry.revoke(ClusterId::new());
        registry.remember_verified(one, "aa", 1_000, started);
        assert!(!registry.verified(one, "aa", 10));
    }
}
