//! After a batch ran: everything it buffered, written set-based (`unnest`), the
//! log last.

use chrono::{DateTime, Utc};
use invsync_core::event::PARTITIONS;
use invsync_core::{ChannelId, LogRecord, Reservation, StockLevel, StoreId};
use postgres::Transaction;

use crate::error::LedgerError;
use crate::postgres::rows::Statements;

use super::{execute, State, Written};

/// Writes everything the batch buffered, set-based, in the transaction: one
/// statement per table and kind of write, the log last.
pub(crate) fn flush(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    state: &State,
    now: DateTime<Utc>,
) -> Result<(), LedgerError> {
    write_stock(pg, statements, state, now)?;
    insert_reservations(pg, statements, state, now)?;
    update_reservations(pg, statements, state, now)?;
    record_adjustments(pg, statements, state)?;
    // The log, last: the head counter's row lock is held only from here to COMMIT.
    if !state.events.is_empty() {
        append_to_log(pg, statements, &state.events)?;
    }
    Ok(())
}

/// Stock: new rows, then changed rows (one statement each).
fn write_stock(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    state: &State,
    now: DateTime<Utc>,
) -> Result<(), LedgerError> {
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

    Ok(())
}

/// New reservations and their lines, in their final state, in key order: a
/// concurrent insert of the same key waits on ours, and two batches inserting
/// several keys then wait in one order, never on each other.
fn insert_reservations(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    state: &State,
    now: DateTime<Utc>,
) -> Result<(), LedgerError> {
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

    Ok(())
}

/// Stored reservations the batch changed: status and lines, in one statement; the
/// ones whose allocations changed (reallocation) may hold at new locations.
fn update_reservations(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    state: &State,
    now: DateTime<Utc>,
) -> Result<(), LedgerError> {
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

    Ok(())
}

/// The adjustments' idempotency records, in key order as for reservations.
fn record_adjustments(
    pg: &mut Transaction<'_>,
    statements: &mut Statements,
    state: &State,
) -> Result<(), LedgerError> {
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
