//! How each command changes the ledger, written once against [`Tx`], the handful of
//! row operations a back end provides inside one transaction. The engine decides; the
//! back end only reads and writes rows. Every change of a stock row goes through
//! [`Engine::change`], which writes the row and its event together, so "every change
//! has exactly one event" holds by construction.
//!
//! Every command makes all its checks before its first write: a refused command has
//! written nothing. The SQLite writer relies on this to run a batch of commands
//! without a savepoint each.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use invsync_core::channel::{Channel, SafetyOverride};
use invsync_core::{
    Cause, ChannelId, DomainError, EventType, InventoryEventV1, LogRecord, Reason, ReleaseKind,
    Reservation, Sku, StockLevel, StoreId, WriteRecord,
};
use uuid::Uuid;

use crate::error::LedgerError;

/// Row operations inside one open transaction of a back end.
pub(crate) trait Tx {
    /// Reads (and, where the back end locks rows, locks) one stock row.
    fn stock(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<StockLevel>, LedgerError>;
    fn put_stock(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        level: StockLevel,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError>;
    /// Appends an entry to the log/outbox in this transaction.
    fn append(&mut self, record: LogRecord) -> Result<(), LedgerError>;
    /// The CloudEvents `source` of this deployment.
    fn source(&self) -> &str;
    /// Reads a channel. On PostgreSQL a channel the batch's prefetch read is served
    /// from memory, unlocked (a reservation allocates with the configuration it read);
    /// any other read locks the row until the transaction ends, so that two changes of
    /// one channel serialize.
    fn channel(&mut self, id: &ChannelId) -> Result<Option<Channel>, LedgerError>;
    /// Stores a channel's configuration at its version.
    fn put_channel(&mut self, channel: &Channel, now: DateTime<Utc>) -> Result<(), LedgerError>;
    /// The per-SKU safety-stock overrides of a channel for these SKUs: (store, sku) →
    /// (the override, or `None` where one was removed; its version).
    fn safety_overrides(
        &mut self,
        channel: &ChannelId,
        skus: &[Sku],
    ) -> Result<Overrides, LedgerError>;
    /// Stores one override at its version (`safety_stock: None` removes it).
    fn put_safety_override(
        &mut self,
        channel: &ChannelId,
        item: &SafetyOverride,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError>;
    /// The reservation stored under an idempotency key, with its request fingerprint.
    fn reservation_by_key(
        &mut self,
        key: &str,
    ) -> Result<Option<(String, Reservation)>, LedgerError>;
    fn reservation(&mut self, id: Uuid) -> Result<Option<Reservation>, LedgerError>;
    fn insert_reservation(
        &mut self,
        reservation: &Reservation,
        key: &str,
        fingerprint: &str,
    ) -> Result<(), LedgerError>;
    /// Stores the lines' counters and the status of an existing reservation.
    fn update_reservation(
        &mut self,
        reservation: &Reservation,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError>;
    /// Stores an existing reservation whose allocations changed (some were added or
    /// dropped by a reallocation): all its rows are written again.
    fn rewrite_reservation(
        &mut self,
        reservation: &Reservation,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError>;
    /// The active channel reservations with an allocation of `sku` at `store`, in
    /// their latest state (on PostgreSQL, locked). The caller holds the row's lock,
    /// so no other transaction can add or drop one meanwhile.
    fn channel_holds(
        &mut self,
        store: &StoreId,
        sku: &Sku,
    ) -> Result<Vec<Reservation>, LedgerError>;
    /// The fingerprint and outcome (JSON) a write was recorded with under `key` (an
    /// external_ref, or a key made by `record_key`).
    fn recorded(&mut self, key: &str) -> Result<Option<(String, String)>, LedgerError>;
    /// Records a write under `key`, so that a retry applies it once.
    fn record(
        &mut self,
        key: &str,
        fingerprint: &str,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError>;
    /// Deletes up to `limit` events that occurred before `before`, oldest first.
    fn purge_events(&mut self, before: DateTime<Utc>, limit: usize) -> Result<usize, LedgerError>;
    /// Active reservations whose TTL ran out at `now`, oldest first.
    fn due_reservations(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Uuid>, LedgerError>;
    /// Moves the named cursor forward to `offset`; never moves it back. With a `term`,
    /// refuses (`Fenced`) unless its lease is still at its epoch.
    fn advance_cursor(
        &mut self,
        name: &str,
        offset: i64,
        term: Option<&crate::Term>,
    ) -> Result<(), LedgerError>;
    /// Sets a named cursor, also backwards; fenced like `advance_cursor`.
    fn set_cursor(
        &mut self,
        name: &str,
        offset: i64,
        term: Option<&crate::Term>,
    ) -> Result<(), LedgerError>;
    /// Locks, before the engine changes them, the reservations `ids` and the stock rows
    /// they hold, in the back end's global lock order. A back end without row locks
    /// (SQLite's single writer) has nothing to do.
    fn lock_reservations(&mut self, ids: &[Uuid]) -> Result<(), LedgerError> {
        let _ = ids;
        Ok(())
    }
}

/// Safety-stock overrides by (store, sku): the value (`None`: removed) and its version.
pub(crate) type Overrides = HashMap<(StoreId, Sku), (Option<i64>, i64)>;

/// One part of a new reservation: a (location, sku), its quantity and the level it
/// leaves the row at.
pub(super) type Part = (StoreId, Sku, i64, StockLevel);

/// One command's worth of decisions, at one instant.
pub(crate) struct Engine<'a, T: Tx> {
    pub(crate) tx: &'a mut T,
    pub(crate) now: DateTime<Utc>,
}

mod adjust;
mod channels;
#[cfg(test)]
mod memory;
mod reserve;
mod settle;
#[cfg(test)]
mod tests;

impl<T: Tx> Engine<'_, T> {
    /// Writes a new level and its event. The only way a stock row changes.
    fn change(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        after: StockLevel,
        cause: Cause,
    ) -> Result<InventoryEventV1, LedgerError> {
        self.tx.put_stock(store, sku, after, self.now)?;
        let event = InventoryEventV1::new(
            Uuid::now_v7(),
            self.now,
            store.clone(),
            sku.clone(),
            cause,
            after,
        );
        let record = event.record(self.tx.source());
        self.tx.append(record)?;
        Ok(event)
    }

    /// The outcome a write was recorded with under one of `records`, if it was: the
    /// same request again gets it back, a different one is refused naming the key.
    fn recall(
        &mut self,
        records: &[WriteRecord],
        fingerprint: &str,
    ) -> Result<Option<String>, LedgerError> {
        for r in records {
            if let Some((stored, outcome)) = self.tx.recorded(&r.key)? {
                if stored != fingerprint {
                    return Err(DomainError::IdempotencyConflict(r.conflict.clone()).into());
                }
                return Ok(Some(outcome));
            }
        }
        Ok(None)
    }

    fn remember(
        &mut self,
        records: &[WriteRecord],
        fingerprint: &str,
        outcome: &str,
    ) -> Result<(), LedgerError> {
        for r in records {
            self.tx.record(&r.key, fingerprint, outcome, self.now)?;
        }
        Ok(())
    }

    /// Deletes up to `limit` events older than `retention`; offsets of the rest stay.
    pub(crate) fn purge_events(
        &mut self,
        retention: chrono::TimeDelta,
        limit: usize,
    ) -> Result<usize, LedgerError> {
        self.tx.purge_events(self.now - retention, limit)
    }

    pub(crate) fn advance_cursor(
        &mut self,
        name: &str,
        offset: i64,
        term: Option<&crate::Term>,
    ) -> Result<(), LedgerError> {
        self.tx.advance_cursor(name, offset, term)
    }

    pub(crate) fn set_cursor(
        &mut self,
        name: &str,
        offset: i64,
        term: Option<&crate::Term>,
    ) -> Result<(), LedgerError> {
        self.tx.set_cursor(name, offset, term)
    }

    /// Releases, with reason `expired`, up to `limit` reservations whose TTL ran out.
    pub(crate) fn expire_due(&mut self, limit: usize) -> Result<usize, LedgerError> {
        let due = self.tx.due_reservations(self.now, limit)?;
        // Releasing them one by one would lock each one's rows in turn: out of order
        // across reservations. Take every lock first.
        self.tx.lock_reservations(&due)?;
        for id in &due {
            self.release(*id, None, Reason::Expired, ReleaseKind::Expiry)?;
        }
        Ok(due.len())
    }
}

/// What a change of a reservation's stock records about it.
fn held_for(r: &Reservation, event_type: EventType, reason: Reason, quantity: i64) -> Cause {
    Cause {
        event_type,
        reason,
        quantity,
        order_id: Some(r.order_id().clone()),
        reservation_id: Some(r.reservation_id()),
        external_ref: None,
        channel: r.channel().cloned(),
    }
}
