//! Row ↔ domain mapping for PostgreSQL, shared by the write path
//! ([`batch`](super::batch)) and the read paths, and the per-connection statement
//! cache.

use std::collections::HashMap;

use invsync_core::{
    OrderId, Reservation, ReservationStatus, Sku, StockLevel, StoreId, StoredReservation,
};
use postgres::{GenericClient, Row, Statement, Transaction};
use uuid::Uuid;

use crate::error::LedgerError;
use crate::model::StockRow;

fn corrupt(what: &str, err: impl std::fmt::Display) -> LedgerError {
    LedgerError::Internal(format!("stored {what} is invalid: {err}"))
}

pub(crate) const STOCK_COLUMNS: &str = "store_id, sku, on_hand, reserved, version, updated_at";

pub(crate) fn stock_row(row: &Row) -> Result<StockRow, LedgerError> {
    Ok(StockRow {
        store_id: StoreId::parse(row.try_get::<_, String>(0)?)
            .map_err(|e| corrupt("store_id", e))?,
        sku: Sku::parse(row.try_get::<_, String>(1)?).map_err(|e| corrupt("sku", e))?,
        level: StockLevel::new(row.try_get(2)?, row.try_get(3)?, row.try_get(4)?)?,
        updated_at: row.try_get(5)?,
    })
}

pub(crate) fn load_reservation(
    c: &mut impl GenericClient,
    id: Uuid,
) -> Result<Option<Reservation>, LedgerError> {
    Ok(load_reservations(c, &[id], false)?.pop())
}

/// Loads reservations with their lines (kept inline), in id order, in one query
/// whatever their number; `lock`: `FOR UPDATE`, taking their row locks in id order.
pub(crate) fn load_reservations(
    c: &mut impl GenericClient,
    ids: &[Uuid],
    lock: bool,
) -> Result<Vec<Reservation>, LedgerError> {
    let heads = c.query(
        if lock {
            "SELECT id, order_id, store_id, status, expires_at, created_at, channel, lines
             FROM reservations WHERE id = ANY($1) ORDER BY id FOR UPDATE"
        } else {
            "SELECT id, order_id, store_id, status, expires_at, created_at, channel, lines
             FROM reservations WHERE id = ANY($1) ORDER BY id"
        },
        &[&ids],
    )?;
    heads
        .iter()
        .map(|head| {
            let status: String = head.try_get(3)?;
            let stored = StoredReservation {
                reservation_id: head.try_get(0)?,
                order_id: OrderId::parse(head.try_get::<_, String>(1)?)
                    .map_err(|e| corrupt("order_id", e))?,
                target: crate::parts::place(head.try_get(2)?, head.try_get(6)?)?,
                status: ReservationStatus::parse(&status)
                    .ok_or_else(|| corrupt("status", &status))?,
                lines: Vec::new(),
                expires_at: head.try_get(4)?,
                created_at: head.try_get(5)?,
            };
            crate::parts::reservation(stored, crate::parts::rows_from_json(head.try_get(7)?)?)
        })
        .collect()
}

/// The prepared statement for `sql` on this connection, preparing it on first use.
pub(crate) fn prepared(
    tx: &mut Transaction<'_>,
    statements: &mut Statements,
    sql: &'static str,
) -> Result<Statement, LedgerError> {
    if let Some(statement) = statements.get(sql) {
        return Ok(statement.clone());
    }
    let statement = tx.prepare(sql)?;
    statements.insert(sql, statement.clone());
    Ok(statement)
}

/// Statements prepared on one pooled connection, by their SQL text: each is parsed
/// and planned once per connection instead of on every call (one round trip less).
pub(crate) type Statements = HashMap<&'static str, Statement>;
