//! Agent certificates checked in the database for calls that arrive together, in one query:
//! when a rotation sends every cluster its command, or a restarted replica takes back thousands
//! of agents, each new connection's certificate would otherwise take a pooled connection and a
//! statement of its own (BENCHMARKS.md, "the mesh's PKI at fleet scale").

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Error, Result};
use crate::db::{Clock, Db};
use crate::domain::{ClusterId, OrgId};
use crate::store;

/// An agent certificate: its organization, cluster and serial.
pub type CertificateKey = (OrgId, ClusterId, String);

/// Checks at most per query (a few statements on SQLite, whose statements take fewer values).
const BATCH: usize = 512;
/// Queries under way at most.
const QUERIES: usize = 4;

#[derive(Clone)]
pub struct CertificateChecks(mpsc::Sender<Check>);

struct Check {
    key: CertificateKey,
    done: oneshot::Sender<Result<Option<i64>>>,
}

impl CertificateChecks {
    pub fn start(db: Db, clock: Arc<Clock>) -> CertificateChecks {
        let (tx, rx) = mpsc::channel(BATCH * 4);
        tokio::spawn(check_all(db, clock, rx));
        CertificateChecks(tx)
    }

    /// When the certificate expires (ms), if it is valid now: issued to that organization's
    /// cluster, unrevoked and unexpired, and the cluster still exists.
    pub async fn valid_until(&self, key: CertificateKey) -> Result<Option<i64>> {
        let (done, checked) = oneshot::channel();
        self.0.send(Check { key, done }).await.map_err(|_| Error::ShuttingDown)?;
        checked.await.map_err(|_| Error::ShuttingDown)?
    }
}

async fn check_all(db: Db, clock: Arc<Clock>, mut rx: mpsc::Receiver<Check>) {
    // A few queries at a time: one alone made each check wait out the round trips of those
    // before it, while the calls that arrive meanwhile make the next batches larger.
    let in_flight = Arc::new(Semaphore::new(QUERIES));
    loop {
        let permit = in_flight.clone().acquire_owned().await.expect("the semaphore is never closed");
        let mut batch = Vec::with_capacity(BATCH);
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let (db, clock) = (db.clone(), clock.clone());
        tokio::spawn(async move {
            answer(&db, &clock, batch).await;
            drop(permit);
        });
    }
}

async fn answer(db: &Db, clock: &Clock, batch: Vec<Check>) {
    let keys: Vec<CertificateKey> = batch.iter().map(|c| c.key.clone()).collect();
    let valid = async {
        let mut conn = db.pool.acquire().await?;
        store::agents::valid_certificates(&mut conn, &keys, clock.now_ms()).await
    };
    match valid.await {
        Ok(valid) => {
            for Check { key, done } in batch {
                let _ = done.send(Ok(valid.get(&key).copied()));
            }
        }
        Err(e) => {
            // Each caller gets the failure: a full pool still reads as busy, anything else
            // is logged here once.
            let pool_timed_out = matches!(e, sqlx::Error::PoolTimedOut);
            if !pool_timed_out {
                tracing::error!(error = %e, checks = batch.len(), "checking agent certificates failed");
            }
            for Check { done, .. } in batch {
                let e = if pool_timed_out { sqlx::Error::PoolTimedOut } else { sqlx::Error::Protocol(e.to_string()) };
                let _ = done.send(Err(Error::Database(e)));
            }
        }
    }
}
