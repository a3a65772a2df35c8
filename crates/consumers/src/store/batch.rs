//! What one batch writes in the consumer's transaction: the marks of applied
//! events, the checkpoint, dead letters; and what a replay forgets.

use chrono::{DateTime, Utc};
use rusqlite::{params, Transaction};
use uuid::Uuid;

use super::micros;

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

/// Forgets what was applied, for a replay.
pub(crate) fn forget_applied(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("DELETE FROM applied; DELETE FROM seen;")
}
