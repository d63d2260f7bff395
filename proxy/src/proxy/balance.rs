//! A destination's endpoints as the proxy balances over them: power of two choices on
//! outstanding requests (two endpoints at random, the less loaded wins). Pure state, no I/O;
//! an endpoint keeps its load counter across updates so a new set does not forget the old load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use crate::destination::pb;

#[derive(Debug)]
pub struct Endpoint {
    /// IP:PORT to dial.
    pub address: String,
    /// The identity to expect over mTLS; None: unmeshed, plain TCP.
    pub identity: Option<String>,
    outstanding: AtomicUsize,
}

impl Endpoint {
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts one request (or connection) against this endpoint until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One answer of the controller, ready to pick from.
#[derive(Debug, Default)]
pub struct Set {
    /// Whether the controller knows the destination at all.
    pub exists: bool,
    pub endpoints: Vec<Arc<Endpoint>>,
}

impl Set {
    /// The set `msg` describes, reusing `prev`'s endpoints (and their load) where unchanged.
    pub fn update(prev: Option<&Set>, msg: &pb::Endpoints) -> Set {
        let old: HashMap<(&str, Option<&str>), &Arc<Endpoint>> =
            prev.map(|p| p.endpoints.iter().map(|e| ((e.address.as_str(), e.identity.as_deref()), e)).collect()).unwrap_or_default();
        let endpoints = msg
            .endpoints
            .iter()
            .map(|e| {
                let identity = (e.meshed && !e.identity.is_empty()).then(|| e.identity.clone());
                match old.get(&(e.address.as_str(), identity.as_deref())) {
                    Some(kept) => Arc::clone(kept),
                    None => Arc::new(Endpoint { address: e.address.clone(), identity, outstanding: AtomicUsize::new(0) }),
                }
            })
            .collect();
        Set { exists: msg.exists, endpoints }
    }

    /// Power of two choices among the endpoints not in `skip` (ones that just failed to connect).
    pub fn pick(&self, skip: &[String]) -> Option<Arc<Endpoint>> {
        let live: Vec<&Arc<Endpoint>> = self.endpoints.iter().filter(|e| !skip.contains(&e.address)).collect();
        match live.len() {
            0 => None,
            1 => Some(live[0].clone()),
            n => {
                let mut rng = rand::thread_rng();
                let a = rng.gen_range(0..n);
                let b = (a + rng.gen_range(1..n)) % n;
                let (a, b) = (live[a], live[b]);
                Some(if b.outstanding() < a.outstanding() { b.clone() } else { a.clone() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(addrs: &[&str]) -> pb::Endpoints {
        let endpoints = addrs
            .iter()
            .map(|a| pb::Endpoint { address: a.to_string(), meshed: true, identity: "spiffe://cluster.local/ns/api/sa/server".into(), pod: String::new() })
            .collect();
        pb::Endpoints { endpoints, exists: true }
    }

    #[test]
    fn two_choices_avoid_the_loaded_endpoint_and_skip_failed_ones() {
        let set = Set::update(None, &msg(&["10.0.0.1:80", "10.0.0.2:80"]));
        let busy = set.endpoints[0].clone();
        let _load: Vec<InFlight> = (0..5).map(|_| busy.start()).collect();
        for _ in 0..50 {
            assert_eq!(set.pick(&[]).unwrap().address, "10.0.0.2:80", "with two endpoints both are drawn; the idle one wins");
        }
        assert_eq!(set.pick(&["10.0.0.2:80".into()]).unwrap().address, "10.0.0.1:80");
        assert!(set.pick(&["10.0.0.1:80".into(), "10.0.0.2:80".into()]).is_none());
        assert!(Set::default().pick(&[]).is_none());
    }

    #[test]
    fn an_update_keeps_the_load_of_endpoints_that_stay() {
        let first = Set::update(None, &msg(&["10.0.0.1:80", "10.0.0.2:80"]));
        let held = first.endpoints[1].start();
        let second = Set::update(Some(&first), &msg(&["10.0.0.2:80", "10.0.0.3:80"]));
        assert_eq!(second.endpoints.iter().map(|e| (e.address.as_str(), e.outstanding())).collect::<Vec<_>>(), [("10.0.0.2:80", 1), ("10.0.0.3:80", 0)]);
        drop(held);
        assert_eq!(second.endpoints[0].outstanding(), 0);
        let mut unmeshed = msg(&["10.0.0.4:80"]);
        unmeshed.endpoints[0].meshed = false;
        assert_eq!(Set::update(None, &unmeshed).endpoints[0].identity, None);
    }

    #[test]
    fn load_spreads_over_every_endpoint() {
        let set = Set::update(None, &msg(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]));
        let mut held = Vec::new();
        for _ in 0..30 {
            held.push(set.pick(&[]).unwrap().start());
        }
        for e in &set.endpoints {
            assert!((5..=15).contains(&e.outstanding()), "{}: {}", e.address, e.outstanding());
        }
    }
}
