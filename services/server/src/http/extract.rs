//! Request extractors whose rejections are problem documents: JSON bodies (with the
//! offending field's path), path parameters and query strings.

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, StatusCode};
use serde::de::DeserializeOwned;

use super::error::{ApiError, FieldError};

/// A JSON request body. Unknown fields are rejected where the type says
/// `deny_unknown_fields`; errors name the field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest { detail: "could not read the request body".into(), field: None }
            }
        })?;
        // Every request body of the API is an object; serde would also take a struct written as
        // an array of its fields (`[null, null]`), which no schema allows.
        if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::Validation(vec![FieldError::new("body", "must be a JSON object")]));
        }
        parse_json(&body).map(ApiJson)
    }
}

/// Deserializes JSON, turning serde's error into a field-level problem.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = inner.to_string();
                let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
                let field = if path == "." { "body".to_owned() } else { path };
                ApiError::Validation(vec![FieldError::new(field, message)])
            }
            _ => ApiError::BadRequest { detail: format!("malformed JSON: {inner}"), field: None },
        }
    })
}

/// Path parameters; a malformed id is a 400 naming the parameter, not a 500 or a panic.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::BadRequest { detail: format!("invalid path parameter: {}", e.body_text()), field: Some("path".into()) })
    }
}

/// Query parameters.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::BadRequest { detail: format!("invalid query string: {}", e.body_text()), field: Some("query".into()) })
    }
}

/// An optional whole number in a JSON body. JSON Schema's `integer` (what the document says)
/// includes `5.0`, which serde refuses for integer types; this takes it, and nothing fractional.
pub fn whole_number<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::{Deserialize, Error};
    let Some(n) = Option::<serde_json::Number>::deserialize(de)? else {
        return Ok(None);
    };
    let whole = n.as_i64().or_else(|| as_whole(n.as_f64()?));
    let whole = whole.ok_or_else(|| D::Error::custom(format!("invalid value: {n}, expected a whole number")))?;
    T::try_from(whole).map(Some).map_err(|_| D::Error::custom(format!("{whole} is out of range")))
}

/// Turns the whole-number floats (`5.0`) of a JSON object into integers, in place.
pub fn whole_numbers(map: &mut serde_json::Map<String, serde_json::Value>) {
    for value in map.values_mut() {
        if let Some(n) = value.as_f64().filter(|_| value.is_f64()).and_then(as_whole) {
            *value = serde_json::Value::from(n);
        }
    }
}

/// `f` as an integer when it is one exactly (within the 53 bits a double holds exactly).
fn as_whole(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0).then_some(f as i64)
}
