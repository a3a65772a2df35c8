//! Before a batch runs: every row lock it will hold, taken in one global order, and
//! what its commands will read, in one query per kind.

use std::collections::HashSet;

use invsync_core::{ChannelId, Sku, StockLevel, StoreId};
use postgres::{Row as PgRow, Transaction};
use uuid::Uuid;

use crate::engine::Overrides;
use crate::error::LedgerError;
use crate::postgres::rows::{load_reservations, Statements};

use super::{query, query_opt, Key, Row, State};

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
pub(super) enum Lock {
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
pub(super) fn channel_rows(
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
pub(super) fn load_overrides(
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
pub(super) fn lock_reservations(
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
pub(super) fn lock_now(
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
pub(super) fn lock_rows(
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
