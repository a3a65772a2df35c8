//! How each command changes the ledger, written once against [`Tx`], the handful of
//! row operations a back end provides inside one transaction. The engine decides; the
//! back end only reads and writes rows. Every change of a stock row goes through
//! [`Engine::change`], which writes the row and its event together, so "every change
//! has exactly one event" holds by construction.
//!
//! Every command makes all its checks before its first write: a refused command has
//! written nothing. The SQLite writer relies on this to run a batch of commands
//! without a savepoint each.

use chrono::{DateTime, Utc};
use invsync_core::{
    settle_fingerprint, Adjust, Cause, Change, DomainError, EventType, InventoryEventV1,
    LineQuantity, Reason, ReleaseKind, Reservation, ReservationLine, ReservationStatus, Reserve,
    ShortLine, Sku, StockLevel, StoreId, WriteRecord,
};
use uuid::Uuid;

use crate::error::LedgerError;
use crate::model::{AdjustmentOutcome, ReserveOutcome};

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
    /// Appends an event to the log/outbox in this transaction.
    fn append_event(&mut self, event: &InventoryEventV1) -> Result<(), LedgerError>;
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
    /// Moves the named cursor forward to `offset`; never moves it back.
    fn advance_cursor(&mut self, name: &str, offset: i64) -> Result<(), LedgerError>;
    /// Sets a named cursor, also backwards.
    fn set_cursor(&mut self, name: &str, offset: i64) -> Result<(), LedgerError>;
    /// Locks, before the engine changes them, the reservations `ids` and the stock rows
    /// they hold, in the back end's global lock order. A back end without row locks
    /// (SQLite's single writer) has nothing to do.
    fn lock_reservations(&mut self, ids: &[Uuid]) -> Result<(), LedgerError> {
        let _ = ids;
        Ok(())
    }
}

/// One command's worth of decisions, at one instant.
pub(crate) struct Engine<'a, T: Tx> {
    pub(crate) tx: &'a mut T,
    pub(crate) now: DateTime<Utc>,
}

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
        self.tx.append_event(&event)?;
        Ok(event)
    }

    pub(crate) fn reserve(&mut self, cmd: &Reserve) -> Result<ReserveOutcome, LedgerError> {
        let key = cmd.idempotency_key();
        let fingerprint = cmd.fingerprint();
        if let Some((stored, reservation)) = self.tx.reservation_by_key(&key)? {
            if stored != fingerprint {
                return Err(cmd.key_conflict().into());
            }
            return Ok(ReserveOutcome {
                reservation,
                created: false,
            });
        }

        // Rows are visited in (store, sku) order: on a back end with row locks, two
        // orders over the same SKUs then lock in the same order and cannot deadlock.
        let mut order: Vec<usize> = (0..cmd.lines().len()).collect();
        order.sort_by(|&a, &b| cmd.lines()[a].0.cmp(&cmd.lines()[b].0));
        let store = cmd.store_id();
        let mut levels = Vec::with_capacity(order.len());
        let mut short = Vec::new();
        for &i in &order {
            let (sku, quantity) = &cmd.lines()[i];
            let level = self.tx.stock(store, sku)?.unwrap_or_default();
            match level.reserve(quantity.get()) {
                Ok(after) => levels.push((i, after)),
                Err(available) => short.push(ShortLine {
                    sku: sku.clone(),
                    requested: quantity.get(),
                    available,
                }),
            }
        }
        if !short.is_empty() {
            return Err(DomainError::InsufficientStock { lines: short }.into());
        }

        let reservation = Reservation {
            reservation_id: Uuid::now_v7(),
            order_id: cmd.order_id().clone(),
            store_id: store.clone(),
            status: ReservationStatus::Active,
            lines: cmd
                .lines()
                .iter()
                .map(|(sku, q)| ReservationLine::new(sku.clone(), *q))
                .collect(),
            expires_at: cmd
                .ttl()
                .map(|ttl| self.now + chrono::TimeDelta::seconds(ttl.get())),
            created_at: self.now,
        };
        for (i, after) in levels {
            let (sku, quantity) = &cmd.lines()[i];
            let cause = Cause {
                event_type: EventType::Reserved,
                reason: Reason::OrderPlaced,
                quantity: quantity.get(),
                order_id: Some(reservation.order_id.clone()),
                reservation_id: Some(reservation.reservation_id),
                external_ref: None,
                channel: None,
            };
            self.change(store, sku, after, cause)?;
        }
        self.tx
            .insert_reservation(&reservation, &key, &fingerprint)?;
        Ok(ReserveOutcome {
            reservation,
            created: true,
        })
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

    /// A client's release, applied once per `key` (see [`Self::settle_once`]).
    pub(crate) fn client_release(
        &mut self,
        id: Uuid,
        lines: Option<&[(Sku, LineQuantity)]>,
        reason: invsync_core::ReleaseReason,
        key: Option<&str>,
    ) -> Result<Reservation, LedgerError> {
        let fingerprint = settle_fingerprint("release", id, lines, Some(reason));
        self.settle_once(id, key, &fingerprint, |e| {
            e.release(id, lines, Reason::from(reason), ReleaseKind::Requested)
        })
    }

    /// A client's fulfilment, applied once per `key` (see [`Self::settle_once`]).
    pub(crate) fn client_fulfil(
        &mut self,
        id: Uuid,
        lines: Option<&[(Sku, LineQuantity)]>,
        key: Option<&str>,
    ) -> Result<Reservation, LedgerError> {
        let fingerprint = settle_fingerprint("fulfil", id, lines, None);
        self.settle_once(id, key, &fingerprint, |e| e.fulfil(id, lines))
    }

    /// Applies a release or fulfilment once per `key`: a retry under the same key
    /// answers the reservation as it is now, with no second change (a partial release
    /// retried without a key would release twice).
    fn settle_once(
        &mut self,
        id: Uuid,
        key: Option<&str>,
        fingerprint: &str,
        apply: impl FnOnce(&mut Self) -> Result<Reservation, LedgerError>,
    ) -> Result<Reservation, LedgerError> {
        let records: Vec<WriteRecord> = key.map(WriteRecord::for_key).into_iter().collect();
        if self.recall(&records, fingerprint)?.is_some() {
            return self.load(id);
        }
        let reservation = apply(self)?;
        self.remember(&records, fingerprint, "{}")?;
        Ok(reservation)
    }

    /// Releases (part of) a reservation; `kind` tells a client's release from expiry.
    pub(crate) fn release(
        &mut self,
        id: Uuid,
        lines: Option<&[(Sku, LineQuantity)]>,
        reason: Reason,
        kind: ReleaseKind,
    ) -> Result<Reservation, LedgerError> {
        let mut reservation = self.load(id)?;
        let taken = reservation.release(lines, kind)?;
        self.settle(
            &reservation,
            &taken,
            |level, q| level.release(q),
            EventType::Released,
            reason,
        )?;
        Ok(reservation)
    }

    pub(crate) fn fulfil(
        &mut self,
        id: Uuid,
        lines: Option<&[(Sku, LineQuantity)]>,
    ) -> Result<Reservation, LedgerError> {
        let mut reservation = self.load(id)?;
        let taken = reservation.fulfil(lines)?;
        self.settle(
            &reservation,
            &taken,
            |level, q| level.fulfil(q),
            EventType::Adjusted,
            Reason::Fulfilled,
        )?;
        Ok(reservation)
    }

    fn load(&mut self, id: Uuid) -> Result<Reservation, LedgerError> {
        self.tx
            .reservation(id)?
            .ok_or_else(|| DomainError::NotFound("reservation").into())
    }

    /// Applies what a release or fulfilment took from the reservation to the stock
    /// rows (in key order), with one event per row, then stores the reservation. Both
    /// lower a count by what was taken, so each event's `quantity` is negative.
    fn settle(
        &mut self,
        reservation: &Reservation,
        taken: &[(Sku, i64)],
        step: impl Fn(&StockLevel, i64) -> Result<StockLevel, DomainError>,
        event_type: EventType,
        reason: Reason,
    ) -> Result<(), LedgerError> {
        if taken.is_empty() {
            return Ok(());
        }
        let mut taken = taken.to_vec();
        taken.sort_by(|a, b| a.0.cmp(&b.0));
        let store = &reservation.store_id;
        // Every row is checked before any is written (a reservation never holds one SKU
        // twice), so a refusal — a shortage left fewer units on hand than a line ships —
        // leaves nothing behind for the back end to undo.
        let mut afters = Vec::with_capacity(taken.len());
        for (sku, quantity) in &taken {
            let level = self.tx.stock(store, sku)?.ok_or_else(|| {
                LedgerError::Internal(format!(
                    "reservation holds {sku} in {store} but the row is gone"
                ))
            })?;
            afters.push(step(&level, *quantity)?);
        }
        for ((sku, quantity), after) in taken.iter().zip(afters) {
            let cause = Cause {
                event_type,
                reason,
                quantity: -quantity,
                order_id: Some(reservation.order_id.clone()),
                reservation_id: Some(reservation.reservation_id),
                external_ref: None,
                channel: None,
            };
            self.change(store, sku, after, cause)?;
        }
        self.tx.update_reservation(reservation, self.now)
    }

    pub(crate) fn adjust(&mut self, cmd: &Adjust) -> Result<AdjustmentOutcome, LedgerError> {
        let fingerprint = cmd.fingerprint();
        let records = cmd.records();
        if let Some(outcome) = self.recall(&records, &fingerprint)? {
            return serde_json::from_str(&outcome)
                .map_err(|e| LedgerError::Internal(format!("stored adjustment outcome: {e}")));
        }
        let existing = self.tx.stock(&cmd.store_id, &cmd.sku)?;
        let level = existing.unwrap_or_default();
        if let Some(expected) = cmd.if_version {
            if expected != level.version() {
                return Err(DomainError::VersionConflict {
                    expected,
                    actual: level.version(),
                }
                .into());
            }
        }
        let delta = match cmd.change {
            Change::Delta(d) => d.get(),
            Change::SetOnHand(count) => count.get() - level.on_hand(),
        };
        let (level, event_id) = if delta == 0 {
            // A count that confirms what the ledger holds changes nothing: no event.
            (level, None)
        } else {
            let after = level.adjust(delta)?;
            let cause = Cause {
                event_type: EventType::Adjusted,
                reason: cmd.reason.into(),
                quantity: delta,
                order_id: None,
                reservation_id: None,
                external_ref: cmd.external_ref.clone(),
                channel: cmd.channel.clone(),
            };
            let event = self.change(&cmd.store_id, &cmd.sku, after, cause)?;
            (after, Some(event.event_id))
        };
        let outcome = AdjustmentOutcome {
            event_id,
            store_id: cmd.store_id.clone(),
            sku: cmd.sku.clone(),
            on_hand: level.on_hand(),
            reserved: level.reserved(),
            available: level.available(),
            version: level.version(),
            shortage: level.shortage(),
        };
        if !records.is_empty() {
            let text = serde_json::to_string(&outcome)
                .map_err(|e| LedgerError::Internal(format!("encoding adjustment outcome: {e}")))?;
            self.remember(&records, &fingerprint, &text)?;
        }
        Ok(outcome)
    }

    /// Deletes up to `limit` events older than `retention`; offsets of the rest stay.
    pub(crate) fn purge_events(
        &mut self,
        retention: chrono::TimeDelta,
        limit: usize,
    ) -> Result<usize, LedgerError> {
        self.tx.purge_events(self.now - retention, limit)
    }

    pub(crate) fn advance_cursor(&mut self, name: &str, offset: i64) -> Result<(), LedgerError> {
        self.tx.advance_cursor(name, offset)
    }

    pub(crate) fn set_cursor(&mut self, name: &str, offset: i64) -> Result<(), LedgerError> {
        self.tx.set_cursor(name, offset)
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
