//! The agent streams open on this replica: one per cluster (a newer one supersedes the older),
//! each with a wake-up for new commands and a way to cut it (cluster deleted, agent revoked).

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
}

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

    /// Cuts the cluster's stream, if open here.
    pub fn revoke(&self, cluster: ClusterId) {
        self.cut(cluster, None, Cut::Revoked);
    }

    /// The open streams' (org, cluster, certificate serial).
    pub fn certificates(&self) -> Vec<(OrgId, ClusterId, String)> {
        self.lock().iter().map(|(cluster, e)| (e.org, *cluster, e.serial.clone())).collect()
    }

    /// Cuts the cluster's stream if it is still the one opened with `serial`: its certificate
    /// was found invalid.
    pub fn certificate_invalid(&self, cluster: ClusterId, serial: &str) {
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
