//! The v1 routes, one module per area of `api.md`.

pub(crate) mod adjustments;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod pipeline;
pub(crate) mod reservations;
pub(crate) mod stock;
pub(crate) mod stream;

/// `limit` of the paged endpoints: default 100, 1 to 1,000.
pub(crate) fn page_limit(limit: Option<i64>) -> Result<usize, crate::error::ApiError> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(n as usize),
        Some(n) => Err(crate::error::ApiError::invalid(
            "limit",
            format!("must be from 1 to 1000, got {n}"),
        )),
    }
}
