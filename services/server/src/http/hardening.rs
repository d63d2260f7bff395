//! Response hardening for every route: browser security headers (no framing, no sniffing, a
//! strict content policy the dashboard's own assets satisfy), and a net that turns any
//! framework rejection (axum's plain-text 4xx/5xx) into the service's own error. It never
//! touches a response the service produced itself.

use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, FieldError};

/// Scripts, styles and requests only from the service itself, no plugins, no framing (the
/// dashboard's one-click Revoke and Delete must not be clickjacked). Charts are inline SVG
/// elements, which `img-src` does not govern.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Adds the security headers to every response (JSON too: harmless there, and no route can forget them).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        // For browsers that predate frame-ancestors.
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in set {
        headers.entry(name).or_insert(HeaderValue::from_static(value));
    }
    response
}

/// Rejections of axum's extractors (and anything else of the framework) are plain text; the
/// service answers problem+json, or an error page to a browser navigating the dashboard.
pub async fn own_errors(req: Request, next: Next) -> Response {
    let wants_page = accepts_html(&req);
    let response = next.run(req).await;
    let status = response.status();
    let plain = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    // Framework messages are a line or two; anything longer is cut, never buffered whole.
    let text = match to_bytes(response.into_body(), 4096).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let error = framework_error(status, text);
    if wants_page {
        crate::ui::error_page(&error)
    } else {
        error.into_response()
    }
}

fn accepts_html(req: &Request) -> bool {
    req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"))
}

/// The service's error for a framework rejection with this status and message.
fn framework_error(status: StatusCode, text: String) -> ApiError {
    let detail = if text.trim().is_empty() { "the request could not be read".to_owned() } else { text.trim().to_owned() };
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Validation(vec![FieldError::new("body", detail)]),
        StatusCode::NOT_FOUND => ApiError::RouteNotFound,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        s if s.is_client_error() => ApiError::BadRequest { detail, field: None },
        _ => ApiError::Internal(anyhow::anyhow!("framework error {status}: {detail}")),
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::{post, MethodRouter};
    use axum::{middleware, Form, Json};
    use tower::ServiceExt;

    use super::*;

    #[derive(serde::Deserialize)]
    struct Named {
        #[allow(dead_code)]
        name: u32,
    }

    /// One handler behind the two layers (a MethodRouter: no path routing needed).
    fn app(path: &str) -> MethodRouter {
        let handler = match path {
            "/form" => post(|Form(_): Form<Named>| async { "ok" }),
            _ => post(|Json(_): Json<Named>| async { "ok" }),
        };
        handler.layer(middleware::from_fn(own_errors)).layer(middleware::from_fn(security_headers))
    }

    async fn send(path: &str, content_type: &str, accept: &str, body: &'static str) -> (StatusCode, String, String, Response) {
        let req = Request::post(path).header("content-type", content_type).header("accept", accept).body(axum::body::Body::from(body)).unwrap();
        let response = app(path).oneshot(req).await.unwrap();
        let ct = response.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let (parts, body) = response.into_parts();
        let text = String::from_utf8(to_bytes(body, 1 << 20).await.unwrap().to_vec()).unwrap();
        (parts.status, ct, text, Response::from_parts(parts, axum::body::Body::empty()))
    }

    #[tokio::test]
    async fn framework_rejections_become_problems_or_pages() {
        let (status, ct, body, _) = send("/form", "application/x-www-form-urlencoded", "*/*", "name=abc").await;
        assert_eq!((status, ct.as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "application/problem+json"), "{body}");
        assert!(body.contains("/problems/validation") && body.contains("name"), "{body}");

        let (status, ct, body, _) = send("/json", "text/plain", "application/json", "{}").await;
        assert_eq!((status, ct.as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/problem+json"), "{body}");

        let (status, ct, body, _) = send("/json", "application/json", "application/json", "{\"name\":").await;
        assert_eq!((status, ct.as_str()), (StatusCode::BAD_REQUEST, "application/problem+json"), "{body}");
        assert!(body.contains("/problems/bad-request"), "{body}");

        // A browser navigating gets a page, with the security headers.
        let (status, ct, body, response) = send("/form", "application/x-www-form-urlencoded", "text/html,*/*", "name=abc").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(ct.starts_with("text/html") && body.contains("<h1>") && body.contains("name"), "{ct} {body}");
        assert_eq!(response.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("frame-ancestors 'none'"));
    }
}
