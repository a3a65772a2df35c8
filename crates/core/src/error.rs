//! Business outcomes that refuse a command. These are answers, not failures: they
//! never wrap a driver error (those belong to the ledger's own error type).

use serde::Serialize;

use crate::ids::Sku;

/// A reservation line that could not be served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShortLine {
    pub sku: Sku,
    pub requested: i64,
    pub available: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("not enough stock available for {} line(s)", lines.len())]
    InsufficientStock { lines: Vec<ShortLine> },
    #[error("only {on_hand} on hand, cannot remove {requested}")]
    InsufficientOnHand { on_hand: i64, requested: i64 },
    /// The key of a repeatable request was already used by a different request; the
    /// text names the key (the caller's `Idempotency-Key`, or what stands in for it).
    #[error("{0}")]
    IdempotencyConflict(String),
    #[error("expected version {expected}, found {actual}")]
    VersionConflict { expected: i64, actual: i64 },
    #[error("{0}")]
    InvalidState(String),
    #[error("{0} not found")]
    NotFound(&'static str),
}

impl DomainError {
    pub fn invalid_state(detail: impl Into<String>) -> Self {
        Self::InvalidState(detail.into())
    }
}
