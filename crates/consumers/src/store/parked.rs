//! Parked events (a SKU whose delivery keeps failing waits in its own queue, see
//! `runtime::parked`) and redriven dead letters.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use super::{micros, time};

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
