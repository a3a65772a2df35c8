//! The ledger's error: a business refusal, or the store failing us.

use invsync_core::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The command was refused by the rules (insufficient stock, conflict, …).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The store cannot be reached or is shutting down; safe to retry later.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// Something that should not happen (corrupt row, bug). Logged where handled.
    #[error("ledger internal error: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for LedgerError {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match err.sqlite_error_code() {
            Some(
                C::DatabaseBusy
                | C::DatabaseLocked
                | C::DiskFull
                | C::CannotOpen
                | C::SystemIoFailure,
            ) => Self::Unavailable(err.to_string()),
            _ => Self::Internal(err.to_string()),
        }
    }
}

impl From<invsync_core::stock::InvalidLevel> for LedgerError {
    fn from(err: invsync_core::stock::InvalidLevel) -> Self {
        Self::Internal(err.to_string())
    }
}
