//! The error responses routes list in their OpenAPI `responses(...)`: one type per failure a
//! route can answer, each an `application/problem+json` `Problem`, so no route spells out a
//! status, a content type or a description by hand. It documents; `ApiError` answers.
//!
//! Which ones a route lists follows from what it uses (`tests/api/openapi.rs` holds every
//! route to it): `Principal` -> [`Unauthenticated`]; `ApiJson` -> [`JsonBody`]; `ApiPath` or
//! `ApiQuery` -> [`BadRequest`]; a role check -> [`Forbidden`]; a lookup by id ->
//! [`NotFound`]; checks of values -> [`Invalid`]; and every route that touches the database
//! -> [`Internal`].

use utoipa::IntoResponses;

use super::error::Problem;

/// The media type of every error body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A malformed path parameter or query string, or a request the route cannot serve.
#[derive(IntoResponses)]
#[response(status = 400, content_type = PROBLEM_JSON)]
pub struct BadRequest(pub Problem);

/// Missing, malformed, expired or revoked credentials.
#[derive(IntoResponses)]
#[response(status = 401, content_type = PROBLEM_JSON, headers(("WWW-Authenticate" = String, description = "Bearer")))]
pub struct Unauthenticated(pub Problem);

/// The caller's role does not allow this.
#[derive(IntoResponses)]
#[response(status = 403, content_type = PROBLEM_JSON)]
pub struct Forbidden(pub Problem);

/// No such resource in the caller's organization.
#[derive(IntoResponses)]
#[response(status = 404, content_type = PROBLEM_JSON)]
pub struct NotFound(pub Problem);

/// The request conflicts with the current state (a taken name, the last owner).
#[derive(IntoResponses)]
#[response(status = 409, content_type = PROBLEM_JSON)]
pub struct Conflict(pub Problem);

/// A field has a value the route refuses; `errors` names each field.
#[derive(IntoResponses)]
#[response(status = 422, content_type = PROBLEM_JSON)]
pub struct Invalid(pub Problem);

/// Throttled; retry after the given number of seconds.
#[derive(IntoResponses)]
#[response(status = 429, content_type = PROBLEM_JSON, headers(("Retry-After" = u64, description = "Seconds to wait")))]
pub struct TooManyRequests(pub Problem);

/// Something failed on the server's side; the cause is logged, never sent.
#[derive(IntoResponses)]
#[response(status = 500, content_type = PROBLEM_JSON)]
pub struct Internal(pub Problem);

/// A dependency (the database) is unreachable.
#[derive(IntoResponses)]
#[response(status = 503, content_type = PROBLEM_JSON)]
pub struct Unavailable(pub Problem);

/// Everything a JSON request body (`ApiJson`) can be refused with.
#[derive(IntoResponses)]
pub enum JsonBody {
    /// The body is not JSON.
    #[response(status = 400, content_type = PROBLEM_JSON)]
    Malformed(Problem),
    /// The body is larger than 1 MiB.
    #[response(status = 413, content_type = PROBLEM_JSON)]
    TooLarge(Problem),
    /// The body is not sent as `application/json`.
    #[response(status = 415, content_type = PROBLEM_JSON)]
    UnsupportedMediaType(Problem),
    /// The body does not have the request's shape, or a field has a refused value.
    #[response(status = 422, content_type = PROBLEM_JSON)]
    Invalid(Problem),
}
