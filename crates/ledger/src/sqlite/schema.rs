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
