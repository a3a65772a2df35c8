//! The storefront projection: per (store, sku) availability as the Ecommerce channel
//! sees it, in the consumer's own store. Eventually consistent, version-guarded.

use chrono::{DateTime, Utc};
use invsync_core::InventoryEventV1;
use invsync_ledger::StockRow;
use rusqlite::{params, Transaction};
use serde::Serialize;

use crate::store::StoreReader;
use crate::Sink;

pub struct Storefront;

impl Sink for Storefront {
    fn schema(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS availability (
             sku         TEXT NOT NULL,
             store_id    TEXT NOT NULL,
             on_hand     INTEGER NOT NULL,
             reserved    INTEGER NOT NULL,
             available   INTEGER NOT NULL,
             version     INTEGER NOT NULL,
             updated_at  INTEGER NOT NULL,
             PRIMARY KEY (sku, store_id)
         ) WITHOUT ROWID;"
    }

    fn apply(&self, tx: &Transaction<'_>, e: &InventoryEventV1) -> rusqlite::Result<()> {
        upsert(
            tx,
            e.product_sku.as_str(),
            e.store_id.as_str(),
            (e.on_hand, e.reserved, e.available, e.version),
            e.occurred_at,
        )
    }

    fn rebuilds(&self) -> bool {
        true
    }

    fn reset(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM availability", [])?;
        Ok(())
    }

    fn load(&self, tx: &Transaction<'_>, row: &StockRow) -> rusqlite::Result<()> {
        let l = row.level;
        upsert(
            tx,
            row.sku.as_str(),
            row.store_id.as_str(),
            (l.on_hand(), l.reserved(), l.available(), l.version()),
            row.updated_at,
        )
    }
}

/// Writes a level unless the view already holds that version or a newer one.
fn upsert(
    tx: &Transaction<'_>,
    sku: &str,
    store: &str,
    (on_hand, reserved, available, version): (i64, i64, i64, i64),
    at: DateTime<Utc>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO availability (sku, store_id, on_hand, reserved, available, version, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (sku, store_id) DO UPDATE SET on_hand = excluded.on_hand,
             reserved = excluded.reserved, available = excluded.available,
             version = excluded.version, updated_at = excluded.updated_at
         WHERE excluded.version > availability.version",
    )?
    .execute(params![sku, store, on_hand, reserved, available, version, at.timestamp_micros()])?;
    Ok(())
}

/// One store's availability of a SKU in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreAvailability {
    pub store_id: String,
    pub available: i64,
    pub version: i64,
}

/// One row of the view, for audits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewRow {
    pub store_id: String,
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub version: i64,
}

/// Reads the view (read-only; works while the ledger is down).
#[derive(Clone)]
pub struct StorefrontReader {
    store: StoreReader,
}

impl StorefrontReader {
    pub fn new(store: StoreReader) -> Self {
        Self { store }
    }

    pub async fn availability(&self, sku: String) -> Result<Vec<StoreAvailability>, String> {
        self.store
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT store_id, available, version FROM availability WHERE sku = ?1 ORDER BY store_id",
                )?;
                let rows = stmt.query_map([sku], |r| {
                    Ok(StoreAvailability {
                        store_id: r.get(0)?,
                        available: r.get(1)?,
                        version: r.get(2)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    /// A page of the whole view in (store, sku) order, after the cursor.
    pub async fn rows(
        &self,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<ViewRow>, String> {
        self.store
            .read(move |c| {
                let (store, sku) = after.unwrap_or_default();
                let mut stmt = c.prepare_cached(
                    "SELECT store_id, sku, on_hand, reserved, available, version FROM availability
                     WHERE (store_id, sku) > (?1, ?2) ORDER BY store_id, sku LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![store, sku, limit as i64], |r| {
                    Ok(ViewRow {
                        store_id: r.get(0)?,
                        sku: r.get(1)?,
                        on_hand: r.get(2)?,
                        reserved: r.get(3)?,
                        available: r.get(4)?,
                        version: r.get(5)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }
}
