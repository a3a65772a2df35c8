//! Reads of the stock rows.

use super::rows;
use super::rows::STOCK_COLUMNS;
use super::SqliteLedger;
use crate::error::LedgerError;
use crate::model::{LoggedEvent, StockRow};
use async_trait::async_trait;
use invsync_core::{Sku, StoreId};
use rusqlite::params;

#[async_trait]
impl crate::StockReads for SqliteLedger {
    async fn stock(&self, store: StoreId, sku: Sku) -> Result<Option<StockRow>, LedgerError> {
        self.read(move |c| {
            let sql = format!("SELECT {STOCK_COLUMNS} FROM stock WHERE store_id = ?1 AND sku = ?2");
            Ok(rows::stock_rows(c, &sql, params![store.as_str(), sku.as_str()])?.pop())
        })
        .await
    }

    async fn stock_by_sku(&self, sku: Sku) -> Result<Vec<StockRow>, LedgerError> {
        self.read(move |c| {
            let sql = format!("SELECT {STOCK_COLUMNS} FROM stock WHERE sku = ?1 ORDER BY store_id");
            rows::stock_rows(c, &sql, [sku.as_str()])
        })
        .await
    }

    async fn stock_by_store(
        &self,
        store: StoreId,
        after: Option<Sku>,
        limit: usize,
    ) -> Result<Vec<StockRow>, LedgerError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {STOCK_COLUMNS} FROM stock WHERE store_id = ?1 AND sku > ?2 ORDER BY sku LIMIT ?3"
            );
            let after = after.as_ref().map_or("", Sku::as_str);
            rows::stock_rows(c, &sql, params![store.as_str(), after, limit as i64])
        })
        .await
    }

    async fn all_stock(&self) -> Result<Vec<StockRow>, LedgerError> {
        self.read(|c| {
            let sql = format!("SELECT {STOCK_COLUMNS} FROM stock ORDER BY store_id, sku");
            rows::stock_rows(c, &sql, [])
        })
        .await
    }

    async fn shortages(&self) -> Result<i64, LedgerError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM stock WHERE on_hand < reserved",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn shortage_rows(&self, limit: usize) -> Result<Vec<StockRow>, LedgerError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {STOCK_COLUMNS} FROM stock WHERE on_hand < reserved \
                 ORDER BY reserved - on_hand DESC, store_id, sku LIMIT ?1"
            );
            rows::stock_rows(c, &sql, [limit as i64])
        })
        .await
    }

    async fn recent_events_of(
        &self,
        sku: Sku,
        limit: usize,
    ) -> Result<Vec<LoggedEvent>, LedgerError> {
        self.read(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT log_offset, envelope FROM events \
                 WHERE log_offset > (SELECT coalesce(max(log_offset), 0) FROM events) - ?1 \
                   AND sku = ?2 ORDER BY log_offset DESC LIMIT ?3",
            )?;
            let rows = statement.query_map(
                rusqlite::params![crate::RECENT_WINDOW, sku.as_str(), limit as i64],
                |r| {
                    Ok(LoggedEvent {
                        offset: r.get(0)?,
                        envelope: r.get(1)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
