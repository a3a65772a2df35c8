//! [`Tx`] for PostgreSQL: row locks, the outbox, and row ↔ domain mapping shared with
//! the read paths.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use invsync_core::{
    ExternalRef, InventoryEventV1, OrderId, Reservation, ReservationLine, ReservationStatus, Sku,
    StockLevel, StoreId,
};
use postgres::{GenericClient, Row, Statement, Transaction};
use uuid::Uuid;

use crate::engine::Tx;
use crate::error::LedgerError;
use crate::model::{AdjustmentOutcome, StockRow};

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
    let Some(head) = c.query_opt(
        "SELECT order_id, store_id, status, expires_at, created_at FROM reservations WHERE id = $1",
        &[&id],
    )?
    else {
        return Ok(None);
    };
    let status: String = head.try_get(2)?;
    let mut lines = Vec::new();
    for row in c.query(
        "SELECT sku, quantity, released, fulfilled FROM reservation_lines
         WHERE reservation_id = $1 ORDER BY line_no",
        &[&id],
    )? {
        lines.push(ReservationLine {
            sku: Sku::parse(row.try_get::<_, String>(0)?).map_err(|e| corrupt("sku", e))?,
            quantity: row.try_get(1)?,
            released: row.try_get(2)?,
            fulfilled: row.try_get(3)?,
        });
    }
    Ok(Some(Reservation {
        reservation_id: id,
        order_id: OrderId::parse(head.try_get::<_, String>(0)?)
            .map_err(|e| corrupt("order_id", e))?,
        store_id: StoreId::parse(head.try_get::<_, String>(1)?)
            .map_err(|e| corrupt("store_id", e))?,
        status: ReservationStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        lines,
        expires_at: head.try_get(3)?,
        created_at: head.try_get(4)?,
    }))
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

pub(crate) struct PgTx<'a, 'b> {
    pub(crate) tx: &'a mut Transaction<'b>,
    pub(crate) statements: &'a mut Statements,
    /// Keys whose row this transaction found (and locked): written with UPDATE. A key
    /// found missing is written with a plain INSERT, so a concurrent creator makes
    /// this transaction fail and retry instead of overwriting.
    pub(crate) existing: HashSet<(String, String)>,
    pub(crate) source: &'a str,
}

type Params<'p> = &'p [&'p (dyn postgres::types::ToSql + Sync)];

impl PgTx<'_, '_> {
    fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, LedgerError> {
        let statement = self.stmt(sql)?;
        Ok(self.tx.query_opt(&statement, params)?)
    }

    fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>, LedgerError> {
        let statement = self.stmt(sql)?;
        Ok(self.tx.query(&statement, params)?)
    }

    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, LedgerError> {
        let statement = self.stmt(sql)?;
        Ok(self.tx.execute(&statement, params)?)
    }

    fn stmt(&mut self, sql: &'static str) -> Result<Statement, LedgerError> {
        prepared(self.tx, self.statements, sql)
    }
}

impl Tx for PgTx<'_, '_> {
    fn stock(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<StockLevel>, LedgerError> {
        let row = self.query_opt("SELECT on_hand, reserved, version FROM stock WHERE store_id = $1 AND sku = $2 FOR UPDATE",
            &[&store.as_str(), &sku.as_str()],
        )?;
        match row {
            Some(r) => {
                self.existing.insert((store.to_string(), sku.to_string()));
                Ok(Some(StockLevel::new(
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                )?))
            }
            None => Ok(None),
        }
    }

    fn put_stock(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        level: StockLevel,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let params: [&(dyn postgres::types::ToSql + Sync); 6] = [
            &store.as_str(),
            &sku.as_str(),
            &level.on_hand(),
            &level.reserved(),
            &level.version(),
            &now,
        ];
        if self
            .existing
            .contains(&(store.to_string(), sku.to_string()))
        {
            self.execute(
                "UPDATE stock SET on_hand = $3, reserved = $4, version = $5, updated_at = $6
                 WHERE store_id = $1 AND sku = $2",
                &params,
            )?;
        } else {
            self.execute(
                "INSERT INTO stock (store_id, sku, on_hand, reserved, version, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &params,
            )?;
            self.existing.insert((store.to_string(), sku.to_string()));
        }
        Ok(())
    }

    fn append_event(&mut self, e: &InventoryEventV1) -> Result<(), LedgerError> {
        self.execute(
            "INSERT INTO outbox (event_id, store_id, sku, version, occurred_at, envelope)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &e.event_id,
                &e.store_id.as_str(),
                &e.product_sku.as_str(),
                &e.version,
                &e.occurred_at,
                &e.to_envelope(self.source).to_json(),
            ],
        )?;
        Ok(())
    }

    fn reservation_by_key(
        &mut self,
        key: &str,
    ) -> Result<Option<(String, Reservation)>, LedgerError> {
        let Some(row) = self.query_opt(
            "SELECT id, fingerprint FROM reservations WHERE idem_key = $1",
            &[&key],
        )?
        else {
            return Ok(None);
        };
        let id: Uuid = row.try_get(0)?;
        let reservation = load_reservation(self.tx, id)?
            .ok_or_else(|| LedgerError::Internal(format!("reservation {id} vanished")))?;
        Ok(Some((row.try_get(1)?, reservation)))
    }

    fn reservation(&mut self, id: Uuid) -> Result<Option<Reservation>, LedgerError> {
        // Lock the reservation so two releases of it serialize.
        if self
            .tx
            .query_opt(
                "SELECT 1 FROM reservations WHERE id = $1 FOR UPDATE",
                &[&id],
            )?
            .is_none()
        {
            return Ok(None);
        }
        load_reservation(self.tx, id)
    }

    fn insert_reservation(
        &mut self,
        r: &Reservation,
        key: &str,
        fingerprint: &str,
    ) -> Result<(), LedgerError> {
        self.execute("INSERT INTO reservations
             (id, order_id, store_id, idem_key, fingerprint, status, expires_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
            &[
                &r.reservation_id,
                &r.order_id.as_str(),
                &r.store_id.as_str(),
                &key,
                &fingerprint,
                &r.status.as_str(),
                &r.expires_at,
                &r.created_at,
            ],
        )?;
        for (no, line) in r.lines.iter().enumerate() {
            self.execute("INSERT INTO reservation_lines (reservation_id, line_no, sku, quantity, released, fulfilled)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&r.reservation_id, &(no as i32), &line.sku.as_str(), &line.quantity, &line.released, &line.fulfilled],
            )?;
        }
        Ok(())
    }

    fn update_reservation(
        &mut self,
        r: &Reservation,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.execute(
            "UPDATE reservations SET status = $2, updated_at = $3 WHERE id = $1",
            &[&r.reservation_id, &r.status.as_str(), &now],
        )?;
        for (no, line) in r.lines.iter().enumerate() {
            self.execute(
                "UPDATE reservation_lines SET released = $3, fulfilled = $4
                 WHERE reservation_id = $1 AND line_no = $2",
                &[
                    &r.reservation_id,
                    &(no as i32),
                    &line.released,
                    &line.fulfilled,
                ],
            )?;
        }
        Ok(())
    }

    fn adjustment_by_ref(
        &mut self,
        external_ref: &ExternalRef,
    ) -> Result<Option<(String, AdjustmentOutcome)>, LedgerError> {
        let Some(row) = self.query_opt(
            "SELECT fingerprint, outcome FROM adjustments WHERE external_ref = $1",
            &[&external_ref.as_str()],
        )?
        else {
            return Ok(None);
        };
        let outcome: String = row.try_get(1)?;
        let outcome = serde_json::from_str(&outcome)
            .map_err(|e| LedgerError::Internal(format!("stored adjustment outcome: {e}")))?;
        Ok(Some((row.try_get(0)?, outcome)))
    }

    fn insert_adjustment(
        &mut self,
        external_ref: &ExternalRef,
        fingerprint: &str,
        outcome: &AdjustmentOutcome,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let outcome = serde_json::to_string(outcome)
            .map_err(|e| LedgerError::Internal(format!("encoding adjustment outcome: {e}")))?;
        self.execute("INSERT INTO adjustments (external_ref, fingerprint, outcome, created_at) VALUES ($1, $2, $3, $4)",
            &[&external_ref.as_str(), &fingerprint, &outcome, &now],
        )?;
        Ok(())
    }

    fn purge_events(&mut self, before: DateTime<Utc>, limit: usize) -> Result<usize, LedgerError> {
        Ok(self.execute("DELETE FROM events WHERE log_offset IN (
                 SELECT log_offset FROM events WHERE occurred_at < $1 ORDER BY log_offset LIMIT $2)",
            &[&before, &(limit as i64)],
        )? as usize)
    }

    fn advance_cursor(&mut self, name: &str, offset: i64) -> Result<(), LedgerError> {
        self.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, EXCLUDED.value)",
            &[&crate::cursor_key(name), &offset],
        )?;
        Ok(())
    }

    fn due_reservations(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Uuid>, LedgerError> {
        // SKIP LOCKED: instances sweeping at once split the work instead of queueing.
        let rows = self.query(
            "SELECT id FROM reservations
             WHERE status = 'active' AND expires_at IS NOT NULL AND expires_at <= $1
             ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&now, &(limit as i64)],
        )?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}
