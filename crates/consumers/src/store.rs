//! A consumer's own store: one SQLite file holding its checkpoint, the marks of
//! events it applied, the last version it saw per (store, sku), its dead letters, and
//! the storefront's availability view. Every SQL statement of a consumer is here. Separate from the ledger:
//! a consumer keeps working, and answering, while the ledger is away.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use invsync_core::channel::{Channel, ChannelConfig};
use invsync_core::event::EnvelopeError;
use invsync_core::{
    ChannelUpdatedV1, InventoryEventV1, SafetyStockSetV1, CHANNEL_UPDATED_TYPE,
    SAFETY_STOCK_SET_TYPE,
};
use invsync_ledger::{ChannelSnapshot, StockRow};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use serde::Serialize;
use uuid::Uuid;

use crate::ConsumerError;

/// The availability view of a consumer that keeps one (the storefront).
const VIEW_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS availability (
    sku         TEXT NOT NULL,
    store_id    TEXT NOT NULL,
    on_hand     INTEGER NOT NULL,
    reserved    INTEGER NOT NULL,
    available   INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (sku, store_id)
) WITHOUT ROWID;
-- Channels and per-SKU safety stock, from CHANNEL_UPDATED / SAFETY_STOCK_SET (or a
-- snapshot): channel availability is computed from them and the rows above.
CREATE TABLE IF NOT EXISTS view_channels (
    channel_id TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    config     TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS view_safety (
    channel_id   TEXT NOT NULL,
    sku          TEXT NOT NULL,
    store_id     TEXT NOT NULL,
    safety_stock INTEGER,
    version      INTEGER NOT NULL,
    PRIMARY KEY (channel_id, sku, store_id)
) WITHOUT ROWID;
"#;

/// The store's own tables.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS checkpoint (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    position  INTEGER NOT NULL,
    as_of     INTEGER
);
INSERT OR IGNORE INTO checkpoint (id, position, as_of) VALUES (1, 0, NULL);
-- Marks of applied events (dedup by event_id), pruned behind the checkpoint.
CREATE TABLE IF NOT EXISTS applied (
    event_id   BLOB PRIMARY KEY,
    log_offset INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS applied_by_offset ON applied (log_offset);
-- The highest version applied per key: a stale or repeated event never moves a view back.
CREATE TABLE IF NOT EXISTS seen (
    store_id TEXT NOT NULL,
    sku      TEXT NOT NULL,
    version  INTEGER NOT NULL,
    PRIMARY KEY (store_id, sku)
) WITHOUT ROWID;
-- Events of a SKU whose delivery kept failing, set aside so that other SKUs keep
-- flowing: delivered in offset order per SKU by the runtime's side loop. Only the
-- head of each SKU's queue is tried; `retry_at` is when (Unix micros).
CREATE TABLE IF NOT EXISTS parked (
    log_offset  INTEGER PRIMARY KEY,
    sku         TEXT NOT NULL,
    envelope    TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    permanent   INTEGER NOT NULL,
    last_error  TEXT NOT NULL,
    retry_at    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS parked_by_sku ON parked (sku, log_offset);
CREATE TABLE IF NOT EXISTS dead_letters (
    id         BLOB PRIMARY KEY,
    log_offset INTEGER NOT NULL,
    envelope   TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    failed_at  INTEGER NOT NULL
);
"#;

/// A dead letter as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: Uuid,
    pub consumer: String,
    pub offset: i64,
    /// The stored envelope text, exactly as read from the log.
    pub envelope: String,
    pub attempts: i64,
    pub last_error: String,
    pub failed_at: DateTime<Utc>,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or_default()
}

pub(crate) struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating) the store; with the availability view when `keeps_view`.
    pub(crate) fn open(path: &Path, keeps_view: bool) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        // NORMAL, not FULL: in WAL mode a power loss can only drop the latest commits,
        // and view, marks and checkpoint always roll back together, so the consumer
        // simply applies those events again from the log. The ledger (the source of
        // truth) stays at FULL.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        if keeps_view {
            conn.execute_batch(VIEW_SCHEMA)?;
        }
        Ok(Self { conn })
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn transaction(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.conn.transaction()
    }

    pub(crate) fn position(&self) -> rusqlite::Result<(i64, Option<DateTime<Utc>>)> {
        self.conn.query_row(
            "SELECT position, as_of FROM checkpoint WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.map(time))),
        )
    }

    /// Is this event already applied, by id or by version?
    pub(crate) fn already_applied(
        &self,
        event_id: Uuid,
        store: &str,
        sku: &str,
        version: i64,
    ) -> rusqlite::Result<bool> {
        let marked = self
            .conn
            .prepare_cached("SELECT 1 FROM applied WHERE event_id = ?1")?
            .exists([event_id.as_bytes()])?;
        if marked {
            return Ok(true);
        }
        let seen: Option<i64> = self
            .conn
            .prepare_cached("SELECT version FROM seen WHERE store_id = ?1 AND sku = ?2")?
            .query_row([store, sku], |r| r.get(0))
            .optional()?;
        Ok(seen.is_some_and(|v| version <= v))
    }

    pub(crate) fn count_dead_letters(&self) -> rusqlite::Result<i64> {
        self.conn
            .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))
    }

    pub(crate) fn dead_letter(&self, id: Uuid) -> rusqlite::Result<Option<(i64, String, i64)>> {
        self.conn
            .query_row(
                "SELECT log_offset, envelope, attempts FROM dead_letters WHERE id = ?1",
                [id.as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
    }
}

/// Writes inside the transaction that applies a batch.
pub(crate) fn mark_applied(
    tx: &Transaction<'_>,
    event_id: Uuid,
    offset: i64,
    store: &str,
    sku: &str,
    version: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO applied (event_id, log_offset) VALUES (?1, ?2)")?
        .execute(params![event_id.as_bytes(), offset])?;
    tx.prepare_cached(
        "INSERT INTO seen (store_id, sku, version) VALUES (?1, ?2, ?3)
         ON CONFLICT (store_id, sku) DO UPDATE SET version = max(version, excluded.version)",
    )?
    .execute(params![store, sku, version])?;
    Ok(())
}

pub(crate) fn set_position(
    tx: &Transaction<'_>,
    position: i64,
    as_of: Option<DateTime<Utc>>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE checkpoint SET position = ?1, as_of = coalesce(?2, as_of) WHERE id = 1",
    )?
    .execute(params![position, as_of.map(micros)])?;
    Ok(())
}

/// Drops marks far enough behind the checkpoint that no redelivery can reach them
/// (the version check still guards every key).
pub(crate) fn prune_marks(tx: &Transaction<'_>, below: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM applied WHERE log_offset < ?1")?
        .execute([below])?;
    Ok(())
}

pub(crate) fn insert_dead_letter(
    tx: &Transaction<'_>,
    offset: i64,
    envelope: &str,
    attempts: u32,
    error: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<Uuid> {
    let id = Uuid::now_v7();
    tx.prepare_cached(
        "INSERT INTO dead_letters (id, log_offset, envelope, attempts, last_error, failed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        id.as_bytes(),
        offset,
        envelope,
        attempts,
        error,
        micros(now)
    ])?;
    Ok(id)
}

/// An event set aside for the side loop (see `runtime::parked`).
#[derive(Debug, Clone)]
pub(crate) struct Parked {
    pub offset: i64,
    pub envelope: String,
    pub attempts: u32,
    pub permanent: u32,
    pub retry_at: DateTime<Utc>,
}

/// How a parked event's delivery attempts stand.
#[derive(Debug, Clone)]
pub(crate) struct Attempts<'a> {
    pub attempts: u32,
    pub permanent: u32,
    pub error: &'a str,
    pub retry_at: DateTime<Utc>,
}

/// Sets an event aside at the tail of its SKU's queue. Returns whether it was new (a
/// replay or a redelivered batch may park the same offset again).
pub(crate) fn park(
    tx: &Transaction<'_>,
    offset: i64,
    sku: &str,
    envelope: &str,
    occurred_at: DateTime<Utc>,
    attempts: &Attempts<'_>,
) -> rusqlite::Result<bool> {
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO parked
                 (log_offset, sku, envelope, occurred_at, attempts, permanent, last_error, retry_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            offset,
            sku,
            envelope,
            micros(occurred_at),
            attempts.attempts,
            attempts.permanent,
            attempts.error,
            micros(attempts.retry_at),
        ])?;
    Ok(inserted == 1)
}

/// The first parked event of each SKU, soonest due first, at most `limit`.
pub(crate) fn parked_heads(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<Parked>> {
    let mut stmt = conn.prepare_cached(
        "SELECT log_offset, envelope, attempts, permanent, retry_at FROM parked
         WHERE log_offset IN (SELECT min(log_offset) FROM parked GROUP BY sku)
         ORDER BY retry_at, log_offset LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(Parked {
            offset: r.get(0)?,
            envelope: r.get(1)?,
            attempts: r.get(2)?,
            permanent: r.get(3)?,
            retry_at: time(r.get(4)?),
        })
    })?;
    rows.collect()
}

/// Parked events per SKU, for the runtime to know which SKUs wait.
pub(crate) fn parked_skus(conn: &Connection) -> rusqlite::Result<Vec<(String, usize)>> {
    let mut stmt = conn.prepare("SELECT sku, count(*) FROM parked GROUP BY sku")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize)))?;
    rows.collect()
}

/// How many events are parked, when the oldest of them occurred, and its last error.
pub(crate) fn parked_summary(
    conn: &Connection,
) -> rusqlite::Result<(i64, Option<DateTime<Utc>>, Option<String>)> {
    let (count, oldest): (i64, Option<i64>) =
        conn.query_row("SELECT count(*), min(occurred_at) FROM parked", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let error = conn
        .query_row(
            "SELECT last_error FROM parked WHERE attempts > 0 ORDER BY log_offset LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok((count, oldest.map(time), error))
}

/// The stored envelope of a parked event.
pub(crate) fn parked_envelope(tx: &Transaction<'_>, offset: i64) -> rusqlite::Result<String> {
    tx.prepare_cached("SELECT envelope FROM parked WHERE log_offset = ?1")?
        .query_row([offset], |r| r.get(0))
}

/// A redriven dead letter was delivered.
pub(crate) fn delete_dead_letter(tx: &Transaction<'_>, id: Uuid) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id.as_bytes()])
        .map(|_| ())
}

/// A redriven dead letter failed again: its attempts so far and the new error.
pub(crate) fn dead_letter_failed_again(
    tx: &Transaction<'_>,
    id: Uuid,
    attempts: i64,
    error: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE dead_letters SET attempts = ?2, last_error = ?3 WHERE id = ?1",
        params![id.as_bytes(), attempts, error],
    )
    .map(|_| ())
}

/// A parked event was delivered or dead-lettered: off its queue. Returns its SKU.
pub(crate) fn unpark(tx: &Transaction<'_>, offset: i64) -> rusqlite::Result<Option<String>> {
    tx.prepare_cached("DELETE FROM parked WHERE log_offset = ?1 RETURNING sku")?
        .query_row([offset], |r| r.get(0))
        .optional()
}

/// A parked event failed again: when to try next.
pub(crate) fn reschedule(
    tx: &Transaction<'_>,
    offset: i64,
    attempts: &Attempts<'_>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE parked SET attempts = ?2, permanent = ?3, last_error = ?4, retry_at = ?5
         WHERE log_offset = ?1",
    )?
    .execute(params![
        offset,
        attempts.attempts,
        attempts.permanent,
        attempts.error,
        micros(attempts.retry_at),
    ])?;
    Ok(())
}

/// What is settled: the checkpoint, or just before the oldest parked event.
pub(crate) fn settled(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT min(c.position, coalesce((SELECT min(log_offset) FROM parked) - 1, c.position))
         FROM checkpoint c WHERE c.id = 1",
        [],
        |r| r.get(0),
    )
}

/// Drops every parked event (a takeover re-reads them from the log).
pub(crate) fn clear_parked(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM parked", []).map(|_| ())
}

/// Applies an event to the availability view, unless the view already holds that
/// version of the row or a newer one.
pub(crate) fn view_apply(tx: &Transaction<'_>, e: &InventoryEventV1) -> rusqlite::Result<()> {
    view_upsert(
        tx,
        e.product_sku.as_str(),
        e.store_id.as_str(),
        (e.on_hand, e.reserved, e.available, e.version),
        e.occurred_at,
    )
}

/// Empties the view before a rebuild.
pub(crate) fn view_reset(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM availability", []).map(|_| ())
}

/// Loads one ledger snapshot row into the emptied view.
pub(crate) fn view_load(tx: &Transaction<'_>, row: &StockRow) -> rusqlite::Result<()> {
    let l = row.level;
    view_upsert(
        tx,
        row.sku.as_str(),
        row.store_id.as_str(),
        (l.on_hand(), l.reserved(), l.available(), l.version()),
        row.updated_at,
    )
}

/// Writes a level unless the view already holds that version or a newer one.
fn view_upsert(
    tx: &Transaction<'_>,
    sku: &str,
    store: &str,
    (on_hand, reserved, available, version): (i64, i64, i64, i64),
    at: DateTime<Utc>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO availability (sku, store_id, on_hand, reserved, available, version, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (sku, store_id) DO UPDATE SET on_hand = excluded.on_hand,
             reserved = excluded.reserved, available = excluded.available,
             version = excluded.version, updated_at = excluded.updated_at
         WHERE excluded.version > availability.version",
    )?
    .execute(params![sku, store, on_hand, reserved, available, version, micros(at)])?;
    Ok(())
}

/// A configuration event a view applies (channels.md).
#[derive(Debug, Clone)]
pub(crate) enum ConfigEvent {
    Channel(ChannelUpdatedV1),
    Safety(SafetyStockSetV1),
}

impl ConfigEvent {
    /// Parses a configuration event of CloudEvents type `kind`; `None` for a type
    /// that is not one.
    pub(crate) fn parse(kind: &str, bytes: &[u8]) -> Option<Result<Self, EnvelopeError>> {
        match kind {
            CHANNEL_UPDATED_TYPE => Some(ChannelUpdatedV1::parse(bytes).map(Self::Channel)),
            SAFETY_STOCK_SET_TYPE => Some(SafetyStockSetV1::parse(bytes).map(Self::Safety)),
            _ => None,
        }
    }
}

/// Applies a configuration event unless the view holds that version or a newer one.
pub(crate) fn config_apply(tx: &Transaction<'_>, event: &ConfigEvent) -> rusqlite::Result<()> {
    match event {
        ConfigEvent::Channel(e) => channel_upsert(tx, &e.channel),
        ConfigEvent::Safety(e) => safety_upsert(
            tx,
            e.channel_id.as_str(),
            e.store_id.as_str(),
            e.product_sku.as_str(),
            e.safety_stock,
            e.version,
        ),
    }
}

fn channel_upsert(tx: &Transaction<'_>, c: &Channel) -> rusqlite::Result<()> {
    let config = serde_json::to_string(&c.config).unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO view_channels (channel_id, version, config) VALUES (?1, ?2, ?3)
         ON CONFLICT (channel_id) DO UPDATE SET version = excluded.version, config = excluded.config
         WHERE excluded.version > view_channels.version",
    )?
    .execute(params![c.channel_id.as_str(), c.version, config])?;
    Ok(())
}

fn safety_upsert(
    tx: &Transaction<'_>,
    channel: &str,
    store: &str,
    sku: &str,
    safety_stock: Option<i64>,
    version: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO view_safety (channel_id, sku, store_id, safety_stock, version)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (channel_id, sku, store_id) DO UPDATE SET
             safety_stock = excluded.safety_stock, version = excluded.version
         WHERE excluded.version > view_safety.version",
    )?
    .execute(params![channel, sku, store, safety_stock, version])?;
    Ok(())
}

/// Replaces the view's channels with a ledger's (a rebuild).
pub(crate) fn config_load(
    tx: &Transaction<'_>,
    snapshot: &ChannelSnapshot,
) -> rusqlite::Result<()> {
    tx.execute_batch("DELETE FROM view_channels; DELETE FROM view_safety;")?;
    for c in &snapshot.channels {
        channel_upsert(tx, c)?;
    }
    for o in &snapshot.overrides {
        safety_upsert(
            tx,
            o.channel_id.as_str(),
            o.store_id.as_str(),
            o.sku.as_str(),
            o.safety_stock,
            o.version,
        )?;
    }
    Ok(())
}

/// A SKU's availability through a channel: per location net of the channel's safety
/// stock there, and the sum (channels.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelAvailability {
    pub sku: String,
    pub available: i64,
    pub stores: Vec<StoreAvailability>,
}

/// One store's availability of a SKU in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreAvailability {
    pub store_id: String,
    pub available: i64,
    pub version: i64,
}

/// One row of the view, for audits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewRow {
    pub store_id: String,
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub version: i64,
}

/// Forgets what was applied, for a replay.
pub(crate) fn forget_applied(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("DELETE FROM applied; DELETE FROM seen;")
}

/// Read-only access to a consumer's store, for the API.
#[derive(Clone)]
pub struct StoreReader {
    path: PathBuf,
    consumer: String,
}

impl StoreReader {
    pub(crate) fn new(path: PathBuf, consumer: String) -> Self {
        Self { path, consumer }
    }

    /// Runs `f` on a fresh read-only connection in a blocking task.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ConsumerError> {
        let path = self.path.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            f(&conn)
        })
        .await??)
    }

    /// The stored envelope of a dead letter, if this consumer holds it.
    pub async fn dead_letter_envelope(&self, id: Uuid) -> Result<Option<String>, ConsumerError> {
        self.read(move |c| {
            c.query_row(
                "SELECT envelope FROM dead_letters WHERE id = ?1",
                [id.as_bytes()],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// The newest version of a stock row this consumer applied, delivered or parked.
    pub async fn seen_version(&self, store: &str, sku: &str) -> Result<Option<i64>, ConsumerError> {
        let key = (store.to_owned(), sku.to_owned());
        self.read(move |c| {
            c.query_row(
                "SELECT version FROM seen WHERE store_id = ?1 AND sku = ?2",
                [&key.0, &key.1],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// A SKU's availability per store in the view.
    pub async fn availability(&self, sku: String) -> Result<Vec<StoreAvailability>, ConsumerError> {
        let mut found = self.availability_of(vec![sku]).await?;
        Ok(found.pop().unwrap_or_default())
    }

    /// Every store's availability of each SKU, in the order asked, in one read.
    pub async fn availability_of(
        &self,
        skus: Vec<String>,
    ) -> Result<Vec<Vec<StoreAvailability>>, ConsumerError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT store_id, available, version FROM availability WHERE sku = ?1 ORDER BY store_id",
            )?;
            let mut out = Vec::with_capacity(skus.len());
            for sku in skus {
                let rows = stmt.query_map([sku], |r| {
                    Ok(StoreAvailability {
                        store_id: r.get(0)?,
                        available: r.get(1)?,
                        version: r.get(2)?,
                    })
                })?;
                out.push(rows.collect::<rusqlite::Result<Vec<_>>>()?);
            }
            Ok(out)
        })
        .await
    }

    /// A page of the whole view in (store, sku) order, after the cursor.
    /// Channel availability of each SKU, computed from the view (`None` when the view
    /// knows no such channel).
    pub async fn channel_availability(
        &self,
        channel: String,
        skus: Vec<String>,
    ) -> Result<Option<Vec<ChannelAvailability>>, ConsumerError> {
        self.read(move |c| {
            let Some(config) = c
                .prepare_cached("SELECT config FROM view_channels WHERE channel_id = ?1")?
                .query_row([&channel], |r| r.get::<_, String>(0))
                .optional()?
            else {
                return Ok(None);
            };
            // Written by this consumer from a checked event; unreadable only if the
            // file was altered.
            let Ok(config) = serde_json::from_str::<ChannelConfig>(&config) else {
                return Err(rusqlite::Error::InvalidColumnType(
                    0,
                    "config".into(),
                    rusqlite::types::Type::Text,
                ));
            };
            let mut level = c.prepare_cached(
                "SELECT available, version FROM availability WHERE sku = ?1 AND store_id = ?2",
            )?;
            let mut buffer = c.prepare_cached(
                "SELECT safety_stock FROM view_safety
                 WHERE channel_id = ?1 AND sku = ?2 AND store_id = ?3",
            )?;
            let mut out = Vec::with_capacity(skus.len());
            for sku in skus {
                let mut stores = Vec::with_capacity(config.locations().len());
                for l in config.locations() {
                    let store = l.store_id.as_str();
                    let (available, version) = level
                        .query_row(params![sku, store], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?
                        .unwrap_or((0_i64, 0_i64));
                    let safety: Option<i64> = buffer
                        .query_row(params![channel, sku, store], |r| r.get(0))
                        .optional()?
                        .flatten();
                    stores.push(StoreAvailability {
                        store_id: store.to_owned(),
                        available: (available - safety.unwrap_or(l.safety_stock)).max(0),
                        version,
                    });
                }
                out.push(ChannelAvailability {
                    available: stores.iter().map(|s| s.available).sum(),
                    sku,
                    stores,
                });
            }
            Ok(Some(out))
        })
        .await
    }

    pub async fn view_rows(
        &self,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<ViewRow>, ConsumerError> {
        self.read(move |c| {
            let (store, sku) = after.unwrap_or_default();
            let mut stmt = c.prepare_cached(
                "SELECT store_id, sku, on_hand, reserved, available, version FROM availability
                 WHERE (store_id, sku) > (?1, ?2) ORDER BY store_id, sku LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![store, sku, limit as i64], |r| {
                Ok(ViewRow {
                    store_id: r.get(0)?,
                    sku: r.get(1)?,
                    on_hand: r.get(2)?,
                    reserved: r.get(3)?,
                    available: r.get(4)?,
                    version: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, ConsumerError> {
        let consumer = self.consumer.clone();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, log_offset, envelope, attempts, last_error, failed_at
                 FROM dead_letters ORDER BY failed_at, id",
            )?;
            let rows = stmt.query_map([], |r| {
                let id: Vec<u8> = r.get(0)?;
                Ok(DeadLetter {
                    id: Uuid::from_slice(&id).unwrap_or_default(),
                    consumer: consumer.clone(),
                    offset: r.get(1)?,
                    envelope: r.get(2)?,
                    attempts: r.get(3)?,
                    last_error: r.get(4)?,
                    failed_at: time(r.get(5)?),
                })
            })?;
            rows.collect()
        })
        .await
    }
}
