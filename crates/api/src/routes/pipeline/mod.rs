//! The event pipeline's routes: the storefront read model, the consumers (status,
//! overview, replay), and dead letters.

pub(crate) mod consumers;
pub(crate) mod dead_letters;
pub(crate) mod storefront;

use crate::error::{ApiError, ErrorCode};

pub(super) fn unavailable(what: &str, err: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "{what} unavailable");
    ApiError::new(
        ErrorCode::Unavailable,
        format!("the {what} is unavailable; retry later"),
    )
}
