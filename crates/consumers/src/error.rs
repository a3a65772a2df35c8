//! What goes wrong inside a consumer, as typed errors (their text is what status,
//! logs and API answers show).

use std::path::PathBuf;

/// A failure of the consumer machinery: its store, the ledger it reads, its source.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("opening the {name} store at {}: {source}", path.display())]
    Open {
        name: String,
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("consumer store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("consumer store task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("ledger: {0}")]
    Ledger(#[from] invsync_ledger::LedgerError),
    #[error("event source: {0}")]
    Source(#[from] SourceError),
    /// A rule of the runtime itself did not hold (a bug, never the input's fault).
    #[error("consumer runtime: {0}")]
    Invariant(&'static str),
}

/// A failure of an event source (a bus), as the source reports it: the bus's own
/// typed error, kept whole.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SourceError(Box<dyn std::error::Error + Send + Sync>);

impl SourceError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}
