//! The object store: every object as Kubernetes JSON, one cluster-wide resourceVersion counter,
//! and a bounded event history so watches can resume from a resourceVersion (older ones get
//! 410 Gone, as after etcd compaction). It never interprets objects beyond their metadata.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::resources::{def, Res};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub res: Res,
    pub kind: EventType,
    /// The object after the change (for a delete: as it was, with the delete's resourceVersion).
    pub object: Value,
    /// The object before the change, so selector-filtered watches can turn a label change into
    /// ADDED or DELETED as the real API server does.
    pub old: Option<Value>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("the object has been modified; please apply your changes to the latest version and try again")]
    Conflict,
    #[error("too old resource version: {0}")]
    Gone(u64),
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error("{0}")]
    BadRequest(String),
}

type Key = (Res, String, String);

/// One page of a list and, when more follow, the token for the next.
pub struct Page {
    pub items: Vec<Value>,
    pub rv: u64,
    pub cont: Option<String>,
}

/// What a continue token carries: the list's resourceVersion and the last key served. Opaque to
/// clients (hex of JSON, so it needs no escaping in a query string).
struct Continue {
    rv: u64,
    ns: String,
    name: String,
}

impl Continue {
    fn encode(&self) -> String {
        hex::encode(json!({"v": "meta.k8s.io/v1", "rv": self.rv, "ns": self.ns, "name": self.name}).to_string())
    }

    fn decode(token: &str) -> Option<Continue> {
        let v: Value = serde_json::from_slice(&hex::decode(token).ok()?).ok()?;
        Some(Continue { rv: v.get("rv")?.as_u64()?, ns: v.get("ns")?.as_str()?.to_owned(), name: v.get("name")?.as_str()?.to_owned() })
    }
}

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// Watches may resume from resourceVersions >= this.
    floor: u64,
    history_cap: usize,
}

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Change>>,
}

pub fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

pub fn namespace_of(v: &Value) -> &str {
    v.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("")
}

pub fn rv_of(v: &Value) -> Option<u64> {
    v.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|s| s.parse().ok())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What a watch starts from: the changes already in the history, a receiver for the rest and
/// the resourceVersion it is current at.
pub type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>, u64);

impl Store {
    pub fn new(history_cap: usize) -> Store {
        let (tx, _) = broadcast::channel(16_384);
        Store { inner: Mutex::new(Inner { rv: 1, objects: BTreeMap::new(), history: VecDeque::new(), floor: 1, history_cap }), tx }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, res: Res, ns: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(&(res, ns.to_owned(), name.to_owned())).cloned()
    }

    /// All objects of a resource (in one namespace, or all), and the resourceVersion they are at.
    /// One namespace is a range of the ordered map, so the simulator's per-owner lookups cost
    /// what that namespace holds, not what the whole cluster holds.
    pub fn list(&self, res: Res, ns: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = Self::scope(&inner, res, ns, None).map(|(_, v)| v.clone()).collect();
        (items, inner.rv)
    }

    /// The objects of `res` (in `ns`, or all) in key order, strictly after `after` if given.
    fn scope<'a>(inner: &'a Inner, res: Res, ns: Option<&'a str>, after: Option<&(String, String)>) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some((n, name)) => Bound::Excluded((res, n.clone(), name.clone())),
            None => Bound::Included((res, ns.unwrap_or("").to_owned(), String::new())),
        };
        inner.objects.range((start, Bound::Unbounded)).take_while(move |((r, n, _), _)| *r == res && ns.is_none_or(|want| n == want))
    }

    /// One page of a list: up to `limit` objects that `keep` accepts, in key order after
    /// `cont` (a continue token from the previous page). Every page of one list reports the
    /// first page's resourceVersion, so a watch from it replays whatever changed while the
    /// client was paging; later pages are read from the present, not from a snapshot (a real
    /// API server reads etcd at that revision), which a reflector cannot tell apart because the
    /// replayed changes are idempotent for it. A token older than the history is 410 Gone.
    pub fn list_page(&self, res: Res, ns: Option<&str>, limit: Option<usize>, cont: Option<&str>, keep: impl Fn(&Value) -> bool) -> Result<Page, StoreError> {
        let inner = self.lock();
        let (rv, after) = match cont {
            None => (inner.rv, None),
            Some(token) => {
                let c = Continue::decode(token).ok_or_else(|| StoreError::BadRequest("invalid continue token".into()))?;
                if c.rv < inner.floor {
                    return Err(StoreError::Gone(c.rv));
                }
                (c.rv, Some((c.ns, c.name)))
            }
        };
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last = None;
        let mut more = false;
        for (key, v) in Self::scope(&inner, res, ns, after.as_ref()).filter(|(_, v)| keep(v)) {
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(v.clone());
            last = Some(key);
        }
        let cont = if more { last.map(|(_, n, name)| Continue { rv, ns: n.clone(), name: name.clone() }.encode()) } else { None };
        Ok(Page { items, rv, cont })
    }

    pub fn create(&self, res: Res, ns: &str, mut obj: Value) -> Result<Value, StoreError> {
        let d = def(res);
        let name = name_of(&obj).to_owned();
        if name.is_empty() {
            return Err(StoreError::Invalid("metadata.name is required".into()));
        }
        let mut inner = self.lock();
        let key = (res, if d.namespaced { ns.to_owned() } else { String::new() }, name.clone());
        if inner.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists(format!("{} {name:?}", d.plural)));
        }
        inner.rv += 1;
        let rv = inner.rv;
        obj["apiVersion"] = json!(d.api_version());
        obj["kind"] = json!(d.kind);
        let meta = &mut obj["metadata"];
        if d.namespaced {
            meta["namespace"] = json!(ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["uid"] = json!(format!("{:032x}", rand::random::<u128>()));
        meta["resourceVersion"] = json!(rv.to_string());
        meta["creationTimestamp"] = json!(now());
        if obj.get("spec").is_some() {
            obj["metadata"]["generation"] = json!(1);
        }
        inner.objects.insert(key, obj.clone());
        self.publish(&mut inner, Change { rv, res, kind: EventType::Added, object: obj.clone(), old: None });
        Ok(obj)
    }

    /// Replaces an object. A resourceVersion in `obj` must match the stored one (else 409);
    /// `status_only` keeps the stored spec (the `/status` subresource), otherwise the stored
    /// status is kept unless the caller sent one.
    pub fn update(&self, res: Res, ns: &str, name: &str, obj: Value, status_only: bool) -> Result<Value, StoreError> {
        self.write(res, ns, name, |old| {
            if let Some(rv) = rv_of(&obj) {
                if Some(rv) != rv_of(old) {
                    return Err(StoreError::Conflict);
                }
            }
            let mut new = obj;
            if status_only {
                let status = new.get("status").cloned();
                new = old.clone();
                if let Some(s) = status {
                    new["status"] = s;
                }
            } else if new.get("status").is_none() {
                if let Some(s) = old.get("status") {
                    new["status"] = s.clone();
                }
            }
            Ok(new)
        })
    }

    /// Read-modify-write under the store lock (patches and the simulator): immutable metadata is
    /// restored, the generation bumped when the spec changed, and no event sent for a no-op.
    pub fn write(&self, res: Res, ns: &str, name: &str, f: impl FnOnce(&Value) -> Result<Value, StoreError>) -> Result<Value, StoreError> {
        let d = def(res);
        let mut inner = self.lock();
        let key = (res, if d.namespaced { ns.to_owned() } else { String::new() }, name.to_owned());
        let old = inner.objects.get(&key).ok_or_else(|| StoreError::NotFound(format!("{} {name:?}", d.plural)))?.clone();
        let mut new = f(&old)?;
        if !new.is_object() {
            return Err(StoreError::Invalid("an object must be a JSON object".into()));
        }
        for field in ["name", "namespace", "uid", "creationTimestamp", "resourceVersion", "generation"] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        new["apiVersion"] = json!(d.api_version());
        new["kind"] = json!(d.kind);
        if new == old {
            return Ok(old);
        }
        if new.get("spec") != old.get("spec") {
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        inner.rv += 1;
        let rv = inner.rv;
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.objects.insert(key, new.clone());
        self.publish(&mut inner, Change { rv, res, kind: EventType::Modified, object: new.clone(), old: Some(old) });
        Ok(new)
    }

    pub fn delete(&self, res: Res, ns: &str, name: &str) -> Result<Value, StoreError> {
        let d = def(res);
        let mut inner = self.lock();
        let key = (res, if d.namespaced { ns.to_owned() } else { String::new() }, name.to_owned());
        let mut old = inner.objects.remove(&key).ok_or_else(|| StoreError::NotFound(format!("{} {name:?}", d.plural)))?;
        inner.rv += 1;
        let rv = inner.rv;
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.publish(&mut inner, Change { rv, res, kind: EventType::Deleted, object: old.clone(), old: None });
        Ok(old)
    }

    fn publish(&self, inner: &mut Inner, change: Change) {
        let change = Arc::new(change);
        inner.history.push_back(change.clone());
        while inner.history.len() > inner.history_cap {
            if let Some(c) = inner.history.pop_front() {
                inner.floor = c.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
    }

    /// Subscribes to changes after `rv` (None: from now). Returns the changes already in the
    /// history after `rv` and a receiver for the rest, taken atomically so none is missed.
    pub fn watch_from(&self, rv: Option<u64>) -> Result<WatchStart, StoreError> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let Some(rv) = rv else { return Ok((Vec::new(), rx, inner.rv)) };
        if rv < inner.floor && rv < inner.rv {
            return Err(StoreError::Gone(rv));
        }
        let backlog = inner.history.iter().filter(|c| c.rv > rv).cloned().collect();
        Ok((backlog, rx, rv.max(inner.floor)))
    }

    /// Forgets the whole history, as an etcd compaction would: every watch that resumes from an
    /// older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.floor = inner.rv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn stale_updates_conflict_and_history_compacts() {
        let s = Store::new(2);
        let cm = find("", "v1", "configmaps").unwrap();
        let a = s.create(cm, "ns", json!({"metadata": {"name": "a"}, "data": {"k": "1"}})).unwrap();
        let stale = a.clone();
        let mut b = a.clone();
        b["data"]["k"] = json!("2");
        s.update(cm, "ns", "a", b, false).unwrap();
        assert_eq!(s.update(cm, "ns", "a", stale, false), Err(StoreError::Conflict));
        for i in 0..3 {
            s.write(cm, "ns", "a", |o| Ok(json!({"metadata": o["metadata"].clone(), "data": {"k": i.to_string()}}))).unwrap();
        }
        assert!(matches!(s.watch_from(rv_of(&a)), Err(StoreError::Gone(_))));
        assert_eq!(s.watch_from(Some(s.current_rv() - 1)).unwrap().0.len(), 1);
    }
}
