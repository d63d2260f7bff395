//! Leader election with a coordination.k8s.io/v1 Lease: the holder renews every `renew`; any
//! replica takes the Lease over once it has not been renewed for `duration`. Updates carry the
//! resourceVersion, so two replicas racing for it cannot both win (one gets 409). On graceful
//! shutdown the holder releases the Lease (clears the holder), so a standby takes over at its
//! next attempt instead of waiting for the lease to expire.

use std::time::Duration;

use ::kube::api::{Api, PostParams};
use ::kube::Client;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;

pub struct Elector {
    api: Api<Lease>,
    name: String,
    me: String,
    duration: Duration,
    renew: Duration,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, duration: Duration, renew: Duration) -> Elector {
        Elector { api: Api::namespaced(client, namespace), name: name.into(), me: me.into(), duration, renew }
    }

    /// Runs forever, publishing whether this replica leads. A replica that cannot renew within
    /// the lease duration steps down by itself, before another can take over.
    pub async fn run(self: std::sync::Arc<Self>, tx: watch::Sender<bool>) {
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            let now_leader = match self.try_acquire().await {
                Ok(held) => {
                    if held {
                        last_renewed = Some(tokio::time::Instant::now());
                    }
                    held
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease update failed");
                    // Keep leading only while our last renewal is still inside the lease.
                    last_renewed.is_some_and(|t| t.elapsed() < self.duration.mul_f32(0.8))
                }
            };
            if !now_leader {
                last_renewed = None;
            }
            tx.send_if_modified(|v| std::mem::replace(v, now_leader) != now_leader);
            tokio::time::sleep(self.renew).await;
        }
    }

    /// Gives the Lease up if this replica holds it: the holder is cleared, so any replica may
    /// take it at once. Callers stop acting as leader first (the session is stopped), so two
    /// leaders never overlap. A 409 (a renewal raced this) is re-read and retried.
    /// Returns whether a Lease held by this replica was released.
    pub async fn release(&self) -> Result<bool, ::kube::Error> {
        super::conflict::retry_on_conflict("Lease", || async move {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(false) };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| true)
        })
        .await
    }

    async fn try_acquire(&self) -> Result<bool, ::kube::Error> {
        let now = MicroTime(Timestamp::now());
        let secs = self.duration.as_secs().max(1) as i32;
        let mine = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(secs),
            acquire_time: acquired.or(Some(now.clone())),
            renew_time: Some(now.clone()),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let current = match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease { metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() }, spec: Some(mine(0, None)) };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(::kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Some(l) => l,
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_by_me = holder == self.me;
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(t), Some(d)) => Timestamp::now().as_millisecond() - t.0.as_millisecond() > i64::from(d) * 1000,
            _ => true,
        };
        if !held_by_me && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!held_by_me);
        let acquired = if held_by_me { spec.acquire_time.clone() } else { None };
        let mut next = current;
        next.spec = Some(mine(transitions, acquired));
        match self.api.replace(&self.name, &PostParams::default(), &next).await {
            Ok(_) => Ok(true),
            Err(::kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
