//! Reading and writing domain values as SQLite rows; shared by the writer's
//! transaction and the read-only connections.

use chrono::{DateTime, Utc};
use invsync_core::channel::Channel;
use invsync_core::{
    ChannelId, OrderId, Reservation, ReservationStatus, Sku, StockLevel, StoreId, StoredReservation,
};
use rusqlite::{params, Connection, OptionalExtension, Row};
use uuid::Uuid;

use crate::error::LedgerError;
use crate::model::StockRow;

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn time(micros: i64) -> Result<DateTime<Utc>, LedgerError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| LedgerError::Internal(format!("stored time {micros} out of range")))
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> LedgerError {
    LedgerError::Internal(format!("stored {what} is invalid: {err}"))
}

pub(crate) fn uuid(bytes: &[u8]) -> Result<Uuid, LedgerError> {
    Uuid::from_slice(bytes).map_err(|e| corrupt("uuid", e))
}

/// Columns: store_id, sku, on_hand, reserved, version, updated_at.
pub(crate) const STOCK_COLUMNS: &str = "store_id, sku, on_hand, reserved, version, updated_at";

pub(crate) fn stock_row(row: &Row<'_>) -> Result<StockRow, LedgerError> {
    Ok(StockRow {
        store_id: StoreId::parse(row.get::<_, String>(0)?).map_err(|e| corrupt("store_id", e))?,
        sku: Sku::parse(row.get::<_, String>(1)?).map_err(|e| corrupt("sku", e))?,
        level: StockLevel::new(row.get(2)?, row.get(3)?, row.get(4)?)?,
        updated_at: time(row.get(5)?)?,
    })
}

/// Runs a stock query and maps every row.
pub(crate) fn stock_rows(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<StockRow>, LedgerError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(stock_row(row)?);
    }
    Ok(out)
}

pub(crate) fn load_reservation(
    conn: &Connection,
    id: Uuid,
) -> Result<Option<Reservation>, LedgerError> {
    let head = conn
        .prepare_cached(
            "SELECT order_id, store_id, channel, status, expires_at, created_at, lines
             FROM reservations WHERE id = ?1",
        )?
        .query_row([id.as_bytes()], |r| {
            Ok((
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ),
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
            ))
        })
        .optional()?;
    let Some(((order_id, store_id, channel), status, expires_at, created_at, lines)) = head else {
        return Ok(None);
    };
    let stored = StoredReservation {
        reservation_id: id,
        order_id: OrderId::parse(order_id).map_err(|e| corrupt("order_id", e))?,
        target: crate::parts::place(store_id, channel)?,
        status: ReservationStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        lines: Vec::new(),
        expires_at: expires_at.map(time).transpose()?,
        created_at: time(created_at)?,
    };
    crate::parts::reservation(stored, crate::parts::rows_from_json(&lines)?).map(Some)
}

pub(crate) fn load_channel(
    conn: &Connection,
    id: &ChannelId,
) -> Result<Option<Channel>, LedgerError> {
    let found = conn
        .prepare_cached("SELECT version, config FROM channels WHERE channel_id = ?1")?
        .query_row([id.as_str()], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?;
    found
        .map(|(version, config)| crate::parts::channel(id.as_str(), version, &config))
        .transpose()
}

pub(crate) fn reservation_ids(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Uuid>, LedgerError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut ids = Vec::new();
    while let Some(row) = rows.next()? {
        ids.push(uuid(&row.get::<_, Vec<u8>>(0)?)?);
    }
    Ok(ids)
}

pub(crate) fn last_offset(conn: &Connection) -> Result<i64, LedgerError> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'last_offset'")?
        .query_row(params![], |r| r.get(0))?)
}

/// The first retained offset whose event occurred at or after `t`; `None` when every
/// retained event is older (or none is retained). The log has no time index: offsets
/// grow with time, so a binary search over them finds it in ~log2(n) lookups by
/// offset.
pub(crate) fn first_offset_since(
    conn: &Connection,
    t: DateTime<Utc>,
) -> Result<Option<i64>, LedgerError> {
    let t = micros(t);
    let end = |order: &str| -> Result<Option<i64>, LedgerError> {
        let sql = format!("SELECT log_offset FROM events ORDER BY log_offset {order} LIMIT 1");
        Ok(conn
            .prepare_cached(&sql)?
            .query_row([], |r| r.get(0))
            .optional()?)
    };
    let (Some(mut lo), Some(mut hi)) = (end("ASC")?, end("DESC")?) else {
        return Ok(None);
    };
    // The event at `offset`, or the next one retained: the search holds even if a
    // hole was ever left in the log.
    let mut at = conn.prepare_cached(
        "SELECT occurred_at FROM events WHERE log_offset >= ?1 ORDER BY log_offset LIMIT 1",
    )?;
    let mut occurred =
        |offset: i64| -> Result<i64, LedgerError> { Ok(at.query_row([offset], |r| r.get(0))?) };
    if occurred(hi)? < t {
        return Ok(None);
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if occurred(mid)? >= t {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some(lo))
}

/// A `meta` value; 0 when the key was never written.
pub(crate) fn meta(conn: &Connection, key: &str) -> Result<i64, LedgerError> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}
