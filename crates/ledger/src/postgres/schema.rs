//! Forward-only migrations of the PostgreSQL ledger. Safe when several instances
//! start at once: they run under one session advisory lock, and each migration
//! re-checks what is applied.

use postgres::Client;

use crate::error::LedgerError;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO meta (key, value) VALUES ('last_offset', 0);

CREATE TABLE stock (
    store_id   text NOT NULL,
    sku        text NOT NULL,
    on_hand    bigint NOT NULL CHECK (on_hand >= 0),
    reserved   bigint NOT NULL CHECK (reserved >= 0),
    version    bigint NOT NULL CHECK (version >= 0),
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (store_id, sku)
);
CREATE INDEX stock_by_sku ON stock (sku, store_id);

CREATE TABLE reservations (
    id          uuid PRIMARY KEY,
    order_id    text NOT NULL,
    store_id    text NOT NULL,
    idem_key    text NOT NULL UNIQUE,
    fingerprint text NOT NULL,
    status      text NOT NULL CHECK (status IN ('active', 'released', 'fulfilled', 'expired')),
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX reservations_by_order ON reservations (order_id);
CREATE INDEX reservations_due ON reservations (expires_at)
    WHERE status = 'active' AND expires_at IS NOT NULL;

CREATE TABLE reservation_lines (
    reservation_id uuid NOT NULL REFERENCES reservations (id),
    line_no        integer NOT NULL,
    sku            text NOT NULL,
    quantity       bigint NOT NULL CHECK (quantity > 0),
    released       bigint NOT NULL CHECK (released >= 0),
    fulfilled      bigint NOT NULL CHECK (fulfilled >= 0),
    CHECK (released + fulfilled <= quantity),
    PRIMARY KEY (reservation_id, line_no)
);

CREATE TABLE adjustments (
    external_ref text PRIMARY KEY,
    fingerprint  text NOT NULL,
    outcome      text NOT NULL,
    created_at   timestamptz NOT NULL
);

-- The transactional outbox: written in the same transaction as the change. `xid`
-- lets the relay move only rows no running transaction can still precede.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id    uuid NOT NULL,
    store_id    text NOT NULL,
    sku         text NOT NULL,
    version     bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    envelope    text NOT NULL
);

-- The event log with gapless offsets, filled only by the relay.
CREATE TABLE events (
    log_offset  bigint PRIMARY KEY,
    event_id    uuid NOT NULL,
    store_id    text NOT NULL,
    sku         text NOT NULL,
    version     bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    envelope    text NOT NULL
);
CREATE INDEX events_by_time ON events (occurred_at);
"#,
    r#"
-- Channels (channels.md). A channel reservation keeps '' in store_id and its channel
-- here; each of its lines has one row per allocation, with the location in
-- reservation_lines.store_id (NULL: the reservation's own store).
ALTER TABLE reservations ADD COLUMN channel text;
ALTER TABLE reservation_lines ADD COLUMN store_id text;
ALTER TABLE reservation_lines ADD COLUMN short bigint NOT NULL DEFAULT 0 CHECK (short >= 0);
-- Channel reservations holding at a (store, sku), for reallocation.
CREATE INDEX reservation_lines_by_row ON reservation_lines (store_id, sku)
    WHERE store_id IS NOT NULL;

CREATE TABLE channels (
    channel_id text PRIMARY KEY,
    version    bigint NOT NULL CHECK (version > 0),
    config     text NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Per-SKU overrides; a removed one keeps its row (safety_stock NULL) and version.
CREATE TABLE safety_stock (
    channel_id   text NOT NULL,
    sku          text NOT NULL,
    store_id     text NOT NULL,
    safety_stock bigint CHECK (safety_stock >= 0),
    version      bigint NOT NULL CHECK (version > 0),
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (channel_id, sku, store_id)
);
"#,
];

pub(crate) fn migrate(client: &mut Client) -> Result<(), LedgerError> {
    // Instances starting together queue on this lock: even `CREATE TABLE IF NOT
    // EXISTS` can fail when two sessions run it at once.
    client.execute("SELECT pg_advisory_lock(7461301)", &[])?;
    let result = apply(client);
    let _ = client.execute("SELECT pg_advisory_unlock(7461301)", &[]);
    result
}

fn apply(client: &mut Client) -> Result<(), LedgerError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS invsync_migrations (version integer PRIMARY KEY)",
    )?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i32 + 1;
        let mut tx = client.transaction()?;
        let applied = tx
            .query_opt(
                "SELECT 1 FROM invsync_migrations WHERE version = $1",
                &[&version],
            )?
            .is_some();
        if !applied {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO invsync_migrations (version) VALUES ($1)",
                &[&version],
            )?;
            tracing::info!(
                schema.version = version,
                "applied ledger migration (PostgreSQL)"
            );
        }
        tx.commit()?;
    }
    let newest: Option<i32> = client
        .query_one("SELECT max(version) FROM invsync_migrations", &[])?
        .get(0);
    if newest.unwrap_or(0) > MIGRATIONS.len() as i32 {
        return Err(LedgerError::Internal(format!(
            "the database has schema version {}, newer than this invsync knows ({}); upgrade invsync",
            newest.unwrap_or(0),
            MIGRATIONS.len()
        )));
    }
    Ok(())
}
