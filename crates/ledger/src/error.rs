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
    /// Concurrent transactions collided (unique key raced, serialization failure,
    /// deadlock): the command is retried from the start; after too many tries it
    /// answers like `Unavailable`.
    #[error("ledger contention: {0}")]
    Contention(String),
    /// The connection broke while the transaction was committing: it may or may not
    /// have committed. Never retried here (a retry could apply it twice); the caller
    /// is told, and retries with the same idempotency key.
    #[error("ledger commit outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A write made on the strength of a lease term the holder no longer has: another
    /// process holds the lease now (or it was taken again under a new epoch), so the
    /// write was refused and nothing changed (see `lease`).
    #[error("fenced: this process's term {epoch} of lease {lease:?} is over (the lease is at epoch {current:?} now)")]
    Fenced {
        lease: String,
        epoch: i64,
        current: Option<i64>,
    },
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

impl From<postgres::Error> for LedgerError {
    fn from(err: postgres::Error) -> Self {
        // A lost connection or a server shutting down is an outage to wait out; a
        // statement error is a bug or a corrupt row.
        if err.is_closed() || err.as_db_error().is_none() {
            return Self::Unavailable(err.to_string());
        }
        match err.code().map(|c| c.code()) {
            // Admin shutdown, crash shutdown, cannot connect now, too many connections.
            // Lock timeout and statement timeout too: a request that waited too long
            // is answered 503, never 500.
            Some("57P01" | "57P02" | "57P03" | "53300" | "55P03" | "57014") => {
                Self::Unavailable(err.to_string())
            }
            // Unique violation (two creators raced), serialization failure, deadlock.
            Some("23505" | "40001" | "40P01") => Self::Contention(err.to_string()),
            _ => Self::Internal(err.to_string()),
        }
    }
}

impl LedgerError {
    /// The error of a failed COMMIT. Only a few answers prove the transaction rolled
    /// back: a serialization failure or deadlock (class 40), a deferred constraint
    /// (23), a transaction already failed (25). Anything else — the connection broke,
    /// or the server was shut down (57P01) while committing — leaves nobody knowing
    /// whether the commit happened: the crash test saw a commit answered "terminating
    /// connection due to administrator command" that had in fact committed.
    pub(crate) fn from_commit(err: postgres::Error) -> Self {
        let rolled_back = err
            .code()
            .is_some_and(|c| matches!(&c.code()[..2], "40" | "23" | "25"));
        if rolled_back {
            err.into()
        } else {
            Self::OutcomeUnknown(err.to_string())
        }
    }
}

impl From<r2d2::Error> for LedgerError {
    fn from(err: r2d2::Error) -> Self {
        Self::Unavailable(format!("no database connection: {err}"))
    }
}
