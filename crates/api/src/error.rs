//! Every error the API answers, as RFC 9457 `application/problem+json`.
//!
//! Business refusals carry their details (`lines`, `field`, `oldest_offset`);
//! internal failures become an opaque 500 and are logged here, once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use invsync_core::{DomainError, ShortLine};
use invsync_ledger::LedgerError;
use serde::Serialize;

/// The `code` member of a problem: a stable, documented machine-readable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Gone,
    InsufficientStock,
    InsufficientOnHand,
    IdempotencyConflict,
    VersionConflict,
    InvalidState,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unavailable,
    Internal,
}

impl ErrorCode {
    fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Gone => StatusCode::GONE,
            Self::InsufficientStock
            | Self::InsufficientOnHand
            | Self::IdempotencyConflict
            | Self::VersionConflict
            | Self::InvalidState => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::InvalidRequest => "Invalid request",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Gone => "Gone",
            Self::InsufficientStock => "Insufficient stock",
            Self::InsufficientOnHand => "Insufficient stock on hand",
            Self::IdempotencyConflict => "Idempotency conflict",
            Self::VersionConflict => "Version conflict",
            Self::InvalidState => "Invalid state",
            Self::PayloadTooLarge => "Payload too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::Unavailable => "Service unavailable",
            Self::Internal => "Internal error",
        }
    }
}

/// A problem document (RFC 9457) with invsync's extension members.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[schema(value_type = String)]
    pub code: ErrorCode,
    /// The request field (JSON path, query parameter, path segment or header) at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `insufficient_stock`: every line that could not be served.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub lines: Option<Vec<ShortLine>>,
    /// For `gone`: the oldest offset still retained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_offset: Option<i64>,
    /// For `unavailable`: `unknown` when the write may or may not have been applied
    /// (the connection broke while it committed). Retry it with the same
    /// `Idempotency-Key` (or external_ref) to apply it exactly once. Absent: it was
    /// not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "unknown")]
    pub outcome: Option<&'static str>,
}

/// An error answer. Built by handlers and extractors; rendered by `IntoResponse`.
#[derive(Debug, Clone)]
pub struct ApiError(Box<Problem>);

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self(Box::new(Problem {
            problem_type: format!("urn:invsync:problem:{}", code_name(code)),
            title: code.title(),
            status: code.status().as_u16(),
            detail: detail.into(),
            code,
            field: None,
            lines: None,
            oldest_offset: None,
            outcome: None,
        }))
    }

    /// A 400 naming the offending field.
    pub fn invalid(field: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        let field = field.into();
        let mut err = Self::new(ErrorCode::InvalidRequest, format!("{field}: {detail}"));
        err.0.field = Some(field);
        err
    }

    /// Names the request field an error other than a 400 is about.
    pub fn set_field(&mut self, field: impl Into<String>) {
        self.0.field = Some(field.into());
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn gone(oldest_offset: i64) -> Self {
        let mut err = Self::new(
            ErrorCode::Gone,
            format!(
                "those events are past retention; the oldest retained offset is {oldest_offset}"
            ),
        );
        err.0.oldest_offset = Some(oldest_offset);
        err
    }

    pub fn problem(&self) -> &Problem {
        &self.0
    }
}

fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl From<DomainError> for ApiError {
    fn from(err: DomainError) -> Self {
        let detail = err.to_string();
        match err {
            DomainError::InsufficientStock { lines } => {
                let mut e = Self::new(ErrorCode::InsufficientStock, detail);
                e.0.lines = Some(lines);
                e
            }
            DomainError::InsufficientOnHand { .. } => {
                Self::new(ErrorCode::InsufficientOnHand, detail)
            }
            DomainError::IdempotencyConflict(_) => {
                Self::new(ErrorCode::IdempotencyConflict, detail)
            }
            DomainError::VersionConflict { .. } => Self::new(ErrorCode::VersionConflict, detail),
            DomainError::InvalidState(_) => Self::new(ErrorCode::InvalidState, detail),
            DomainError::NotFound(what) => Self::not_found(what),
        }
    }
}

impl From<LedgerError> for ApiError {
    fn from(err: LedgerError) -> Self {
        match err {
            LedgerError::Domain(e) => e.into(),
            LedgerError::Unavailable(detail) | LedgerError::Contention(detail) => {
                tracing::warn!(error = %detail, "ledger unavailable");
                Self::new(
                    ErrorCode::Unavailable,
                    "the ledger is unavailable; retry later",
                )
            }
            LedgerError::OutcomeUnknown(detail) => {
                tracing::warn!(error = %detail, "write outcome unknown");
                let mut err = Self::new(
                    ErrorCode::Unavailable,
                    "the ledger connection broke while this write committed: it may or may not \
                     have been applied; retry with the same Idempotency-Key (or external_ref) \
                     to apply it exactly once",
                );
                err.0.outcome = Some("unknown");
                err
            }
            LedgerError::Fenced { .. } => {
                tracing::warn!(error = %err, "write refused: the lease moved on");
                Self::new(
                    ErrorCode::Unavailable,
                    "this instance no longer holds the lease this write needs; retry (another \
                     instance works it now)",
                )
            }
            LedgerError::Internal(detail) => {
                tracing::error!(error = %detail, "internal ledger error");
                Self::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl From<invsync_core::RequestError> for ApiError {
    fn from(err: invsync_core::RequestError) -> Self {
        Self::invalid(err.field, err.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.code.status();
        let body = serde_json::to_vec(&*self.0).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.0.code == ErrorCode::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unknown_commit_says_outcome_unknown() {
        let unknown = ApiError::from(LedgerError::OutcomeUnknown("connection reset".into()));
        let p = unknown.problem();
        assert_eq!((p.status, p.outcome), (503, Some("unknown")));
        assert!(p.detail.contains("Idempotency-Key"), "{}", p.detail);
        let down = ApiError::from(LedgerError::Unavailable("no connection".into()));
        assert_eq!((down.problem().status, down.problem().outcome), (503, None));
    }
}
