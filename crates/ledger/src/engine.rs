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
use invsync_core::channel::{
    allocate, reallocate, Channel, ChannelConfig, SafetyOverride, SafetyOverrides, Shelf,
};
use invsync_core::{
    settle_fingerprint, Adjust, Allocated, Cause, Change, ChannelId, ChannelUpdatedV1, DomainError,
    EventType, InventoryEventV1, LineQuantity, Lines, LogRecord, Reason, ReleaseKind, Reservation,
    ReservationLine, Reserve, SafetyStockSetV1, ShortLine, Sku, StockLevel, StoreId, Target,
    WriteRecord,
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
type Part = (StoreId, Sku, i64, StockLevel);

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
        let record = event.record(self.tx.source());
        self.tx.append(record)?;
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
        let (lines, mut parts) = match cmd.target() {
            Target::Store(store) => self.at_store(store, cmd)?,
            Target::Channel(channel) => self.in_channel(channel, cmd)?,
        };
        let reservation = Reservation::open(
            cmd.order_id().clone(),
            cmd.target().clone(),
            lines,
            cmd.ttl()
                .map(|ttl| self.now + chrono::TimeDelta::seconds(ttl.get())),
            self.now,
        )
        .map_err(|e| LedgerError::Internal(format!("a new reservation: {e}")))?;
        // Written in (store, sku) order, as the rows were read.
        parts.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        for (store, sku, quantity, after) in parts {
            let cause = held_for(
                &reservation,
                EventType::Reserved,
                Reason::OrderPlaced,
                quantity,
            );
            self.change(&store, &sku, after, cause)?;
        }
        self.tx
            .insert_reservation(&reservation, &key, &fingerprint)?;
        Ok(ReserveOutcome {
            reservation,
            created: true,
        })
    }

    /// The lines of a store-direct reservation, every one at `store`, or the short
    /// lines. Rows are visited in (store, sku) order: on a back end with row locks,
    /// two orders over the same SKUs then lock in the same order and cannot deadlock.
    fn at_store(
        &mut self,
        store: &StoreId,
        cmd: &Reserve,
    ) -> Result<(Vec<ReservationLine>, Vec<Part>), LedgerError> {
        let mut order: Vec<usize> = (0..cmd.lines().len()).collect();
        order.sort_by(|&a, &b| cmd.lines()[a].0.cmp(&cmd.lines()[b].0));
        let mut parts = Vec::with_capacity(order.len());
        let mut short = Vec::new();
        for &i in &order {
            let (sku, quantity) = &cmd.lines()[i];
            let level = self.tx.stock(store, sku)?.unwrap_or_default();
            match level.reserve(quantity.get()) {
                Ok(after) => parts.push((store.clone(), sku.clone(), quantity.get(), after)),
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
        let lines = cmd
            .lines()
            .iter()
            .map(|(sku, q)| ReservationLine::new(store.clone(), sku.clone(), *q))
            .collect();
        Ok((lines, parts))
    }

    /// The lines of a channel reservation, allocated to the channel's locations by its
    /// rules and never into safety stock, or the short lines with the channel's
    /// availability. Every candidate row is read (and locked) in (store, sku) order.
    fn in_channel(
        &mut self,
        id: &ChannelId,
        cmd: &Reserve,
    ) -> Result<(Vec<ReservationLine>, Vec<Part>), LedgerError> {
        let channel = self
            .tx
            .channel(id)?
            .ok_or(DomainError::NotFound("channel"))?;
        let skus: Vec<Sku> = cmd.lines().iter().map(|(sku, _)| sku.clone()).collect();
        let shelves = self.shelves(&channel, &skus)?;
        let shelf = |store: &StoreId, sku: &Sku| shelf_of(&shelves, store, sku);
        let allocation = allocate(&channel.config, cmd.lines(), shelf)
            .map_err(|lines| DomainError::InsufficientStock { lines })?;
        let mut parts = Vec::new();
        let mut lines = Vec::with_capacity(allocation.len());
        for ((sku, _), taken) in cmd.lines().iter().zip(allocation) {
            let mut allocations = Vec::with_capacity(taken.len());
            for (store, quantity) in taken {
                let level = shelf(&store, sku).level.unwrap_or_default();
                // `allocate` only hands out channel-available units, so this holds;
                // checked all the same rather than trusted.
                let after = level
                    .reserve(quantity)
                    .map_err(|_| LedgerError::Internal("allocation over availability".into()))?;
                parts.push((store.clone(), sku.clone(), quantity, after));
                let units = LineQuantity::new(quantity).map_err(|e| {
                    LedgerError::Internal(format!("an allocation of {quantity}: {e}"))
                })?;
                allocations.push(Allocated::new(store, units));
            }
            let line = ReservationLine::allocated(sku.clone(), allocations)
                .map_err(|e| LedgerError::Internal(format!("a new reservation line: {e}")))?;
            lines.push(line);
        }
        Ok((lines, parts))
    }

    /// What the channel sees of each of its locations for `skus`: the level and the
    /// safety stock there (the per-SKU override, else the location's). Rows are read
    /// in (store, sku) order.
    fn shelves(
        &mut self,
        channel: &Channel,
        skus: &[Sku],
    ) -> Result<HashMap<(StoreId, Sku), Shelf>, LedgerError> {
        let overrides = self.tx.safety_overrides(&channel.channel_id, skus)?;
        let mut rows: Vec<(StoreId, Sku, i64)> = channel
            .config
            .locations()
            .iter()
            .flat_map(|l| {
                skus.iter()
                    .map(move |sku| (l.store_id.clone(), sku.clone(), l.safety_stock))
            })
            .collect();
        rows.sort();
        let mut shelves = HashMap::with_capacity(rows.len());
        for (store, sku, default) in rows {
            let level = self.tx.stock(&store, &sku)?;
            let key = (store, sku);
            let safety_stock = match overrides.get(&key) {
                Some((Some(n), _)) => *n,
                _ => default,
            };
            shelves.insert(
                key,
                Shelf {
                    level,
                    safety_stock,
                },
            );
        }
        Ok(shelves)
    }

    /// Creates or replaces a channel: compare-and-set on `if_version` (0 for "must
    /// not exist yet"), a new version and one `CHANNEL_UPDATED` event. A PUT of the
    /// configuration the channel already has changes nothing and records nothing.
    pub(crate) fn put_channel(
        &mut self,
        id: &ChannelId,
        config: ChannelConfig,
        if_version: Option<i64>,
    ) -> Result<Channel, LedgerError> {
        let current = self.tx.channel(id)?;
        let version = current.as_ref().map_or(0, |c| c.version);
        if let Some(expected) = if_version {
            if expected != version {
                return Err(DomainError::VersionConflict {
                    expected,
                    actual: version,
                }
                .into());
            }
        }
        if let Some(current) = current {
            if current.config == config {
                return Ok(current);
            }
        }
        let channel = Channel {
            channel_id: id.clone(),
            version: version + 1,
            config,
        };
        self.tx.put_channel(&channel, self.now)?;
        let event = ChannelUpdatedV1::new(Uuid::now_v7(), self.now, channel.clone());
        let record = event.record(self.tx.source());
        self.tx.append(record)?;
        Ok(channel)
    }

    /// Sets (or removes) per-SKU safety-stock overrides of a channel, one
    /// `SAFETY_STOCK_SET` event each; an item that changes nothing records nothing.
    /// Returns how many changed.
    pub(crate) fn set_safety_stock(
        &mut self,
        id: &ChannelId,
        items: &SafetyOverrides,
    ) -> Result<usize, LedgerError> {
        if self.tx.channel(id)?.is_none() {
            return Err(DomainError::NotFound("channel").into());
        }
        let mut skus: Vec<Sku> = items.iter().map(|i| i.sku.clone()).collect();
        skus.sort();
        skus.dedup();
        let current = self.tx.safety_overrides(id, &skus)?;
        let mut applied = 0;
        for item in items.iter() {
            let key = (item.store_id.clone(), item.sku.clone());
            let (value, version) = current.get(&key).copied().unwrap_or((None, 0));
            if value == item.safety_stock {
                continue;
            }
            self.tx
                .put_safety_override(id, item, version + 1, self.now)?;
            let event = SafetyStockSetV1 {
                schema_version: 1,
                event_id: Uuid::now_v7(),
                event_type: SafetyStockSetV1::EVENT_TYPE.to_owned(),
                channel_id: id.clone(),
                store_id: item.store_id.clone(),
                product_sku: item.sku.clone(),
                safety_stock: item.safety_stock,
                version: version + 1,
                occurred_at: self.now,
            };
            let record = event.record(self.tx.source());
            self.tx.append(record)?;
            applied += 1;
        }
        Ok(applied)
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
        lines: Option<&Lines>,
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
        lines: Option<&Lines>,
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
        lines: Option<&Lines>,
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
        lines: Option<&Lines>,
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
    /// rows (in (store, sku) order), with one event per row, then stores the
    /// reservation. Both lower a count by what was taken, so each event's `quantity`
    /// is negative.
    fn settle(
        &mut self,
        reservation: &Reservation,
        taken: &[(StoreId, Sku, i64)],
        step: impl Fn(&StockLevel, i64) -> Result<StockLevel, DomainError>,
        event_type: EventType,
        reason: Reason,
    ) -> Result<(), LedgerError> {
        if taken.is_empty() {
            return Ok(());
        }
        let mut taken = taken.to_vec();
        taken.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        // Every row is checked before any is written (a reservation holds one (store,
        // sku) at most once), so a refusal — a shortage left fewer units on hand than
        // a line ships — leaves nothing behind for the back end to undo.
        // Each row's level before and after.
        let mut levels = Vec::with_capacity(taken.len());
        for (store, sku, quantity) in &taken {
            let level = self.tx.stock(store, sku)?.ok_or_else(|| {
                LedgerError::Internal(format!(
                    "reservation holds {sku} in {store} but the row is gone"
                ))
            })?;
            levels.push((level, step(&level, *quantity)?));
        }
        for ((store, sku, quantity), (_, after)) in taken.iter().zip(&levels) {
            let cause = held_for(reservation, event_type, reason, -quantity);
            self.change(store, sku, *after, cause)?;
        }
        self.tx.update_reservation(reservation, self.now)?;
        // A release lowers a row's shortage: fewer units of the channel reservations
        // still held there are short.
        for ((store, sku, _), (before, _)) in taken.iter().zip(&levels) {
            if before.shortage() > 0 {
                self.reconcile(store, sku)?;
            }
        }
        Ok(())
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
            // A shortage, before or after: the row as this command leaves it is the
            // one after any reallocation.
            let after = if level.shortage() > 0 || after.shortage() > 0 {
                self.reconcile(&cmd.store_id, &cmd.sku)?;
                self.tx.stock(&cmd.store_id, &cmd.sku)?.unwrap_or(after)
            } else {
                after
            };
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

    /// Keeps the channel reservations held at a (store, sku) in step with the row's
    /// shortage (`reserved − on_hand`) after a change of it (channels.md,
    /// reallocation). A shortage larger than what is already marked `short` is taken
    /// from channel reservations newest first: each one's units move to other
    /// locations of its channel where they fit, and what cannot move is marked
    /// short. A shortage that shrank (stock came in, a reservation let go) clears
    /// `short` oldest reservation first. Store-direct reservations never move and are
    /// never marked: their part of a shortage stays the row's alone.
    fn reconcile(&mut self, store: &StoreId, sku: &Sku) -> Result<(), LedgerError> {
        let shortage = self.tx.stock(store, sku)?.unwrap_or_default().shortage();
        let mut holds = self.tx.channel_holds(store, sku)?;
        holds.retain(|r| r.allocation(sku, store).is_some_and(|a| a.held() > 0));
        holds.sort_by(|a, b| {
            (b.created_at(), b.reservation_id()).cmp(&(a.created_at(), a.reservation_id()))
        });
        let short_of = |r: &Reservation| r.allocation(sku, store).map_or(0, |a| a.short());
        let marked: i64 = holds.iter().map(short_of).sum();
        if shortage > marked {
            let mut need = shortage - marked;
            for mut r in holds {
                let Some(a) = r.allocation(sku, store) else {
                    continue;
                };
                let (short, take) = (a.short(), (a.held() - a.short()).min(need));
                if take == 0 {
                    continue;
                }
                let moved = self.move_held(&mut r, sku, store, take)?;
                r.set_short(sku, store, short + take - moved);
                self.tx.rewrite_reservation(&r, self.now)?;
                need -= take;
                if need == 0 {
                    break;
                }
            }
        } else if shortage < marked {
            let mut excess = marked - shortage;
            for mut r in holds.into_iter().rev() {
                let short = short_of(&r);
                let clear = short.min(excess);
                if clear == 0 {
                    continue;
                }
                r.set_short(sku, store, short - clear);
                self.tx.update_reservation(&r, self.now)?;
                excess -= clear;
                if excess == 0 {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Moves up to `wanted` units of a channel reservation's `sku` held at `from` to
    /// other locations of its channel (its current configuration and safety stock):
    /// a `RELEASED` at `from`, then a `RESERVED` at each location, all of reason
    /// `reallocated`. Returns how many moved.
    fn move_held(
        &mut self,
        r: &mut Reservation,
        sku: &Sku,
        from: &StoreId,
        wanted: i64,
    ) -> Result<i64, LedgerError> {
        let Some(id) = r.channel().cloned() else {
            return Ok(0);
        };
        let Some(channel) = self.tx.channel(&id)? else {
            return Ok(0);
        };
        let shelves = self.shelves(&channel, std::slice::from_ref(sku))?;
        let to = reallocate(&channel.config, sku, wanted, from, |st, sk| {
            shelf_of(&shelves, st, sk)
        });
        let moved: i64 = to.iter().map(|(_, n)| n).sum();
        if moved == 0 {
            return Ok(0);
        }
        r.relocate(sku, from, &to)?;
        let level = self.tx.stock(from, sku)?.unwrap_or_default();
        let cause = held_for(r, EventType::Released, Reason::Reallocated, -moved);
        self.change(from, sku, level.release(moved)?, cause)?;
        for (store, n) in &to {
            let level = shelf_of(&shelves, store, sku).level.unwrap_or_default();
            let after = level
                .reserve(*n)
                .map_err(|_| LedgerError::Internal("reallocation over availability".into()))?;
            let cause = held_for(r, EventType::Reserved, Reason::Reallocated, *n);
            self.change(store, sku, after, cause)?;
        }
        Ok(moved)
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

/// What the channel sees at (store, sku): nothing where the location has no row.
fn shelf_of(shelves: &HashMap<(StoreId, Sku), Shelf>, store: &StoreId, sku: &Sku) -> Shelf {
    shelves
        .get(&(store.clone(), sku.clone()))
        .copied()
        .unwrap_or(Shelf {
            level: None,
            safety_stock: 0,
        })
}
