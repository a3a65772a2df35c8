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
use invsync_core::channel::Channel;
use invsync_core::{ChannelId, LogRecord, Reservation, Sku, StockLevel, StoreId};
use postgres::{Row as PgRow, Transaction};
use uuid::Uuid;

use super::rows::{prepared, Statements};
use crate::engine::Overrides;
use crate::error::LedgerError;

mod flush;
mod prefetch;
mod tx;

pub(crate) use flush::flush;
pub(crate) use prefetch::{prefetch, Prefetch};

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
