//! The HTTP surface: one handler that parses Kubernetes REST paths (core `/api/v1` and
//! `/apis/{group}/{version}`, cluster-scoped and namespaced), authenticates, authorizes,
//! applies injected faults, then serves discovery, get/list/watch/create/update/patch/delete.
//! Every failure is a Kubernetes `Status` object; malformed input is a 4xx, never a panic.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use crate::rbac::{allowed, Attributes, User};
use crate::resources::{self, def, Res};
use crate::selectors::Selector;
use crate::store::StoreError;
use crate::{admission, patch, validate, watch, Shared};

const MAX_BODY: usize = 8 * 1024 * 1024;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

pub fn status(code: u16, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message.into(), "reason": reason, "code": code});
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NotFound(m) => status(404, "NotFound", m),
        StoreError::AlreadyExists(m) => status(409, "AlreadyExists", m),
        StoreError::Conflict => status(409, "Conflict", e.to_string()),
        StoreError::Gone(_) => status(410, "Expired", e.to_string()),
        StoreError::Invalid(m) => status(422, "Invalid", m),
        StoreError::BadRequest(m) => status(400, "BadRequest", m),
    }
}

/// A parsed resource path.
struct Target {
    res: Res,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

enum Route {
    Discovery(Value),
    Resource(Target),
    NotFound,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Route::Discovery(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1", "platform": "linux/amd64"})),
        ["api"] => Route::Discovery(resources::api_versions()),
        ["apis"] => Route::Discovery(resources::api_group_list()),
        ["api", "v1"] => resources::resource_list("", "v1").map_or(Route::NotFound, Route::Discovery),
        ["apis", g, v] => resources::resource_list(g, v).map_or(Route::NotFound, Route::Discovery),
        ["api", "v1", rest @ ..] => resource_route("", "v1", rest),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let target = |plural: &str, ns: &str, name: Option<&&str>, sub: Option<&&str>| match resources::find(group, version, plural) {
        Some(res) if def(res).namespaced != ns.is_empty() || name.is_none() => {
            Route::Resource(Target { res, namespace: ns.to_owned(), name: name.map(|s| s.to_string()), subresource: sub.map(|s| s.to_string()) })
        }
        _ => Route::NotFound,
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if resources::find(group, version, plural).is_some() && tail.len() <= 2 => {
            target(plural, ns, tail.first(), tail.get(1))
        }
        [plural, tail @ ..] if tail.len() <= 2 => target(plural, "", tail.first(), tail.get(1)),
        _ => Route::NotFound,
    }
}

fn query(req: &Request) -> HashMap<String, String> {
    let q = req.uri().query().unwrap_or("");
    url_decode_pairs(q)
}

fn url_decode_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or(()) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") {
        return "ok".into_response();
    }
    let bearer = req.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer ")).map(str::to_owned);
    let user = match shared.rbac.authenticate(bearer.as_deref()) {
        None => None,
        Some(None) => return status(401, "Unauthorized", "Unauthorized"),
        Some(Some(u)) => Some(u),
    };
    let target = match route(&path) {
        // Discovery is open to every authenticated user (system:discovery in a real cluster).
        Route::Discovery(v) => return ok(StatusCode::OK, &v),
        Route::NotFound => return status(404, "NotFound", format!("the server could not find the requested resource {path}")),
        Route::Resource(t) => t,
    };
    let q = query(&req);
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).unwrap_or("").split(';').next().unwrap_or("").trim().to_owned();
    let selector = match Selector::parse(q.get("labelSelector").map(String::as_str), q.get("fieldSelector").map(String::as_str)) {
        Ok(s) => s,
        Err(e) => return status(400, "BadRequest", e),
    };
    let is_watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb: &'static str = match (req.method().clone(), target.name.is_some()) {
        (Method::GET, false) if is_watch => "watch",
        (Method::GET, false) => "list",
        (Method::GET, true) => "get",
        (Method::POST, false) => "create",
        (Method::PUT, true) => "update",
        (Method::PATCH, true) => "patch",
        (Method::DELETE, true) => "delete",
        _ => return status(405, "MethodNotAllowed", "method not allowed on this path"),
    };
    let d = def(target.res);
    if let Some(user) = &user {
        // RBAC names a list/watch by its metadata.name field selector, never a create.
        let name = match verb {
            "create" => String::new(),
            "list" | "watch" => selector.field_name().unwrap_or("").to_owned(),
            _ => target.name.clone().unwrap_or_default(),
        };
        let attrs = Attributes {
            verb,
            group: d.group.into(),
            resource: d.plural.into(),
            subresource: target.subresource.clone(),
            namespace: target.namespace.clone(),
            name,
        };
        if !allowed(&shared.store, user, &attrs) {
            shared.rbac.record_denial(user, &attrs);
            return status(
                403,
                "Forbidden",
                format!("{} cannot {verb} resource {:?} in API group {:?} in the namespace {:?}", user.name, d.plural, d.group, target.namespace),
            );
        }
    }
    if let Some(code) = shared.faults.take(verb, d.plural) {
        if verb == "watch" && code == 410 {
            return watch::gone_stream(0);
        }
        return status(code, "InternalError", format!("injected fault {code}"));
    }
    let body = match to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return status(413, "RequestEntityTooLarge", "request body too large"),
    };
    // Who admission webhooks are told asked: the token's user even when RBAC is off.
    let requester = user.or_else(|| bearer.and_then(|t| shared.rbac.user(&t))).unwrap_or_else(User::anonymous);
    serve(&shared, target, verb, &q, selector, &body, &content_type, &requester).await
}

// The error is the response to send at once, so its size does not matter.
#[allow(clippy::result_large_err)]
fn parse_body(body: &[u8]) -> Result<Value, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(status(400, "BadRequest", "the body must be a JSON object")),
        Err(e) => Err(status(400, "BadRequest", format!("malformed JSON: {e}"))),
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Arc<Shared>,
    t: Target,
    verb: &str,
    q: &HashMap<String, String>,
    selector: Selector,
    body: &[u8],
    content_type: &str,
    requester: &User,
) -> Response {
    let d = def(t.res);
    let ns = t.namespace.as_str();
    let store = &shared.store;
    let name = t.name.clone().unwrap_or_default();
    match verb {
        "get" => match store.get(t.res, ns, &name) {
            Some(v) => ok(StatusCode::OK, &v),
            None => store_error(StoreError::NotFound(format!("{} {name:?}", d.plural))),
        },
        "list" => {
            // `limit` and `continue` page the list as kube-rs reflectors ask (500 a page).
            let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
                None => None,
                Some(Ok(l)) => Some(l),
                Some(Err(_)) => return status(400, "BadRequest", "limit must be a non-negative integer"),
            };
            let cont = q.get("continue").map(String::as_str).filter(|c| !c.is_empty());
            let page = match store.list_page(t.res, (!ns.is_empty()).then_some(ns), limit, cont, |o| selector.matches(o)) {
                Ok(p) => p,
                Err(StoreError::Gone(_)) => return status(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ),
                Err(e) => return store_error(e),
            };
            let mut meta = json!({"resourceVersion": page.rv.to_string()});
            if let Some(c) = page.cont {
                meta["continue"] = json!(c);
            }
            ok(StatusCode::OK, &json!({"kind": format!("{}List", d.kind), "apiVersion": d.api_version(), "metadata": meta, "items": page.items}))
        }
        "watch" => watch::serve(shared.clone(), t.res, ns.to_owned(), selector, q),
        "create" => {
            let obj = match parse_body(body) {
                Ok(v) => v,
                Err(r) => return r,
            };
            if d.kind == "TokenReview" {
                return ok(StatusCode::CREATED, &token_review(shared, obj));
            }
            if let Err(e) = validate::object(t.res, &obj) {
                return status(400, "BadRequest", e);
            }
            if d.namespaced && obj["metadata"]["namespace"].as_str().is_some_and(|n| n != ns) {
                return status(400, "BadRequest", "the namespace of the object does not match the namespace on the request");
            }
            let obj = match admission::admit(shared, t.res, ns, obj, requester).await {
                Ok(v) => v,
                Err(r) => return status(r.code, &r.reason, r.message),
            };
            // What the webhooks made of it must still be a valid object.
            if let Err(e) = validate::object(t.res, &obj) {
                return status(422, "Invalid", e);
            }
            match store.create(t.res, ns, obj) {
                Ok(v) => ok(StatusCode::CREATED, &v),
                Err(e) => store_error(e),
            }
        }
        "update" => {
            let obj = match parse_body(body) {
                Ok(v) => v,
                Err(r) => return r,
            };
            if let Err(e) = validate::object(t.res, &obj) {
                return status(400, "BadRequest", e);
            }
            let status_only = t.subresource.as_deref() == Some("status");
            match store.update(t.res, ns, &name, obj, status_only) {
                Ok(v) => ok(StatusCode::OK, &v),
                Err(e) => store_error(e),
            }
        }
        "patch" => {
            let p = match parse_body(body) {
                Ok(v) => v,
                Err(r) => return r,
            };
            patch_object(shared, &t, &name, content_type, p)
        }
        "delete" => match store.delete(t.res, ns, &name) {
            Ok(v) => ok(StatusCode::OK, &v),
            Err(e) => store_error(e),
        },
        _ => status(405, "MethodNotAllowed", "unsupported"),
    }
}

fn patch_object(shared: &Arc<Shared>, t: &Target, name: &str, content_type: &str, p: Value) -> Response {
    let strategic = match content_type {
        "application/merge-patch+json" | "application/apply-patch+yaml" => false,
        "application/strategic-merge-patch+json" => true,
        other => return status(415, "UnsupportedMediaType", format!("patch type {other:?} is not supported by the fake API server")),
    };
    let res = t.res;
    let result = shared.store.write(res, &t.namespace, name, |old| {
        if let Some(want) = p.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            if old.pointer("/metadata/resourceVersion").and_then(Value::as_str) != Some(want) {
                return Err(StoreError::Conflict);
            }
        }
        let mut new = old.clone();
        if strategic {
            patch::strategic(&mut new, &p);
        } else {
            patch::merge(&mut new, &p);
        }
        validate::object(res, &new).map_err(StoreError::Invalid)?;
        Ok(new)
    });
    match result {
        Ok(v) => ok(StatusCode::OK, &v),
        Err(e) => store_error(e),
    }
}

fn token_review(shared: &Shared, mut review: Value) -> Value {
    let token = review.pointer("/spec/token").and_then(Value::as_str).unwrap_or("");
    review["status"] = match shared.rbac.user(token) {
        // Tokens are not bound to audiences here: one is valid for whichever the caller asks.
        Some(u) => {
            json!({"authenticated": true, "user": {"username": u.name, "groups": u.groups}, "audiences": review.pointer("/spec/audiences").cloned().unwrap_or(json!([]))})
        }
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    review["apiVersion"] = json!("authentication.k8s.io/v1");
    review["kind"] = json!("TokenReview");
    review
}
