//! Short-lived caches in front of the reads that every API call and every fleet listing make:
//! who a bearer token belongs to, and rendered pages of the cluster list.
//!
//! An entry lives at most `read_cache_ms` (default 1 s; 0 turns both caches off). A change
//! made through this replica drops what it affects at once, and on PostgreSQL the other
//! replicas hear of it through `gateway::dispatch` within milliseconds. So a logout, a
//! revoked token or a removed member is refused at once, and what can lag by up to
//! `read_cache_ms` is only what changes without a notice: an agent going quiet (stale,
//! disconnected) and its last-seen time.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::domain::OrgId;
use crate::http::auth::Principal;
use crate::http::error::ApiError;

/// Bounds on memory: principals are small; pages are weighed by their bytes.
const MAX_PRINCIPALS: u64 = 100_000;
const MAX_PAGE_BYTES: u64 = 64 * 1024 * 1024;

pub struct ReadCache {
    enabled: bool,
    /// By SHA-256 of the bearer token (the token itself is never kept), with its expiry (ms)
    /// and the access generation it was checked under.
    principals: moka::sync::Cache<[u8; 32], (Principal, i64, u64)>,
    /// Bumped by every logout, revocation and membership change.
    access_generation: AtomicU64,
    pages: moka::future::Cache<PageKey, Bytes>,
    /// Bumped by every change to an organization's clusters, so pages rendered before the
    /// change (even ones still being rendered) are never served after it.
    generations: Mutex<HashMap<OrgId, u64>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PageKey {
    org: OrgId,
    generation: u64,
    /// The request's query string: it alone decides the page.
    query: String,
}

impl ReadCache {
    pub fn new(ttl: Duration) -> ReadCache {
        let enabled = !ttl.is_zero();
        // moka refuses a zero lifetime; a disabled cache never stores anything anyway.
        let ttl = ttl.max(Duration::from_millis(1));
        ReadCache {
            enabled,
            principals: moka::sync::Cache::builder().max_capacity(MAX_PRINCIPALS).time_to_live(ttl).build(),
            pages: moka::future::Cache::builder()
                .max_capacity(MAX_PAGE_BYTES)
                .weigher(|k: &PageKey, v: &Bytes| (k.query.len() + v.len()).try_into().unwrap_or(u32::MAX))
                .time_to_live(ttl)
                .build(),
            access_generation: AtomicU64::new(0),
            generations: Mutex::default(),
        }
    }

    /// The principal behind a bearer token: the one `check` found moments ago, or `check`'s
    /// answer now. `check` also gives the token's expiry (ms), after which it is never served.
    pub async fn principal<F>(&self, token: &str, now_ms: i64, check: F) -> Result<Principal, ApiError>
    where
        F: Future<Output = Result<(Principal, i64), ApiError>>,
    {
        // Read before checking: a check that raced a revocation is stored under the old
        // generation and never served.
        let generation = self.access_generation.load(Ordering::Acquire);
        let key = key(token);
        if let Some((principal, expires_at, seen)) = self.principals.get(&key) {
            if seen == generation && now_ms < expires_at {
                return Ok(principal);
            }
        }
        let (principal, expires_at) = check.await?;
        if self.enabled {
            self.principals.insert(key, (principal, expires_at, generation));
        }
        Ok(principal)
    }

    /// After a logout, a revocation or a membership change: every token is checked afresh.
    pub fn access_changed(&self) {
        self.access_generation.fetch_add(1, Ordering::AcqRel);
        self.principals.invalidate_all();
    }

    /// A page of the organization's cluster list: the one rendered for the same query moments
    /// ago, or a fresh one. Concurrent requests for a missing page wait for one rendering.
    pub async fn clusters_page<F>(&self, org: OrgId, query: &str, render: F) -> Result<Bytes, ApiError>
    where
        F: Future<Output = Result<Bytes, ApiError>>,
    {
        if !self.enabled {
            return render.await;
        }
        let generation = self.generations.lock().expect("generation lock poisoned").get(&org).copied().unwrap_or(0);
        let key = PageKey { org, generation, query: query.to_owned() };
        self.pages.try_get_with(key, render).await.map_err(|e: Arc<ApiError>| match Arc::try_unwrap(e) {
            Ok(e) => e,
            // Another waiter holds the error too; it was an internal one (input is checked first).
            Err(e) => ApiError::Internal(anyhow::anyhow!("{e}")),
        })
    }

    /// The organization's clusters changed: its pages are rendered afresh.
    pub fn clusters_changed(&self, org: OrgId) {
        *self.generations.lock().expect("generation lock poisoned").entry(org).or_insert(0) += 1;
    }
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::Actor;
    use crate::domain::{Role, TokenId};

    fn principal() -> Principal {
        Principal { org_id: OrgId::new(), role: Role::Viewer, actor: Actor::ApiToken(TokenId::new()) }
    }

    async fn lookup(cache: &ReadCache, token: &str, now: i64, fresh: Principal, expires_at: i64) -> Principal {
        cache.principal(token, now, async { Ok((fresh, expires_at)) }).await.unwrap()
    }

    #[tokio::test]
    async fn principals_expire_with_their_token_and_are_dropped_on_access_changes() {
        let cache = ReadCache::new(Duration::from_secs(60));
        let (first, second) = (principal(), principal());
        assert_eq!(lookup(&cache, "mft_a", 0, first, 1_000).await.org_id, first.org_id);
        assert_eq!(lookup(&cache, "mft_a", 999, second, 1_000).await.org_id, first.org_id, "served from the cache");
        assert_eq!(lookup(&cache, "mft_b", 999, second, 1_000).await.org_id, second.org_id, "tokens never share an entry");
        assert_eq!(lookup(&cache, "mft_a", 1_000, second, 2_000).await.org_id, second.org_id, "a token past its expiry is checked again");
        cache.access_changed();
        assert_eq!(lookup(&cache, "mft_a", 1_001, first, 2_000).await.org_id, first.org_id, "checked afresh after an access change");
    }

    #[tokio::test]
    async fn a_check_that_raced_an_access_change_is_not_served_after_it() {
        let cache = ReadCache::new(Duration::from_secs(60));
        let (before, after) = (principal(), principal());
        let raced = cache.principal("mft_a", 0, async {
            cache.access_changed(); // the revocation commits while the check runs
            Ok((before, i64::MAX))
        });
        assert_eq!(raced.await.unwrap().org_id, before.org_id);
        assert_eq!(lookup(&cache, "mft_a", 0, after, i64::MAX).await.org_id, after.org_id);
    }

    #[tokio::test]
    async fn a_change_to_the_organization_renders_its_pages_afresh() {
        let cache = ReadCache::new(Duration::from_secs(60));
        let (org, other) = (OrgId::new(), OrgId::new());
        let page = |body: &'static str| async move { Ok(Bytes::from_static(body.as_bytes())) };
        assert_eq!(cache.clusters_page(org, "limit=1", page("one")).await.unwrap(), "one");
        assert_eq!(cache.clusters_page(org, "limit=1", page("two")).await.unwrap(), "one", "served from the cache");
        assert_eq!(cache.clusters_page(other, "limit=1", page("other")).await.unwrap(), "other", "organizations never share pages");
        cache.clusters_changed(org);
        assert_eq!(cache.clusters_page(org, "limit=1", page("three")).await.unwrap(), "three");
        assert_eq!(cache.clusters_page(other, "limit=1", page("four")).await.unwrap(), "other");
    }

    #[tokio::test]
    async fn a_zero_lifetime_turns_caching_off() {
        let cache = ReadCache::new(Duration::ZERO);
        let (first, second) = (principal(), principal());
        lookup(&cache, "mft_a", 0, first, i64::MAX).await;
        assert_eq!(lookup(&cache, "mft_a", 0, second, i64::MAX).await.org_id, second.org_id);
        let org = OrgId::new();
        cache.clusters_page(org, "", async { Ok(Bytes::from_static(b"one")) }).await.unwrap();
        assert_eq!(cache.clusters_page(org, "", async { Ok(Bytes::from_static(b"two")) }).await.unwrap(), "two");
    }
}
