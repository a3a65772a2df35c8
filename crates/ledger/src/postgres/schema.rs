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
    r#"
-- Lanes write the log directly (issue 14): the head counter (meta.last_offset) is
-- updated by each writing transaction just before its COMMIT, so offsets follow
-- commit order and there is nothing to relay. Rows an older invsync left in the
-- outbox are all committed once no one else can write it (the lock waits for the
-- transactions still inserting), so they are moved into the log in id order, after
-- the head, and the outbox goes. An older instance still running then fails its
-- writes (503) instead of writing events that no one would relay.
LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE;
WITH head AS (SELECT value AS base FROM meta WHERE key = 'last_offset'),
moved AS (
    INSERT INTO events (log_offset, event_id, store_id, sku, version, occurred_at, envelope)
    SELECT head.base + row_number() OVER (ORDER BY o.id), o.event_id, o.store_id, o.sku,
           o.version, o.occurred_at, o.envelope
    FROM outbox o, head
    RETURNING log_offset)
UPDATE meta SET value = coalesce((SELECT max(log_offset) FROM moved), value)
WHERE key = 'last_offset';
DROP TABLE outbox;
"#,
    r#"
-- A reservation holds its lines inline (issue 14), as the embedded ledger does: a
-- JSON array of allocation rows (sku, store or null, quantity, released, fulfilled,
-- short), written with the reservation. One table and index fewer per reservation.
-- A channel reservation's allocations are also listed in channel_holds, where
-- reallocation finds them.
ALTER TABLE reservations ADD COLUMN lines text;
UPDATE reservations r SET lines = coalesce(
    (SELECT json_agg(json_build_array(l.sku, l.store_id, l.quantity, l.released, l.fulfilled,
                                      l.short) ORDER BY l.line_no)
     FROM reservation_lines l WHERE l.reservation_id = r.id)::text, '[]');
ALTER TABLE reservations ALTER COLUMN lines SET NOT NULL;
CREATE TABLE channel_holds (
    store_id       text NOT NULL,
    sku            text NOT NULL,
    reservation_id uuid NOT NULL,
    PRIMARY KEY (store_id, sku, reservation_id)
);
INSERT INTO channel_holds
    SELECT DISTINCT store_id, sku, reservation_id FROM reservation_lines
    WHERE store_id IS NOT NULL;
DROP TABLE reservation_lines;
"#,
    r#"
-- Each event's partition (of invsync_core::event::PARTITIONS, by its partition key),
-- so that a reader of one partition (a `consume --partitioned` process) is sent only
-- its own envelopes. NULL on events written before: those are sent, and the reader
-- tells.
ALTER TABLE events ADD COLUMN part smallint;
"#,
    r#"
-- Leases (see lease.rs): what one process at a time may do. The epoch rises with every
-- change of holder; positions recorded under a lease are fenced by it. The session
-- that last renewed a lease (its backend pid and start) tells a dead holder (its
-- session ended with it) from a frozen one (its session lives on).
CREATE TABLE leases (
    name         text PRIMARY KEY,
    holder       text NOT NULL,
    epoch        bigint NOT NULL CHECK (epoch > 0),
    expires_at   timestamptz NOT NULL,
    holder_pid   integer NOT NULL,
    holder_since timestamptz NOT NULL
);
"#,
    r#"
-- The line invariant, checked by the database again (issue 23): migration 5 moved
-- the lines inline and with them went the per-line CHECK of reservation_lines. Every
-- allocation row [sku, store, quantity, released, fulfilled, short] has quantity >= 1,
-- no negative counter, released + fulfilled <= quantity and short <= held; a
-- reservation has at least one row and is active exactly while it holds something.
-- The type (invsync_core::Reservation) checks the same on every change and on every
-- read; this is the second wall, for a bug or a hand-written UPDATE.
CREATE FUNCTION invsync_lines_valid(lines text, status text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN json_typeof(lines::json) <> 'array' THEN false ELSE (
        SELECT count(*) > 0
           AND coalesce(bool_and(
                   json_typeof(e) = 'array' AND json_array_length(e) = 6
               AND (e->>2)::bigint >= 1 AND (e->>3)::bigint >= 0
               AND (e->>4)::bigint >= 0 AND (e->>5)::bigint >= 0
               AND (e->>3)::bigint + (e->>4)::bigint <= (e->>2)::bigint
               AND (e->>5)::bigint <= (e->>2)::bigint - (e->>3)::bigint - (e->>4)::bigint),
               false)
           AND (status = 'active') = (coalesce(sum((e->>2)::bigint - (e->>3)::bigint
                                                   - (e->>4)::bigint), 0) > 0)
        FROM json_array_elements(lines::json) e) END
$$;
ALTER TABLE reservations ADD CONSTRAINT reservation_lines_valid
    CHECK (invsync_lines_valid(lines, status));
"#,
];

/// The session advisory lock key instances starting together queue on while one
/// migrates: the only advisory lock invsync takes (leadership and partition claims
/// are leases, see `lease.rs`).
const MIGRATION_LOCK: i64 = 7461301;

pub(crate) fn migrate(client: &mut Client) -> Result<(), LedgerError> {
    // Instances starting together queue on this lock: even `CREATE TABLE IF NOT
    // EXISTS` can fail when two sessions run it at once.
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = apply(client);
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use postgres::NoTls;
    use uuid::Uuid;

    use super::*;

    /// A database an older invsync wrote (events logged by its relay, and some still
    /// waiting in its outbox) is migrated forward: the waiting events join the log
    /// after its head, in outbox order, and the outbox is gone, so an older instance
    /// still running fails its writes instead of writing events no one would log.
    #[test]
    fn events_left_in_the_outbox_join_the_log_in_order_when_migrating() {
        let Some(pg) = invsync_testkit::Postgres::start() else {
            return;
        };
        let mut c = Client::connect(&pg.url(), NoTls).unwrap();
        c.batch_execute("CREATE TABLE invsync_migrations (version integer PRIMARY KEY)")
            .unwrap();
        // Up to, not including, the migration that drops the outbox.
        let before = MIGRATIONS
            .iter()
            .position(|m| m.contains("DROP TABLE outbox"))
            .unwrap();
        for (i, sql) in MIGRATIONS[..before].iter().enumerate() {
            c.batch_execute(sql).unwrap();
            c.execute(
                "INSERT INTO invsync_migrations (version) VALUES ($1)",
                &[&(i as i32 + 1)],
            )
            .unwrap();
        }
        let now = chrono::Utc::now();
        for offset in 1..=2_i64 {
            c.execute(
                "INSERT INTO events (log_offset, event_id, store_id, sku, version, occurred_at, envelope)
                 VALUES ($1, $2, 'S1', 'A', $1, $3, 'logged')",
                &[&offset, &Uuid::now_v7(), &now],
            )
            .unwrap();
        }
        c.execute("UPDATE meta SET value = 2 WHERE key = 'last_offset'", &[])
            .unwrap();
        for (sku, version) in [("A", 3_i64), ("B", 1), ("A", 4)] {
            c.execute(
                "INSERT INTO outbox (event_id, store_id, sku, version, occurred_at, envelope)
                 VALUES ($1, 'S1', $2, $3, $4, 'waiting')",
                &[&Uuid::now_v7(), &sku, &version, &now],
            )
            .unwrap();
        }

        migrate(&mut c).unwrap();

        let log: Vec<(i64, String, i64, String)> = c
            .query(
                "SELECT log_offset, sku, version, envelope FROM events ORDER BY log_offset",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        let row = |o: i64, sku: &str, v: i64, e: &str| (o, sku.to_owned(), v, e.to_owned());
        let unknown: i64 = c
            .query_one("SELECT count(*) FROM events WHERE part IS NULL", &[])
            .unwrap()
            .get(0);
        assert_eq!(
            unknown, 5,
            "events written before have no partition (readers tell)"
        );
        assert_eq!(
            log,
            [
                row(1, "A", 1, "logged"),
                row(2, "A", 2, "logged"),
                row(3, "A", 3, "waiting"),
                row(4, "B", 1, "waiting"),
                row(5, "A", 4, "waiting"),
            ]
        );
        let head: i64 = c
            .query_one("SELECT value FROM meta WHERE key = 'last_offset'", &[])
            .unwrap()
            .get(0);
        assert_eq!(head, 5);
        let outbox = c
            .query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'outbox'", &[])
            .unwrap();
        assert!(outbox.is_none(), "the outbox is gone");
        // Migrating again changes nothing.
        migrate(&mut c).unwrap();
        let head_again: i64 = c
            .query_one("SELECT value FROM meta WHERE key = 'last_offset'", &[])
            .unwrap()
            .get(0);
        assert_eq!(head_again, 5);
    }
}
