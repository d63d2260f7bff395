//! Watch streams: newline-delimited `{"type", "object"}` events from a resourceVersion on,
//! selector-filtered (a label change out of the selector is a DELETED, into it an ADDED),
//! with periodic BOOKMARKs when asked, an in-stream 410 ERROR for a compacted
//! resourceVersion, `timeoutSeconds`, and a switch that drops every open watch (a fault).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::resources::{def, Res};
use crate::selectors::Selector;
use crate::store::{namespace_of, Change, EventType, StoreError};
use crate::Shared;

/// One event line, serialized straight from the stored object (no copy of it first: with
/// thousands of pods a watch's initial events are most of the fake server's work).
fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = Vec::with_capacity(256);
    s.extend_from_slice(b"{\"type\":\"");
    s.extend_from_slice(kind.as_bytes());
    s.extend_from_slice(b"\",\"object\":");
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut s, object);
    s.extend_from_slice(b"}\n");
    Bytes::from(s)
}

fn gone_event(rv: u64) -> Bytes {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {rv}"), "reason": "Expired", "code": 410});
    line("ERROR", &status)
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let body = Body::from_stream(futures::StreamExt::map(ReceiverStream::new(rx), Ok::<_, std::convert::Infallible>));
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A watch that answers only "410 Gone" (what a real API server streams for a compacted
/// resourceVersion), so the client must list again.
pub fn gone_stream(rv: u64) -> Response {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(gone_event(rv));
    stream_response(rx)
}

pub fn serve(shared: Arc<Shared>, res: Res, ns: String, selector: Selector, q: &HashMap<String, String>) -> Response {
    let rv = q.get("resourceVersion").and_then(|s| s.parse::<u64>().ok()).filter(|rv| *rv > 0);
    let bookmarks = matches!(q.get("allowWatchBookmarks").map(String::as_str), Some("true" | "1"));
    let timeout = q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
    let (backlog, live, start_rv) = match shared.store.watch_from(rv) {
        Ok(x) => x,
        Err(StoreError::Gone(rv)) => return gone_stream(rv),
        Err(_) => return gone_stream(0),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    // No resourceVersion: "start at the most recent", with a synthetic ADDED for what exists.
    let initial = if rv.is_none() { shared.store.list(res, (!ns.is_empty()).then_some(ns.as_str())).0 } else { Vec::new() };
    let w = Watch { shared: shared.clone(), res, ns, selector, last_rv: start_rv, tx };
    tokio::spawn(w.run(initial, backlog, live, bookmarks, timeout));
    stream_response(rx)
}

struct Watch {
    shared: Arc<Shared>,
    res: Res,
    ns: String,
    selector: Selector,
    /// The newest change this watch has seen (sent or filtered out): what a bookmark may claim.
    last_rv: u64,
    tx: mpsc::Sender<Bytes>,
}

impl Watch {
    fn in_scope(&self, obj: &Value) -> bool {
        (self.ns.is_empty() || namespace_of(obj) == self.ns) && self.selector.matches(obj)
    }

    /// The event this watch should send for a change, if any.
    fn translate(&self, c: &Change) -> Option<Bytes> {
        if c.res != self.res {
            return None;
        }
        let now = self.in_scope(&c.object);
        let before = c.old.as_ref().is_some_and(|o| self.in_scope(o));
        let kind = match (c.kind, before, now) {
            (EventType::Modified, true, false) => EventType::Deleted,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, false, false) => return None,
            (k, _, true) => k,
            (_, _, false) => return None,
        };
        Some(line(kind.as_str(), &c.object))
    }

    async fn send(&self, b: Bytes) -> bool {
        self.tx.send(b).await.is_ok()
    }

    async fn run(
        mut self,
        initial: Vec<Value>,
        backlog: Vec<Arc<Change>>,
        mut live: broadcast::Receiver<Arc<Change>>,
        bookmarks: bool,
        timeout: Option<Duration>,
    ) {
        let mut dropped = self.shared.drop_watches.subscribe();
        for obj in initial.iter().filter(|o| self.in_scope(o)) {
            if !self.send(line("ADDED", obj)).await {
                return;
            }
        }
        for c in backlog {
            self.last_rv = self.last_rv.max(c.rv);
            if let Some(b) = self.translate(&c) {
                if !self.send(b).await {
                    return;
                }
            }
        }
        let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(self.shared.config.bookmark_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                c = live.recv() => match c {
                    Ok(c) if c.rv <= self.last_rv => {}
                    Ok(c) => {
                        self.last_rv = c.rv;
                        if let Some(b) = self.translate(&c) {
                            if !self.send(b).await { return; }
                        }
                    }
                    // Too slow a reader: end the watch; the client resumes from its last rv.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let d = def(self.res);
                    let obj = json!({"kind": d.kind, "apiVersion": d.api_version(), "metadata": {"resourceVersion": self.last_rv.to_string()}});
                    if !self.send(line("BOOKMARK", &obj)).await { return; }
                }
                _ = &mut deadline => return,
                _ = dropped.changed() => return,
                _ = self.tx.closed() => return,
            }
        }
    }
}
