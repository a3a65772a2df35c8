//! invsync's ledger: the source of truth for stock and reservations, and the event log
//! every change is recorded in, in the same transaction.
//!
//! # Layout
//!
//! - [`Ledger`]: what the rest of invsync asks of a ledger, whatever the back end.
//! - `engine`: how each command changes stock, reservations and the log, written once
//!   against a small row-level `Tx` trait that each back end implements.
//! - [`sqlite`]: the embedded back end (one writer thread with group commit, WAL,
//!   read-only connections for queries).
//! - [`postgres`]: the production back end (row locks, events appended to the log in
//!   each write's transaction, one leading instance for the bus and shared webhooks).
//! - [`clock`]: injected time, so expiry is testable without sleeping.
//! - [`model`]: what the ledger answers.
//!
//! Architecture invariant: only this crate knows SQL.
#![forbid(unsafe_code)]

pub mod clock;
mod engine;
pub mod error;
pub mod lease;
pub mod model;
mod parts;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use invsync_core::channel::{Channel, ChannelConfig, SafetyOverrides};
use invsync_core::{Adjust, ChannelId, OrderId, ReleaseReason, Reservation, Reserve, Sku, StoreId};
use uuid::Uuid;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::LedgerError;
pub use lease::{Term, Turn};
pub use model::{
    AdjustmentOutcome, ChannelSnapshot, EventPage, LoggedEvent, OverrideRow, ReserveOutcome,
    SnapshotPage, StockRow,
};
pub use postgres::{PgConfig, PgLedger};
pub use sqlite::{SqliteConfig, SqliteLedger};

/// Most reservations one expiry transaction releases.
const EXPIRY_CHUNK: usize = 500;
/// Most events one purge transaction deletes: small, so reservations never wait long
/// behind a purge.
const PURGE_CHUNK: usize = 5_000;

/// Repeats `step` (one transaction doing up to `chunk` items) until a step does fewer;
/// returns the total done.
async fn in_chunks<F, Fut>(chunk: usize, mut step: F) -> Result<usize, LedgerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, LedgerError>>,
{
    let mut total = 0;
    loop {
        let n = step().await?;
        total += n;
        if n < chunk {
            return Ok(total);
        }
    }
}

/// `retention` as a time delta, refusing the absurdly large.
fn retention_delta(retention: std::time::Duration) -> Result<chrono::TimeDelta, LedgerError> {
    chrono::TimeDelta::from_std(retention)
        .map_err(|_| LedgerError::Internal("retention out of range".into()))
}

/// The `meta` key that holds a named cursor.
fn cursor_key(name: &str) -> String {
    format!("cursor:{name}")
}

/// Lines of a partial release or fulfilment (validated: no SKU twice); `None` means
/// everything still held.
pub type ReleaseLines = Option<invsync_core::Lines>;

/// What consumers read of the ledger: the log, snapshots and the head. Read-only: a
/// consumer never writes to the ledger (ARCHITECTURE.md).
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Events with offset > `after`, oldest first, at most `limit`.
    async fn events(&self, after: i64, limit: usize) -> Result<EventPage, LedgerError>;
    /// [`events`](Self::events) for a reader of one partition of
    /// [`PARTITIONS`](invsync_core::event::PARTITIONS): the envelope of an event of
    /// another partition may come back empty (its offset kept, so the reader sees no
    /// hole), and is then not read from disk nor sent. A log that does not know the
    /// partitions returns every envelope, and the reader passes over the others.
    async fn partition_events(
        &self,
        after: i64,
        limit: usize,
        _partition: u32,
    ) -> Result<EventPage, LedgerError> {
        self.events(after, limit).await
    }
    /// The first offset whose event occurred at or after `since` (the next offset to be
    /// written when there is none): where a replay by time starts.
    async fn offset_at(&self, since: chrono::DateTime<chrono::Utc>) -> Result<i64, LedgerError>;
    /// One page of every stock level, after the cursor (store, sku), with the log offset
    /// it is consistent with.
    async fn snapshot(
        &self,
        after: Option<(StoreId, Sku)>,
        limit: usize,
    ) -> Result<SnapshotPage, LedgerError>;
    /// The last committed offset, updated after every commit: consumers wait on it
    /// instead of polling.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<i64>;
    /// Every channel and override as they are now, to rebuild a projection with
    /// (none for a log that records no channels).
    async fn channel_snapshot(&self) -> Result<ChannelSnapshot, LedgerError> {
        Ok(ChannelSnapshot::default())
    }
}

/// What the relay to an external bus, and a connector shared by several instances,
/// need beyond the log: a durable position in the ledger (`meta`), and whether this
/// instance is the one that works.
#[async_trait]
pub trait LogCursors: EventLog {
    /// Where the named reader of the log (the relay to an external bus) has got to: the
    /// last offset it has durably handed on; 0 when it never has.
    async fn cursor(&self, name: &str) -> Result<i64, LedgerError>;
    /// Moves the named cursor forward; a lower offset than the stored one is ignored.
    /// With a `term`, only while that term's lease is still at its epoch (else
    /// [`LedgerError::Fenced`], nothing written): a deposed holder finishing late can
    /// move nothing.
    async fn advance_cursor(
        &self,
        name: &str,
        offset: i64,
        term: Option<&Term>,
    ) -> Result<(), LedgerError>;
    /// Sets the named cursor, also backwards (an operator's replay); fenced by `term`
    /// like [`advance_cursor`](Self::advance_cursor).
    async fn set_cursor(
        &self,
        name: &str,
        offset: i64,
        term: Option<&Term>,
    ) -> Result<(), LedgerError>;
    /// Whether, and under which term, this instance holds the relay lease, live. Work
    /// that must run on one instance at a time (publishing to the bus, the shared
    /// webhook connector) follows it and fences what it records with the term. Always
    /// held on SQLite, where one process owns the ledger.
    fn leadership(&self) -> Turn;
    /// Joins the processes that share consumer `group`'s partitions (see
    /// [`PartitionClaims`]). On SQLite, where one process owns the ledger, this
    /// process is the group's only member and every claim succeeds.
    async fn join_group(&self, _group: &str) -> Result<Box<dyn PartitionClaims>, LedgerError> {
        Ok(Box::new(SoleMember))
    }
}

/// One process's membership in the group of processes that share a consumer's
/// partitions (`invsync consume NAME --partitioned`). A partition is worked by the
/// member that claimed it, and by no other until that member releases it or dies.
///
/// On PostgreSQL membership and claims are leases (see [`lease`]): a process that
/// dies, freezes or loses the database stops renewing, its terms end on its side
/// before they lapse on the database's, and the others claim its partitions then.
#[async_trait]
pub trait PartitionClaims: Send + Sync {
    /// How many processes are in the group now (this one included), and how many
    /// partitions they hold. An error means this member's session is gone, and every
    /// claim with it: stop working every partition at once, then
    /// [`rejoin`](Self::rejoin).
    async fn census(&self) -> Result<Census, LedgerError>;
    /// Claims `partition` when no other member holds it: this member's term on it, or
    /// `None`. The term ends when the member's renewals stop (see [`lease`]).
    async fn claim(&self, partition: u32) -> Result<Option<Term>, LedgerError>;
    /// Gives `partition` up (after its work here has stopped).
    async fn release(&self, partition: u32) -> Result<(), LedgerError>;
    /// Joins again with a new session, holding no partition.
    async fn rejoin(&self) -> Result<(), LedgerError>;
}

/// A group as one member counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Processes in the group, the one counting included (at least 1).
    pub members: u32,
    /// Partitions some member holds (0 where unknown: then every claim is tried).
    pub claimed: u32,
}

/// The member of a group no other process can join (a ledger one process owns).
#[derive(Debug)]
pub struct SoleMember;

#[async_trait]
impl PartitionClaims for SoleMember {
    async fn census(&self) -> Result<Census, LedgerError> {
        Ok(Census {
            members: 1,
            claimed: 0,
        })
    }
    async fn claim(&self, partition: u32) -> Result<Option<Term>, LedgerError> {
        Ok(Some(Term::forever(lease::partition_lease("", partition))))
    }
    async fn release(&self, _partition: u32) -> Result<(), LedgerError> {
        Ok(())
    }
    async fn rejoin(&self) -> Result<(), LedgerError> {
        Ok(())
    }
}

/// How far back [`StockReads::recent_events_of`] looks, in events.
pub const RECENT_WINDOW: i64 = 10_000;

/// Reservations: made, settled and expired, and read back. Every write is one
/// atomic transaction that also appends its events to the log; a successful answer
/// means the change is durably committed (so for every write trait below).
#[async_trait]
pub trait Reservations: Send + Sync {
    /// Reserves every line or none; a repeat of the same request answers the original.
    async fn reserve(&self, cmd: Reserve) -> Result<ReserveOutcome, LedgerError>;
    /// Releases the lines (everything still held when `None`). `key`: a scoped
    /// Idempotency-Key (`record_key("release", …)`): a retry under it answers the
    /// reservation as it is, with no second release.
    async fn release(
        &self,
        id: Uuid,
        lines: ReleaseLines,
        reason: ReleaseReason,
        key: Option<String>,
    ) -> Result<Reservation, LedgerError>;
    /// Fulfils the lines (everything still held when `None`); `key` as for release.
    async fn fulfil(
        &self,
        id: Uuid,
        lines: ReleaseLines,
        key: Option<String>,
    ) -> Result<Reservation, LedgerError>;
    async fn reservation(&self, id: Uuid) -> Result<Option<Reservation>, LedgerError>;
    async fn reservations_by_order(&self, order: OrderId) -> Result<Vec<Reservation>, LedgerError>;
    /// Releases every active reservation whose TTL has run out; returns how many.
    async fn expire_due(&self) -> Result<usize, LedgerError>;
}

/// Changes of on-hand stock.
#[async_trait]
pub trait Adjustments: Send + Sync {
    async fn adjust(&self, cmd: Adjust) -> Result<AdjustmentOutcome, LedgerError>;
    /// Applies each adjustment atomically on its own; answers in the same order.
    async fn adjust_many(&self, cmds: Vec<Adjust>) -> Vec<Result<AdjustmentOutcome, LedgerError>>;
}

/// Channels and their per-SKU safety stock.
#[async_trait]
pub trait Channels: Send + Sync {
    /// Creates or replaces a channel (compare-and-set on `if_version`; 0 means it must
    /// not exist yet) and records `CHANNEL_UPDATED`; the same configuration again
    /// answers the channel unchanged.
    async fn put_channel(
        &self,
        id: ChannelId,
        config: ChannelConfig,
        if_version: Option<i64>,
    ) -> Result<Channel, LedgerError>;
    /// Sets or removes per-SKU safety-stock overrides of a channel, one
    /// `SAFETY_STOCK_SET` each; returns how many changed.
    async fn set_safety_stock(
        &self,
        id: ChannelId,
        items: SafetyOverrides,
    ) -> Result<usize, LedgerError>;
    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>, LedgerError>;
    /// Every channel, by id.
    async fn channels(&self) -> Result<Vec<Channel>, LedgerError>;
}

/// Reads of the stock rows.
#[async_trait]
pub trait StockReads: Send + Sync {
    async fn stock(&self, store: StoreId, sku: Sku) -> Result<Option<StockRow>, LedgerError>;
    async fn stock_by_sku(&self, sku: Sku) -> Result<Vec<StockRow>, LedgerError>;
    /// One page of a store's stock, by SKU, after the cursor SKU.
    async fn stock_by_store(
        &self,
        store: StoreId,
        after: Option<Sku>,
        limit: usize,
    ) -> Result<Vec<StockRow>, LedgerError>;
    /// Every stock row (for audits and tests; not for request paths).
    async fn all_stock(&self) -> Result<Vec<StockRow>, LedgerError>;
    /// How many (store, sku) pairs have `available < 0` (a shortage).
    async fn shortages(&self) -> Result<i64, LedgerError>;
    /// The rows with a shortage, the largest first (then by store and SKU), at most
    /// `limit`.
    async fn shortage_rows(&self, limit: usize) -> Result<Vec<StockRow>, LedgerError>;
    /// The latest events of `sku` (every store), newest first, at most `limit`, among
    /// the last [`RECENT_WINDOW`] events of the log: a bounded read for the console.
    async fn recent_events_of(
        &self,
        sku: Sku,
        limit: usize,
    ) -> Result<Vec<LoggedEvent>, LedgerError>;
}

/// What keeps the ledger in shape: retention, the head, stopping.
#[async_trait]
pub trait Housekeeping: Send + Sync {
    /// Deletes events older than `retention` (the log keeps its offsets); returns how many.
    async fn purge_events(&self, retention: std::time::Duration) -> Result<usize, LedgerError>;
    /// Waits until this instance's head has seen every event committed so far (on
    /// both ledgers a commit writes its events straight into the log; on PostgreSQL
    /// the head follows commits of every instance by polling).
    async fn flush(&self, timeout: std::time::Duration) -> Result<(), LedgerError>;
    /// Finishes queued writes and stops; later writes answer `Unavailable`.
    async fn shutdown(&self);
}

/// Whether the ledger can serve, and where.
#[async_trait]
pub trait Health: Send + Sync {
    /// Succeeds when the ledger can serve requests.
    async fn ping(&self) -> Result<(), LedgerError>;
    /// The database server the last successful [`ping`](Self::ping) reached
    /// (`host:port`): with several hosts in the URL, the primary this instance follows
    /// now. `None` for an embedded ledger, or before the first ping.
    fn server(&self) -> Option<String> {
        None
    }
}

/// The ledger as the API and the background tasks see it: every narrow trait of the
/// crate at once. A back end implements each of them; this one comes with them.
/// Code that needs one side only takes that trait (the consumers take [`EventLog`]
/// and [`LogCursors`]).
pub trait Ledger:
    LogCursors + Reservations + Adjustments + Channels + StockReads + Housekeeping + Health
{
}

impl<T> Ledger for T where
    T: LogCursors + Reservations + Adjustments + Channels + StockReads + Housekeeping + Health
{
}

/// The ledger's traits, for `use invsync_ledger::prelude::*` where a `dyn Ledger` is
/// called (a supertrait's methods need the trait in scope).
pub mod prelude {
    pub use crate::{
        Adjustments as _, Channels as _, EventLog as _, Health as _, Housekeeping as _,
        LogCursors as _, Reservations as _, StockReads as _,
    };
}
