//! A consumer's own store: one SQLite file holding its checkpoint, the marks of
//! events it applied, the last version it saw per (store, sku), its dead letters, and
//! the storefront's availability view. Every SQL statement of a consumer is here. Separate from the ledger:
//! a consumer keeps working, and answering, while the ledger is away.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction};
use serde::Serialize;
use uuid::Uuid;

mod batch;
mod parked;
mod reader;
mod view;

pub(crate) use batch::{
    forget_applied, insert_dead_letter, mark_applied, prune_marks, set_position,
};
pub(crate) use parked::{
    clear_parked, dead_letter_failed_again, delete_dead_letter, park, parked_envelope,
    parked_heads, parked_skus, parked_summary, reschedule, settled, unpark, Attempts, Parked,
};
pub use reader::StoreReader;
pub(crate) use view::{config_apply, config_load, view_apply, view_load, view_reset, ConfigEvent};
pub use view::{ChannelAvailability, StoreAvailability, ViewRow};

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
