//! A lane's batch as one unit of work: the engine's reads go to PostgreSQL once per
//! row (rows are locked `FOR UPDATE` and then served from memory for the rest of the
//! batch), its writes are buffered, and the batch is written with a handful of
//! set-based statements (`unnest`) before its single COMMIT.
//!
//! So forty reservations of one hot SKU cost one `SELECT … FOR UPDATE`, one UPDATE
//! of the row, one INSERT of the reservations (lines inline) and one for the log —
//! instead of eight statements each. A refused command leaves no trace: every
//! buffered write records how to undo itself, and a refusal undoes the command's
//! writes before the next command runs. Events are appended in the order they were
//! made, so each key's versions are in order in the log ([`append_to_log`]).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use invsync_core::channel::{Channel, SafetyOverride};
use invsync_core::event::PARTITIONS;
use invsync_core::{ChannelId, LogRecord, Reservation, Sku, StockLevel, StoreId};
use postgres::{Row as PgRow, Transaction};
use uuid::Uuid;

use super::rows::{load_reservation, load_reservations, prepared, Statements};
use crate::engine::{Overrides, Tx};
use crate::error::LedgerError;

type Key = (String, String);
/// A stock row the batch wrote, with its key.
type Written<'s> = (&'s Key, &'s Row);

/// A stock row as the batch knows it.
#[derive(Debug, Clone)]
struct Row {
    level: Option<StockLevel>,
    /// Whether PostgreSQL has the row (UPDATE) or not (INSERT).
    stored: bool,
    /// Written by the batch: `updated_at`.
    written: Option<DateTime<Utc>>,
}

/// Everything the batch has read and written so far.
#[derive(Default)]
pub(crate) struct State {
    stock: HashMap<Key, Row>,
    /// Reservations read or written, in their latest state.
    reservations: HashMap<Uuid, Reservation>,
    /// New reservations in insertion order, with their key and fingerprint.
    inserted: Vec<(Uuid, String, String)>,
    by_key: HashMap<String, (String, Uuid)>,
    /// Stored reservations the batch changed.
    updated: HashSet<Uuid>,
    /// Of those, the ones whose allocations changed (reallocation): they may hold at
    /// new locations, which `channel_holds` must list.
    relined: HashSet<Uuid>,
    adjustments: Vec<(String, String, String, DateTime<Utc>)>,
    /// Writes recorded in this batch, by key: (fingerprint, outcome JSON).
    adjustments_by_ref: HashMap<String, (String, String)>,
    events: Vec<LogRecord>,
    now: Option<DateTime<Utc>>,
    /// Channels read by the prefetch (or locked by an admin write), `None` when
    /// missing: a reservation allocates with the configuration it read once.
    channels: HashMap<ChannelId, Option<Channel>>,
    /// Safety-stock overrides read by the prefetch, per channel, for its SKUs.
    overrides: HashMap<ChannelId, (HashSet<Sku>, Overrides)>,
    /// Idempotency keys known (by the prefetch) to have no stored reservation.
    unused_keys: HashSet<String>,
    /// Locks a command found it needed after the prefetch (reallocation) and could
    /// not take at once: the next attempt's prefetch takes them in order.
    pub(crate) learned: Prefetch,
}

type Undo = Box<dyn FnOnce(&mut State) + Send>;

/// The [`Tx`] of one command inside a buffered batch.
pub(crate) struct BufferedTx<'a, 'b> {
    pub(crate) pg: &'a mut Transaction<'b>,
    /// The connection's prepared statements: each query is planned once per
    /// connection, not once per batch.
    pub(crate) statements: &'a mut Statements,
    pub(crate) state: &'a mut State,
    pub(crate) undo: &'a mut Vec<Undo>,
    pub(crate) source: &'a str,
}

/// Undoes a refused command's buffered writes, newest first.
pub(crate) fn roll_back(state: &mut State, undo: &mut Vec<Undo>) {
    while let Some(u) = undo.pop() {
        u(state);
    }
}

type Params<'p> = &'p [&'p (dyn postgres::types::ToSql + Sync)];

/// `query_opt` through the connection's statement cache.
fn query_opt(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    sql: &'static str,
    params: Params<'_>,
) -> Result<Option<PgRow>, LedgerError> {
    let statement = prepared(pg, statements, sql)?;
    Ok(pg.query_opt(&statement, params)?)
}

/// `query` through the connection's statement cache.
fn query(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    sql: &'static str,
    params: Params<'_>,
) -> Result<Vec<PgRow>, LedgerError> {
    let statement = prepared(pg, statements, sql)?;
    Ok(pg.query(&statement, params)?)
}

/// `execute` through the connection's statement cache.
fn execute(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    sql: &'static str,
    params: Params<'_>,
) -> Result<u64, LedgerError> {
    let statement = prepared(pg, statements, sql)?;
    Ok(pg.execute(&statement, params)?)
}

fn key(store: &StoreId, sku: &Sku) -> Key {
    (store.to_string(), sku.to_string())
}

impl Tx for BufferedTx<'_, '_> {
    fn stock(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<StockLevel>, LedgerError> {
        let k = key(store, sku);
        if let Some(row) = self.state.stock.get(&k) {
            return Ok(row.level);
        }
        let found = query_opt(
            self.pg,
            self.statements,
            "SELECT on_hand, reserved, version FROM stock
             WHERE store_id = $1 AND sku = $2 FOR UPDATE",
            &[&store.as_str(), &sku.as_str()],
        )?;
        let level = match found {
            Some(r) => Some(StockLevel::new(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
            )?),
            None => None,
        };
        // What PostgreSQL holds (and now locks): true whatever this command decides.
        self.state.stock.insert(
            k,
            Row {
                level,
                stored: level.is_some(),
                written: None,
            },
        );
        Ok(level)
    }

    fn put_stock(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        level: StockLevel,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let k = key(store, sku);
        let before = self.state.stock.get(&k).cloned();
        let stored = before.as_ref().is_some_and(|r| r.stored);
        self.state.stock.insert(
            k.clone(),
            Row {
                level: Some(level),
                stored,
                written: Some(now),
            },
        );
        self.undo.push(Box::new(move |s: &mut State| match before {
            Some(row) => {
                s.stock.insert(k, row);
            }
            None => {
                s.stock.remove(&k);
            }
        }));
        Ok(())
    }

    fn append(&mut self, record: LogRecord) -> Result<(), LedgerError> {
        self.state.events.push(record);
        let len = self.state.events.len() - 1;
        self.undo
            .push(Box::new(move |s: &mut State| s.events.truncate(len)));
        Ok(())
    }

    fn source(&self) -> &str {
        self.source
    }

    fn channel(&mut self, id: &ChannelId) -> Result<Option<Channel>, LedgerError> {
        if let Some(found) = self.state.channels.get(id) {
            return Ok(found.clone());
        }
        // Not read by a prefetch: an admin write, which locks the channel so that two
        // changes of it serialize, and so that it waits for the reservations that
        // share-locked the channel in their prefetch (see `Lock::Share`).
        let found = query_opt(
            self.pg,
            self.statements,
            "SELECT version, config FROM channels WHERE channel_id = $1 FOR UPDATE",
            &[&id.as_str()],
        )?
        .map(|r| crate::parts::channel(id.as_str(), r.try_get(0)?, r.try_get::<_, &str>(1)?))
        .transpose()?;
        self.state.channels.insert(id.clone(), found.clone());
        Ok(found)
    }

    fn put_channel(&mut self, channel: &Channel, now: DateTime<Utc>) -> Result<(), LedgerError> {
        // Written at once: an admin write runs alone in its transaction.
        execute(
            self.pg,
            self.statements,
            "INSERT INTO channels (channel_id, version, config, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel_id) DO UPDATE SET version = EXCLUDED.version,
                 config = EXCLUDED.config, updated_at = EXCLUDED.updated_at",
            &[
                &channel.channel_id.as_str(),
                &channel.version,
                &crate::parts::config_json(&channel.config)?,
                &now,
            ],
        )?;
        self.state
            .channels
            .insert(channel.channel_id.clone(), Some(channel.clone()));
        Ok(())
    }

    fn safety_overrides(
        &mut self,
        channel: &ChannelId,
        skus: &[Sku],
    ) -> Result<Overrides, LedgerError> {
        if let Some((known, overrides)) = self.state.overrides.get(channel) {
            if skus.iter().all(|s| known.contains(s)) {
                return Ok(overrides.clone());
            }
        }
        load_overrides(self.pg, self.statements, channel, skus)
    }

    fn put_safety_override(
        &mut self,
        channel: &ChannelId,
        item: &SafetyOverride,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        execute(
            self.pg,
            self.statements,
            "INSERT INTO safety_stock (channel_id, sku, store_id, safety_stock, version, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (channel_id, sku, store_id) DO UPDATE SET
                 safety_stock = EXCLUDED.safety_stock, version = EXCLUDED.version,
                 updated_at = EXCLUDED.updated_at",
            &[
                &channel.as_str(),
                &item.sku.as_str(),
                &item.store_id.as_str(),
                &item.safety_stock,
                &version,
                &now,
            ],
        )?;
        Ok(())
    }

    fn reservation_by_key(
        &mut self,
        key: &str,
    ) -> Result<Option<(String, Reservation)>, LedgerError> {
        if let Some((fingerprint, id)) = self.state.by_key.get(key) {
            if let Some(r) = self.state.reservations.get(id) {
                return Ok(Some((fingerprint.clone(), r.clone())));
            }
        }
        if self.state.unused_keys.contains(key) {
            return Ok(None);
        }
        let Some(row) = query_opt(
            self.pg,
            self.statements,
            "SELECT id, fingerprint FROM reservations WHERE idem_key = $1",
            &[&key],
        )?
        else {
            return Ok(None);
        };
        let id: Uuid = row.try_get(0)?;
        let reservation = match self.state.reservations.get(&id) {
            Some(r) => r.clone(),
            None => load_reservation(self.pg, id)?
                .ok_or_else(|| LedgerError::Internal(format!("reservation {id} vanished")))?,
        };
        Ok(Some((row.try_get(1)?, reservation)))
    }

    fn reservation(&mut self, id: Uuid) -> Result<Option<Reservation>, LedgerError> {
        if let Some(r) = self.state.reservations.get(&id) {
            return Ok(Some(r.clone()));
        }
        // Lock the reservation so two releases of it serialize.
        if self
            .pg
            .query_opt(
                "SELECT 1 FROM reservations WHERE id = $1 FOR UPDATE",
                &[&id],
            )?
            .is_none()
        {
            return Ok(None);
        }
        let loaded = load_reservation(self.pg, id)?;
        if let Some(r) = &loaded {
            self.state.reservations.insert(id, r.clone());
        }
        Ok(loaded)
    }

    fn insert_reservation(
        &mut self,
        r: &Reservation,
        key: &str,
        fingerprint: &str,
    ) -> Result<(), LedgerError> {
        let id = r.reservation_id();
        self.state.reservations.insert(id, r.clone());
        self.state
            .inserted
            .push((id, key.to_owned(), fingerprint.to_owned()));
        self.state
            .by_key
            .insert(key.to_owned(), (fingerprint.to_owned(), id));
        let key = key.to_owned();
        self.undo.push(Box::new(move |s: &mut State| {
            s.reservations.remove(&id);
            s.inserted.pop();
            s.by_key.remove(&key);
        }));
        Ok(())
    }

    fn update_reservation(
        &mut self,
        r: &Reservation,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let id = r.reservation_id();
        let before = self.state.reservations.insert(id, r.clone());
        let is_new = self.state.inserted.iter().any(|(i, _, _)| *i == id);
        let newly_updated = !is_new && self.state.updated.insert(id);
        self.state.now = Some(now);
        self.undo.push(Box::new(move |s: &mut State| {
            match before {
                Some(r) => s.reservations.insert(id, r),
                None => s.reservations.remove(&id),
            };
            if newly_updated {
                s.updated.remove(&id);
            }
        }));
        Ok(())
    }

    fn rewrite_reservation(
        &mut self,
        r: &Reservation,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.update_reservation(r, now)?;
        let id = r.reservation_id();
        if self.state.updated.contains(&id) && self.state.relined.insert(id) {
            self.undo.push(Box::new(move |s: &mut State| {
                s.relined.remove(&id);
            }));
        }
        Ok(())
    }

    /// The prefetch could not know these reservations, nor the rows a move of them
    /// may touch (every location of their channels), so they are locked here, after
    /// the batch's other locks: out of the global order. Waiting for them could
    /// deadlock, so they are taken `NOWAIT`; if one is busy, the batch is rolled back
    /// and run again with all of them in its prefetch, where they are taken in order.
    fn channel_holds(
        &mut self,
        store: &StoreId,
        sku: &Sku,
    ) -> Result<Vec<Reservation>, LedgerError> {
        // What is stored, and what this batch made or changed and has not written yet.
        let mut ids: Vec<Uuid> = query(
            self.pg,
            self.statements,
            "SELECT h.reservation_id FROM channel_holds h
             JOIN reservations r ON r.id = h.reservation_id
             WHERE h.store_id = $1 AND h.sku = $2 AND r.status = 'active'",
            &[&store.as_str(), &sku.as_str()],
        )?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        ids.extend(
            self.state
                .reservations
                .values()
                .filter(|r| r.channel().is_some() && r.allocation(sku, store).is_some())
                .map(|r| r.reservation_id()),
        );
        ids.sort();
        ids.dedup();
        let missing: Vec<Uuid> = ids
            .iter()
            .filter(|id| !self.state.reservations.contains_key(id))
            .copied()
            .collect();
        // Read unlocked first, to know which rows they may touch.
        let unlocked = load_reservations(self.pg, &missing, false)?;
        let mut rows: Vec<Key> = Vec::new();
        let mut channels: Vec<ChannelId> = Vec::new();
        for r in unlocked
            .iter()
            .chain(ids.iter().filter_map(|id| self.state.reservations.get(id)))
        {
            rows.extend(r.rows().iter().map(|(st, sk)| key(st, sk)));
            channels.extend(r.channel().cloned());
        }
        channels.sort();
        channels.dedup();
        for c in &channels {
            rows.extend(channel_rows(
                self.pg,
                self.statements,
                self.state,
                c,
                std::slice::from_ref(sku),
                Lock::None,
            )?);
        }
        rows.retain(|k| !self.state.stock.contains_key(k));
        rows.sort();
        rows.dedup();
        if let Err(e) = lock_now(self.pg, self.state, &missing, &rows) {
            self.state.learned.reservations.extend(missing);
            self.state.learned.rows.extend(rows);
            return Err(e);
        }
        let mut holds = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.state.reservations.get(&id) {
                if r.status() == invsync_core::ReservationStatus::Active {
                    holds.push(r.clone());
                }
            }
        }
        Ok(holds)
    }

    fn recorded(&mut self, key: &str) -> Result<Option<(String, String)>, LedgerError> {
        if let Some(found) = self.state.adjustments_by_ref.get(key) {
            return Ok(Some(found.clone()));
        }
        // The `adjustments` table records every repeatable write: its key column holds
        // an external_ref or a key made by `record_key`.
        let Some(row) = query_opt(
            self.pg,
            self.statements,
            "SELECT fingerprint, outcome FROM adjustments WHERE external_ref = $1",
            &[&key],
        )?
        else {
            return Ok(None);
        };
        Ok(Some((row.try_get(0)?, row.try_get(1)?)))
    }

    fn record(
        &mut self,
        key: &str,
        fingerprint: &str,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let r = key.to_owned();
        self.state
            .adjustments
            .push((r.clone(), fingerprint.to_owned(), outcome.to_owned(), now));
        self.state
            .adjustments_by_ref
            .insert(r.clone(), (fingerprint.to_owned(), outcome.to_owned()));
        self.undo.push(Box::new(move |s: &mut State| {
            s.adjustments.pop();
            s.adjustments_by_ref.remove(&r);
        }));
        Ok(())
    }

    // Not buffered: these write (or lock) at once, inside the same transaction, which
    // commits only if the whole command succeeds.
    fn purge_events(&mut self, before: DateTime<Utc>, limit: usize) -> Result<usize, LedgerError> {
        // Offsets only grow with time, so the oldest events are the lowest offsets;
        // deleting a prefix keeps the retained log gapless.
        Ok(execute(
            self.pg,
            self.statements,
            "DELETE FROM events WHERE log_offset IN (
                 SELECT log_offset FROM events WHERE occurred_at < $1 ORDER BY log_offset LIMIT $2)",
            &[&before, &(limit as i64)],
        )? as usize)
    }

    fn due_reservations(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Uuid>, LedgerError> {
        // SKIP LOCKED: instances sweeping at once split the work instead of queueing.
        let rows = query(
            self.pg,
            self.statements,
            "SELECT id FROM reservations
             WHERE status = 'active' AND expires_at IS NOT NULL AND expires_at <= $1
             ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&now, &(limit as i64)],
        )?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    fn lock_reservations(&mut self, ids: &[Uuid]) -> Result<(), LedgerError> {
        let rows = lock_reservations(self.pg, self.state, ids.to_vec())?;
        lock_rows(self.pg, self.statements, self.state, rows)
    }

    fn advance_cursor(
        &mut self,
        name: &str,
        offset: i64,
        term: Option<&crate::Term>,
    ) -> Result<(), LedgerError> {
        if let Some(term) = term {
            super::lease::check_fence(self.pg, term)?;
        }
        execute(
            self.pg,
            self.statements,
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, EXCLUDED.value)",
            &[&crate::cursor_key(name), &offset],
        )?;
        Ok(())
    }

    fn set_cursor(
        &mut self,
        name: &str,
        offset: i64,
        term: Option<&crate::Term>,
    ) -> Result<(), LedgerError> {
        if let Some(term) = term {
            super::lease::check_fence(self.pg, term)?;
        }
        execute(
            self.pg,
            self.statements,
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&crate::cursor_key(name), &offset],
        )?;
        Ok(())
    }
}

/// What a lane may read for a command before running the batch, in one query per
/// kind for the whole batch: its idempotency key, the reservations it will change,
/// and the stock rows it will lock. Every row lock a batch takes is taken here, in
/// one global order, before any write (see [`prefetch`]).
#[derive(Debug, Default)]
pub(crate) struct Prefetch {
    pub(crate) idempotency_key: Option<String>,
    /// Reservations the command releases or fulfils: they and the stock rows they
    /// hold are locked up front.
    pub(crate) reservations: Vec<uuid::Uuid>,
    pub(crate) rows: Vec<(String, String)>,
    /// A channel reservation: its channel and SKUs. The prefetch reads the channel
    /// and its overrides and locks every candidate row (each location × SKU).
    pub(crate) channel: Option<(ChannelId, Vec<Sku>)>,
}

impl Prefetch {
    /// Adds what `other` locks.
    pub(crate) fn absorb(&mut self, other: Prefetch) {
        self.reservations.extend(other.reservations);
        self.rows.extend(other.rows);
    }

    /// For a command that changes the reservation `id` (a release, a fulfilment).
    pub(crate) fn holding(id: uuid::Uuid) -> Self {
        Self {
            reservations: vec![id],
            ..Self::default()
        }
    }
}

/// Reads, in one query each, what the batch's commands said they will need: which
/// idempotency keys are unused, the reservations they change and the stock rows —
/// and takes every row lock the batch will hold, before any write, in one global
/// order: reservations by id, then stock rows by (store, sku). A batch that waits for
/// a lock holds only locks that come earlier in that order, so no two transactions
/// (lanes, instances, the expiry sweep) can wait on each other in a cycle.
///
/// Releases and fulfilments used to lock their stock rows one by one while the engine
/// ran, after the batch had locked its other rows: out of order, and 24 clients of
/// mixed traffic on 8 SKUs deadlocked (24 operations/s, p99 5 s).
pub(crate) fn prefetch(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    state: &mut State,
    wanted: &[&Prefetch],
) -> Result<(), LedgerError> {
    let keys: Vec<&str> = wanted
        .iter()
        .filter_map(|p| p.idempotency_key.as_deref())
        .collect();
    if !keys.is_empty() {
        let used: HashSet<String> = pg
            .query(
                "SELECT idem_key FROM reservations WHERE idem_key = ANY($1)",
                &[&keys],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        state.unused_keys = keys
            .into_iter()
            .filter(|k| !used.contains(*k))
            .map(str::to_owned)
            .collect();
    }
    let ids: Vec<Uuid> = wanted
        .iter()
        .flat_map(|p| p.reservations.iter().copied())
        .collect();
    let mut rows: Vec<(String, String)> =
        wanted.iter().flat_map(|p| p.rows.iter().cloned()).collect();
    // Channels first, in id order: the first locks of the global order.
    let mut channels: Vec<&(ChannelId, Vec<Sku>)> =
        wanted.iter().filter_map(|p| p.channel.as_ref()).collect();
    channels.sort_by(|a, b| a.0.cmp(&b.0));
    for (channel, skus) in channels {
        rows.extend(channel_rows(
            pg,
            statements,
            state,
            channel,
            skus,
            Lock::Share,
        )?);
    }
    rows.extend(lock_reservations(pg, state, ids)?);
    lock_rows(pg, statements, state, rows)
}

/// Whether [`channel_rows`] share-locks the channel it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// A reservation through the channel: the configuration it allocates with stays
    /// in force until it commits. An admin change (`FOR UPDATE` in `Tx::channel`, for
    /// the configuration and the overrides alike) waits for it, or it waits for the
    /// change and reads the new one: a reservation and a change always serialize, and
    /// the log orders them as they happened. Without this lock, 12 of 633 channel
    /// reservations racing changes were logged right after a change they did not
    /// respect.
    Share,
    /// Reallocation, which reads channels after the stock rows are locked: out of the
    /// lock order, so it must not wait on a channel.
    None,
}

/// Reads a channel and its overrides for `skus` into the batch's state, and returns
/// its candidate rows: every location × SKU.
fn channel_rows(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    state: &mut State,
    channel: &ChannelId,
    skus: &[Sku],
    lock: Lock,
) -> Result<Vec<(String, String)>, LedgerError> {
    if !state.channels.contains_key(channel) {
        let sql = match lock {
            Lock::Share => "SELECT version, config FROM channels WHERE channel_id = $1 FOR SHARE",
            Lock::None => "SELECT version, config FROM channels WHERE channel_id = $1",
        };
        let found = query_opt(pg, statements, sql, &[&channel.as_str()])?
            .map(|r| {
                crate::parts::channel(channel.as_str(), r.try_get(0)?, r.try_get::<_, &str>(1)?)
            })
            .transpose()?;
        state.channels.insert(channel.clone(), found);
    }
    let (known, overrides) = state.overrides.entry(channel.clone()).or_default();
    let missing: Vec<Sku> = skus
        .iter()
        .filter(|s| !known.contains(*s))
        .cloned()
        .collect();
    if !missing.is_empty() {
        overrides.extend(load_overrides(pg, statements, channel, &missing)?);
        known.extend(missing);
    }
    let Some(Some(found)) = state.channels.get(channel) else {
        return Ok(Vec::new());
    };
    Ok(found
        .config
        .locations()
        .iter()
        .flat_map(|l| skus.iter().map(|s| (l.store_id.to_string(), s.to_string())))
        .collect())
}

/// A channel's overrides for `skus`, in one query.
fn load_overrides(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    channel: &ChannelId,
    skus: &[Sku],
) -> Result<Overrides, LedgerError> {
    let names: Vec<&str> = skus.iter().map(Sku::as_str).collect();
    let mut out = Overrides::new();
    for r in query(
        pg,
        statements,
        "SELECT store_id, sku, safety_stock, version FROM safety_stock
         WHERE channel_id = $1 AND sku = ANY($2)",
        &[&channel.as_str(), &names],
    )? {
        let corrupt =
            |e: invsync_core::IdError| LedgerError::Internal(format!("stored override: {e}"));
        out.insert(
            (
                StoreId::parse(r.try_get::<_, String>(0)?).map_err(corrupt)?,
                Sku::parse(r.try_get::<_, String>(1)?).map_err(corrupt)?,
            ),
            (r.try_get(2)?, r.try_get(3)?),
        );
    }
    Ok(out)
}

/// Locks and loads the reservations the batch will change (in id order, two queries
/// for all of them) and returns the stock rows they hold.
fn lock_reservations(
    pg: &mut Transaction<'_>,
    state: &mut State,
    mut ids: Vec<Uuid>,
) -> Result<Vec<(String, String)>, LedgerError> {
    ids.retain(|id| !state.reservations.contains_key(id));
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    ids.sort();
    ids.dedup();
    let mut rows = Vec::new();
    for r in load_reservations(pg, &ids, true)? {
        rows.extend(
            r.rows()
                .into_iter()
                .map(|(store, sku)| (store.to_string(), sku.to_string())),
        );
        state.reservations.insert(r.reservation_id(), r);
    }
    Ok(rows)
}

/// Locks, without waiting, reservations and stock rows a command needs beyond its
/// prefetch, and loads them into the batch's state. A lock someone else holds is a
/// [`LedgerError::Contention`]: the batch runs again, with these in its prefetch.
fn lock_now(
    pg: &mut Transaction<'_>,
    state: &mut State,
    ids: &[Uuid],
    rows: &[Key],
) -> Result<(), LedgerError> {
    let busy = |e: postgres::Error| match e.code() {
        Some(c) if *c == postgres::error::SqlState::LOCK_NOT_AVAILABLE => {
            LedgerError::Contention(format!("a lock beyond the prefetch is busy: {e}"))
        }
        _ => LedgerError::from(e),
    };
    if !ids.is_empty() {
        pg.query(
            "SELECT 1 FROM reservations WHERE id = ANY($1) ORDER BY id FOR UPDATE NOWAIT",
            &[&ids],
        )
        .map_err(busy)?;
        for r in load_reservations(pg, ids, false)? {
            state.reservations.insert(r.reservation_id(), r);
        }
    }
    if !rows.is_empty() {
        let found = pg
            .query(
                "SELECT s.store_id, s.sku, s.on_hand, s.reserved, s.version
                 FROM stock s JOIN unnest($1::text[], $2::text[]) AS w(store_id, sku)
                   ON s.store_id = w.store_id AND s.sku = w.sku
                 ORDER BY s.store_id, s.sku FOR UPDATE OF s NOWAIT",
                &[
                    &rows.iter().map(|k| k.0.as_str()).collect::<Vec<_>>(),
                    &rows.iter().map(|k| k.1.as_str()).collect::<Vec<_>>(),
                ],
            )
            .map_err(busy)?;
        remember_rows(state, rows, &found)?;
    }
    Ok(())
}

/// Records what PostgreSQL has for each of `rows` (`found`: the ones it has).
fn remember_rows(state: &mut State, rows: &[Key], found: &[PgRow]) -> Result<(), LedgerError> {
    for (store, sku) in rows {
        state.stock.insert(
            (store.clone(), sku.clone()),
            Row {
                level: None,
                stored: false,
                written: None,
            },
        );
    }
    for r in found {
        let level = StockLevel::new(r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)?;
        state.stock.insert(
            (r.try_get(0)?, r.try_get(1)?),
            Row {
                level: Some(level),
                stored: true,
                written: None,
            },
        );
    }
    Ok(())
}

/// Locks the stock rows the batch does not hold yet, in (store, sku) order, and
/// records what PostgreSQL has for each (a missing row is inserted at the flush).
fn lock_rows(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    state: &mut State,
    mut rows: Vec<(String, String)>,
) -> Result<(), LedgerError> {
    rows.retain(|k| !state.stock.contains_key(k));
    rows.sort();
    rows.dedup();
    if rows.is_empty() {
        return Ok(());
    }
    let found = query(
        pg,
        statements,
        "SELECT s.store_id, s.sku, s.on_hand, s.reserved, s.version
         FROM stock s JOIN unnest($1::text[], $2::text[]) AS w(store_id, sku)
           ON s.store_id = w.store_id AND s.sku = w.sku
         ORDER BY s.store_id, s.sku FOR UPDATE OF s",
        &[
            &rows.iter().map(|k| k.0.as_str()).collect::<Vec<_>>(),
            &rows.iter().map(|k| k.1.as_str()).collect::<Vec<_>>(),
        ],
    )?;
    remember_rows(state, &rows, &found)
}

/// Writes everything the batch buffered, set-based, in the transaction.
pub(crate) fn flush(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    state: &State,
    now: DateTime<Utc>,
) -> Result<(), LedgerError> {
    // Stock: new rows, then changed rows (one statement each).
    let (mut fresh, mut changed): (Vec<Written<'_>>, Vec<Written<'_>>) = state
        .stock
        .iter()
        .filter(|(_, r)| r.written.is_some() && r.level.is_some())
        .partition(|(_, r)| !r.stored);
    fresh.sort_by(|a, b| a.0.cmp(b.0));
    changed.sort_by(|a, b| a.0.cmp(b.0));
    for (rows, sql) in [
        (&fresh, "INSERT INTO stock (store_id, sku, on_hand, reserved, version, updated_at)
                  SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::timestamptz[])"),
        (&changed, "UPDATE stock SET on_hand = u.on_hand, reserved = u.reserved, version = u.version, updated_at = u.at
                    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::timestamptz[])
                         AS u(store_id, sku, on_hand, reserved, version, at)
                    WHERE stock.store_id = u.store_id AND stock.sku = u.sku"),
    ] {
        if rows.is_empty() {
            continue;
        }
        let levels: Vec<StockLevel> = rows.iter().filter_map(|(_, r)| r.level).collect();
        execute(pg, statements, sql,
            &[
                &rows.iter().map(|(k, _)| k.0.as_str()).collect::<Vec<_>>(),
                &rows.iter().map(|(k, _)| k.1.as_str()).collect::<Vec<_>>(),
                &levels.iter().map(|l| l.on_hand()).collect::<Vec<_>>(),
                &levels.iter().map(|l| l.reserved()).collect::<Vec<_>>(),
                &levels.iter().map(|l| l.version()).collect::<Vec<_>>(),
                &rows.iter().map(|(_, r)| r.written.unwrap_or(now)).collect::<Vec<_>>(),
            ],
        )?;
    }

    // New reservations and their lines, in their final state, in key order: a
    // concurrent insert of the same key waits on ours, and two batches inserting
    // several keys then wait in one order, never on each other.
    let mut new: Vec<(&Reservation, &str, &str)> = state
        .inserted
        .iter()
        .filter_map(|(id, k, f)| {
            state
                .reservations
                .get(id)
                .map(|r| (r, k.as_str(), f.as_str()))
        })
        .collect();
    new.sort_by_key(|(_, key, _)| *key);
    if !new.is_empty() {
        let lines = new
            .iter()
            .map(|(r, _, _)| crate::parts::rows_json(r))
            .collect::<Result<Vec<_>, _>>()?;
        execute(pg, statements, "INSERT INTO reservations
                 (id, order_id, store_id, idem_key, fingerprint, status, expires_at, created_at, updated_at, channel, lines)
             SELECT id, o, s, k, f, st, e, c, $9, ch, l FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[],
                 $5::text[], $6::text[], $7::timestamptz[], $8::timestamptz[], $10::text[], $11::text[])
                 AS u(id, o, s, k, f, st, e, c, ch, l)",
            &[
                &new.iter().map(|(r, _, _)| r.reservation_id()).collect::<Vec<_>>(),
                &new.iter().map(|(r, _, _)| r.order_id().as_str()).collect::<Vec<_>>(),
                &new.iter().map(|(r, _, _)| r.store_id().map_or("", StoreId::as_str)).collect::<Vec<_>>(),
                &new.iter().map(|(_, k, _)| *k).collect::<Vec<_>>(),
                &new.iter().map(|(_, _, f)| *f).collect::<Vec<_>>(),
                &new.iter().map(|(r, _, _)| r.status().as_str()).collect::<Vec<_>>(),
                &new.iter().map(|(r, _, _)| r.expires_at()).collect::<Vec<_>>(),
                &new.iter().map(|(r, _, _)| r.created_at()).collect::<Vec<_>>(),
                &now,
                &new.iter().map(|(r, _, _)| r.channel().map(ChannelId::as_str)).collect::<Vec<_>>(),
                &lines,
            ],
        )?;
        list_holds(pg, statements, new.iter().map(|(r, _, _)| *r))?;
    }

    // Stored reservations the batch changed: status and lines, in one statement; the
    // ones whose allocations changed (reallocation) may hold at new locations.
    let updated: Vec<&Reservation> = state
        .updated
        .iter()
        .filter_map(|id| state.reservations.get(id))
        .collect();
    if !updated.is_empty() {
        let lines = updated
            .iter()
            .map(|r| crate::parts::rows_json(r))
            .collect::<Result<Vec<_>, _>>()?;
        execute(
            pg,
            statements,
            "UPDATE reservations SET status = u.st, updated_at = $3, lines = u.l
             FROM unnest($1::uuid[], $2::text[], $4::text[]) AS u(id, st, l)
             WHERE reservations.id = u.id",
            &[
                &updated
                    .iter()
                    .map(|r| r.reservation_id())
                    .collect::<Vec<_>>(),
                &updated
                    .iter()
                    .map(|r| r.status().as_str())
                    .collect::<Vec<_>>(),
                &state.now.unwrap_or(now),
                &lines,
            ],
        )?;
        let relined = updated
            .into_iter()
            .filter(|r| state.relined.contains(&r.reservation_id()));
        list_holds(pg, statements, relined)?;
    }

    if !state.adjustments.is_empty() {
        let mut a: Vec<_> = state.adjustments.iter().collect();
        a.sort_by(|x, y| x.0.cmp(&y.0)); // key order, as for reservations
        execute(
            pg,
            statements,
            "INSERT INTO adjustments (external_ref, fingerprint, outcome, created_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])",
            &[
                &a.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
                &a.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
                &a.iter().map(|x| x.2.as_str()).collect::<Vec<_>>(),
                &a.iter().map(|x| x.3).collect::<Vec<_>>(),
            ],
        )?;
    }

    // The log, last: the head counter's row lock is held only from here to COMMIT.
    if !state.events.is_empty() {
        append_to_log(pg, statements, &state.events)?;
    }
    Ok(())
}

/// Appends the batch's events to the log at the offsets after the head, in the order
/// they were made, and moves the head: one statement, the last before COMMIT.
///
/// The head is one row (`meta.last_offset`), locked by the UPDATE until this
/// transaction ends. So offsets are handed out in commit order: a transaction that
/// takes offsets after ours waits for our COMMIT (or our rollback, which returns
/// them), and a reader never sees offset n + 1 committed before n. The log is
/// gapless and in per-key version order by construction, with no copy, delete or
/// vacuum after the fact. Every batch takes the row after all its other locks, so
/// it adds no edge to the global lock order.
fn append_to_log(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    events: &[LogRecord],
) -> Result<(), LedgerError> {
    let n = events.len() as i64;
    execute(
        pg,
        statements,
        "WITH head AS (
             UPDATE meta SET value = value + $7 WHERE key = 'last_offset' RETURNING value - $7 AS base)
         INSERT INTO events (log_offset, event_id, store_id, sku, version, occurred_at, envelope, part)
         SELECT head.base + u.n, u.i, u.s, u.k, u.v, u.t, u.env, u.p
         FROM head, unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[],
                           $6::text[], $8::smallint[]) WITH ORDINALITY AS u(i, s, k, v, t, env, p, n)",
        &[
            &events.iter().map(|x| x.event_id).collect::<Vec<_>>(),
            &events.iter().map(|x| x.store_id.as_str()).collect::<Vec<_>>(),
            &events.iter().map(|x| x.key.as_str()).collect::<Vec<_>>(),
            &events.iter().map(|x| x.version).collect::<Vec<_>>(),
            &events.iter().map(|x| x.occurred_at).collect::<Vec<_>>(),
            &events.iter().map(|x| x.envelope.as_str()).collect::<Vec<_>>(),
            &n,
            &events
                .iter()
                .map(|x| invsync_core::event::partition(&x.key, PARTITIONS) as i16)
                .collect::<Vec<_>>(),
        ],
    )?;
    Ok(())
}

/// Lists the allocations of the channel reservations among `reservations` in
/// `channel_holds`, where reallocation finds them (one statement). An entry is never
/// removed: one a reservation no longer holds is skipped when read.
fn list_holds<'r>(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    reservations: impl Iterator<Item = &'r Reservation>,
) -> Result<(), LedgerError> {
    let (mut stores, mut skus, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for r in reservations.filter(|r| r.channel().is_some()) {
        for (store, sku) in r.rows() {
            stores.push(store.to_string());
            skus.push(sku.to_string());
            ids.push(r.reservation_id());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    execute(
        pg,
        statements,
        "INSERT INTO channel_holds (store_id, sku, reservation_id)
         SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[]) ON CONFLICT DO NOTHING",
        &[&stores, &skus, &ids],
    )?;
    Ok(())
}
