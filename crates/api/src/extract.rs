//! Extractors that validate input and answer problem+json naming the field at fault,
//! instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

/// The most a request body may hold.
pub(crate) const BODY_LIMIT: usize = 1024 * 1024;

/// A JSON body, deserialized strictly (unknown fields refused by the wire types), with
/// errors that name the JSON path of the bad value.
pub(crate) struct ApiJson<T>(pub(crate) T);

/// Like [`ApiJson`], for endpoints whose body is optional: an empty body is `None`.
pub(crate) struct OptionalJson<T>(pub(crate) Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::invalid("body", "a JSON body is required"));
        }
        parse_json(&bytes).map(Self)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        parse_json(&bytes).map(|v| Self(Some(v)))
    }
}

async fn body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if let Some(content_type) = req.headers().get(CONTENT_TYPE) {
        let ok = content_type
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            })
            .unwrap_or(false);
        if !ok {
            let mut err = ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "Content-Type: the body must be application/json",
            );
            err.set_field("Content-Type");
            return Err(err);
        }
    }
    // Refuse on the declared length before reading a byte of it.
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(too_large());
    }
    Bytes::from_request(req, state)
        .await
        .map_err(|rejection| match rejection {
            BytesRejection::FailedToBufferBody(_)
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
            {
                too_large()
            }
            other => ApiError::invalid("body", other.body_text()),
        })
}

fn too_large() -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than {BODY_LIMIT} bytes"),
    )
}

/// Deserializes JSON, naming the path of the first bad value (`lines[2].quantity`).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde accepts a struct written as an array of its fields; the API does not.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        ApiError::invalid(field_of(&path, &message), message)
    })?;
    de.end().map_err(|e| ApiError::invalid("body", e))?;
    Ok(value)
}

/// The field a serde error is about: its path, completed with the name serde puts in
/// backticks for unknown and missing fields (which the path does not include yet).
fn field_of(path: &str, message: &str) -> String {
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) => name.to_owned(),
        (".", None) => "body".to_owned(),
        (path, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => {
            path.to_owned()
        }
        (path, Some(name)) => format!("{path}.{name}"),
        (path, None) => path.to_owned(),
    }
}

/// A query string, deserialized strictly with the parameter name in every error.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Self)
            .map_err(|err| {
                let path = err.path().to_string();
                let message = err.into_inner().to_string();
                ApiError::invalid(field_of(&path, &message), message)
            })
    }
}

/// Path segments as strings; handlers parse them into domain types naming the segment.
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Self(v))
            .map_err(|rejection| ApiError::invalid("path", rejection.body_text()))
    }
}

/// The optional `Idempotency-Key` header. Its bytes are read as UTF-8 (HTTP carries
/// header bytes opaquely; `to_str` would refuse every non-ASCII key) and must be a
/// valid identifier.
pub(crate) struct IdemKey(pub(crate) Option<invsync_core::IdempotencyKey>);

pub(crate) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

impl<S: Send + Sync> FromRequestParts<S> for IdemKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .headers
            .get(IDEMPOTENCY_KEY)
            .map(|v| {
                let v = field(IDEMPOTENCY_KEY, std::str::from_utf8(v.as_bytes()))?;
                field(IDEMPOTENCY_KEY, invsync_core::IdempotencyKey::parse(v))
            })
            .transpose()
            .map(Self)
    }
}

/// Parses one input value into a domain type, naming the field when it is refused.
pub(crate) fn field<T, E: std::fmt::Display>(
    name: &str,
    parsed: Result<T, E>,
) -> Result<T, ApiError> {
    parsed.map_err(|e| ApiError::invalid(name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_missing_fields_are_named() {
        assert_eq!(
            field_of(".", "unknown field `colour`, expected one of"),
            "colour"
        );
        assert_eq!(field_of("lines[0]", "missing field `sku`"), "lines[0].sku");
        assert_eq!(
            field_of("lines[0].quantity", "must be"),
            "lines[0].quantity"
        );
        assert_eq!(field_of(".", "expected value"), "body");
        assert_eq!(field_of("foo", "unknown field `foo`, expected"), "foo");
    }
}
