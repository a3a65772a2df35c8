//! Forward-only migrations of the SQLite ledger, tracked in `PRAGMA user_version`.

use rusqlite::Connection;

use crate::error::LedgerError;

/// Migration `i` brings the schema from version `i` to `i + 1`. Append only: a
/// migration that has shipped is never edited.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('last_offset', 0);

CREATE TABLE stock (
    store_id   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    on_hand    INTEGER NOT NULL CHECK (on_hand >= 0),
    reserved   INTEGER NOT NULL CHECK (reserved >= 0),
    version    INTEGER NOT NULL CHECK (version >= 0),
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, sku)
) WITHOUT ROWID;
CREATE INDEX stock_by_sku ON stock (sku, store_id);

CREATE TABLE reservations (
    id          BLOB PRIMARY KEY,
    order_id    TEXT NOT NULL,
    store_id    TEXT NOT NULL,
    idem_key    TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'released', 'fulfilled', 'expired')),
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX reservations_by_order ON reservations (order_id);
CREATE INDEX reservations_due ON reservations (expires_at)
    WHERE status = 'active' AND expires_at IS NOT NULL;

CREATE TABLE reservation_lines (
    reservation_id BLOB NOT NULL REFERENCES reservations (id),
    line_no        INTEGER NOT NULL,
    sku            TEXT NOT NULL,
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    released       INTEGER NOT NULL CHECK (released >= 0),
    fulfilled      INTEGER NOT NULL CHECK (fulfilled >= 0),
    CHECK (released + fulfilled <= quantity),
    PRIMARY KEY (reservation_id, line_no)
) WITHOUT ROWID;

CREATE TABLE adjustments (
    external_ref TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    created_at   INTEGER NOT NULL
) WITHOUT ROWID;

-- The event log, written in the same transaction as the change it records: this
-- table is both the transactional outbox and the embedded bus. Offsets are gapless
-- because only the writer thread assigns them, and only for commands that commit.
CREATE TABLE events (
    log_offset  INTEGER PRIMARY KEY,
    event_id    BLOB NOT NULL,
    store_id    TEXT NOT NULL,
    sku         TEXT NOT NULL,
    version     INTEGER NOT NULL,
    occurred_at INTEGER NOT NULL,
    envelope    TEXT NOT NULL
);
CREATE INDEX events_by_time ON events (occurred_at);
"#,
    r#"
-- Channels (channels.md). A channel reservation keeps '' in store_id and its channel
-- here; each of its lines has one row per allocation, with the location in
-- reservation_lines.store_id (NULL: the reservation's own store).
ALTER TABLE reservations ADD COLUMN channel TEXT;
ALTER TABLE reservation_lines ADD COLUMN store_id TEXT;
ALTER TABLE reservation_lines ADD COLUMN short INTEGER NOT NULL DEFAULT 0 CHECK (short >= 0);
-- Channel reservations holding at a (store, sku), for reallocation.
CREATE INDEX reservation_lines_by_row ON reservation_lines (store_id, sku)
    WHERE store_id IS NOT NULL;

CREATE TABLE channels (
    channel_id TEXT PRIMARY KEY,
    version    INTEGER NOT NULL CHECK (version > 0),
    config     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Per-SKU overrides; a removed one keeps its row (safety_stock NULL) and version.
CREATE TABLE safety_stock (
    channel_id   TEXT NOT NULL,
    sku          TEXT NOT NULL,
    store_id     TEXT NOT NULL,
    safety_stock INTEGER CHECK (safety_stock >= 0),
    version      INTEGER NOT NULL CHECK (version > 0),
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (channel_id, sku, store_id)
) WITHOUT ROWID;
"#,
    r#"
-- Fewer B-trees per reservation (issue 14; BENCHMARKS.md, "What the profiles say").
-- A reservation was a rowid table, its id index, its idempotency-key and order
-- indexes, a line table, and an event with a time index: 8 B-trees per store-direct
-- reservation. Now the reservation is keyed by its id (WITHOUT ROWID) and holds its
-- lines inline (a JSON array of allocation rows: sku, store or null, quantity,
-- released, fulfilled, short); the event log has no time index (offsets grow with
-- time, so time is found by binary search over the gapless offsets). A channel
-- reservation's allocations are also listed in channel_holds, for reallocation.
CREATE TABLE reservations_v3 (
    id          BLOB PRIMARY KEY,
    order_id    TEXT NOT NULL,
    store_id    TEXT NOT NULL,
    channel     TEXT,
    idem_key    TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'released', 'fulfilled', 'expired')),
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    lines       TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO reservations_v3
    SELECT r.id, r.order_id, r.store_id, r.channel, r.idem_key, r.fingerprint, r.status,
           r.expires_at, r.created_at, r.updated_at,
           (SELECT json_group_array(json_array(l.sku, l.store_id, l.quantity, l.released,
                                               l.fulfilled, l.short) ORDER BY l.line_no)
              FROM reservation_lines l WHERE l.reservation_id = r.id)
    FROM reservations r;

CREATE TABLE channel_holds (
    store_id       TEXT NOT NULL,
    sku            TEXT NOT NULL,
    reservation_id BLOB NOT NULL,
    PRIMARY KEY (store_id, sku, reservation_id)
) WITHOUT ROWID;
INSERT INTO channel_holds
    SELECT DISTINCT store_id, sku, reservation_id FROM reservation_lines
    WHERE store_id IS NOT NULL;

DROP TABLE reservation_lines;
DROP TABLE reservations;
ALTER TABLE reservations_v3 RENAME TO reservations;
CREATE INDEX reservations_by_order ON reservations (order_id);
CREATE INDEX reservations_due ON reservations (expires_at)
    WHERE status = 'active' AND expires_at IS NOT NULL;
DROP INDEX events_by_time;
"#,
];

/// Brings the database to the newest schema; refuses a database written by a newer
/// invsync instead of guessing.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    let current: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?
        .try_into()
        .map_err(|_| LedgerError::Internal("negative schema version".into()))?;
    if current > MIGRATIONS.len() {
        return Err(LedgerError::Internal(format!(
            "the database has schema version {current}, newer than this invsync knows ({}); upgrade invsync",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(schema.version = i + 1, "applied ledger migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use invsync_core::{ChannelId, OrderId, Reservation, ReservationStatus, Sku, StoreId};

    use super::*;
    use crate::prelude::*;
    use crate::{ManualClock, SqliteConfig, SqliteLedger};

    /// A database written by schema 2 (lines in their own table, a time index on the
    /// log) opens under this build: its reservations read the same, a channel
    /// reservation's allocations are listed for reallocation, and the log is still
    /// found by time.
    #[tokio::test]
    async fn a_database_written_by_schema_2_migrates_forward_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let id = |n: u8| uuid::Uuid::from_bytes([n; 16]);
        let at = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
        {
            let conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..2].iter().enumerate() {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", (i + 1) as i64)
                    .unwrap();
            }
            let reservation = "INSERT INTO reservations (id, order_id, store_id, channel, idem_key,
                 fingerprint, status, expires_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'f', 'active', NULL, ?6, ?6)";
            conn.execute(
                reservation,
                rusqlite::params![
                    id(1).as_bytes(),
                    "O-1",
                    "S1",
                    None::<String>,
                    "k1",
                    at(0).timestamp_micros()
                ],
            )
            .unwrap();
            conn.execute(
                reservation,
                rusqlite::params![
                    id(2).as_bytes(),
                    "O-2",
                    "",
                    Some("online"),
                    "k2",
                    at(1).timestamp_micros()
                ],
            )
            .unwrap();
            let line = "INSERT INTO reservation_lines (reservation_id, line_no, sku, store_id,
                 quantity, released, fulfilled, short) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
            for (r, no, sku, store, q, rel, ful, short) in [
                (1, 1, "B", None, 1, 0, 0, 0),
                (1, 0, "A", None, 3, 1, 1, 0),
                (2, 0, "A", Some("WH1"), 2, 0, 0, 0),
                (2, 1, "A", Some("S1"), 1, 0, 0, 1),
            ] {
                conn.execute(
                    line,
                    rusqlite::params![id(r).as_bytes(), no, sku, store, q, rel, ful, short],
                )
                .unwrap();
            }
            for offset in 1..=10_i64 {
                conn.execute(
                    "INSERT INTO events (log_offset, event_id, store_id, sku, version, occurred_at, envelope)
                     VALUES (?1, ?2, 'S1', 'A', ?1, ?3, '{}')",
                    rusqlite::params![offset, id(offset as u8).as_bytes(), at(offset * 10).timestamp_micros()],
                )
                .unwrap();
            }
            conn.execute("UPDATE meta SET value = 10 WHERE key = 'last_offset'", [])
                .unwrap();
        }

        let clock = Arc::new(ManualClock::new(at(1_000)));
        let ledger = SqliteLedger::open(SqliteConfig::new(&path), clock).unwrap();
        let store = |s: &str| StoreId::parse(s).unwrap();
        let sku = |s: &str| Sku::parse(s).unwrap();
        let part = |st: &str, q, rel, ful, short| {
            invsync_core::Allocated::restore(store(st), q, rel, ful, short).unwrap()
        };
        let line =
            |s: &str, parts| invsync_core::ReservationLine::allocated(sku(s), parts).unwrap();
        let direct = Reservation::restore(invsync_core::StoredReservation {
            reservation_id: id(1),
            order_id: OrderId::parse("O-1").unwrap(),
            target: invsync_core::Target::Store(store("S1")),
            status: ReservationStatus::Active,
            lines: vec![
                line("A", vec![part("S1", 3, 1, 1, 0)]),
                line("B", vec![part("S1", 1, 0, 0, 0)]),
            ],
            expires_at: None,
            created_at: at(0),
        })
        .unwrap();
        assert_eq!(ledger.reservation(id(1)).await.unwrap(), Some(direct));
        let online = ledger.reservation(id(2)).await.unwrap().unwrap();
        assert_eq!(online.channel(), Some(&ChannelId::parse("online").unwrap()));
        assert_eq!(
            online.lines(),
            [line(
                "A",
                vec![part("WH1", 2, 0, 0, 0), part("S1", 1, 0, 0, 1)]
            )]
        );
        // Offsets by time: the first event at or after 35 s is offset 4; after the
        // last one, the next offset to be written.
        assert_eq!(ledger.offset_at(at(35)).await.unwrap(), 4);
        assert_eq!(ledger.offset_at(at(10)).await.unwrap(), 1);
        assert_eq!(ledger.offset_at(at(101)).await.unwrap(), 11);
        drop(ledger);

        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let holds: Vec<(String, String)> = conn
            .prepare("SELECT store_id, sku FROM channel_holds ORDER BY store_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            holds,
            [
                ("S1".to_owned(), "A".to_owned()),
                ("WH1".to_owned(), "A".to_owned())
            ]
        );
        let gone: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('reservation_lines', 'events_by_time')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(gone, 0);
    }
}
