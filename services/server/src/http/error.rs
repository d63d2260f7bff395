//! `ApiError`: every failure of the HTTP API as an RFC 9457 `application/problem+json`
//! response with a stable `type`. Internal causes are logged with an id and never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    /// Stable, machine-readable problem type, e.g. `/problems/validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The offending fields, for validation and conflict problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct FieldError {
    /// Dotted path of the field in the request, e.g. `labels.env` or `name`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {detail}")]
    BadRequest { detail: String, field: Option<String> },
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("conflict: {detail}")]
    Conflict { kind: &'static str, detail: String, field: Option<String> },
    /// Well-formed but refused for a reason with its own problem type (an uploaded trust anchor
    /// that is not a CA, say): 422 like `Validation`, with `kind` naming the reason.
    #[error("refused: {detail}")]
    Refused { kind: &'static str, detail: String, field: &'static str },
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("service unavailable: {0}")]
    Unavailable(&'static str),
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad-request", "The request is malformed"),
            Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation", "The request has invalid fields"),
            Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication is required"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Not allowed"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Conflict { kind, .. } => (StatusCode::CONFLICT, kind, "Conflict"),
            Refused { kind, .. } => (StatusCode::UNPROCESSABLE_ENTITY, kind, "The request was refused"),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "The request body is too large"),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type"),
            TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too-many-requests", "Too many requests"),
            RouteNotFound => (StatusCode::NOT_FOUND, "route-not-found", "No such route"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error"),
        }
    }

    /// The problem document as sent to the client.
    pub fn problem(&self) -> Problem {
        let (status, kind, title) = self.parts();
        let (detail, errors) = match self {
            ApiError::BadRequest { detail, field } => (Some(detail.clone()), field.iter().map(|f| FieldError::new(f, detail)).collect()),
            ApiError::Validation(errors) => (errors.first().map(|e| format!("{}: {}", e.field, e.message)), errors.clone()),
            ApiError::Conflict { detail, field, .. } => (Some(detail.clone()), field.iter().map(|f| FieldError::new(f, detail)).collect()),
            ApiError::Refused { detail, field, .. } => (Some(detail.clone()), vec![FieldError::new(*field, detail)]),
            ApiError::Unauthenticated(d) | ApiError::Unavailable(d) => (Some((*d).to_owned()), vec![]),
            ApiError::Forbidden(d) => (Some(d.clone()), vec![]),
            ApiError::NotFound(what) => (Some(format!("{what} not found")), vec![]),
            ApiError::PayloadTooLarge => (Some("the request body exceeds 1 MiB".into()), vec![]),
            ApiError::UnsupportedMediaType => (Some("send the body as application/json".into()), vec![]),
            ApiError::TooManyRequests { retry_after_secs } => (Some(format!("try again in {retry_after_secs} seconds")), vec![]),
            ApiError::RouteNotFound => (Some("there is no such route; see /api/openapi.json".into()), vec![]),
            ApiError::MethodNotAllowed => (Some("the route does not accept this method".into()), vec![]),
            ApiError::Internal(_) => (Some("something went wrong on our side; it has been logged".into()), vec![]),
        };
        Problem { kind: format!("/problems/{kind}"), title: title.into(), status: status.as_u16(), detail, errors }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = %format!("{cause:#}"), "request failed");
        }
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).expect("a problem always serializes");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        match &self {
            ApiError::TooManyRequests { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthenticated(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// Fallback for paths no route matches.
pub async fn route_not_found() -> ApiError {
    ApiError::RouteNotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
