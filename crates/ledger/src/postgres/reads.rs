//! Reads of the stock rows.

use super::rows::STOCK_COLUMNS;
use super::{stock_rows, PgLedger};
use crate::error::LedgerError;
use crate::model::{LoggedEvent, StockRow};
use async_trait::async_trait;
use invsync_core::{Sku, StoreId};

#[async_trait]
impl crate::StockReads for PgLedger {
    async fn stock(&self, store: StoreId, sku: Sku) -> Result<Option<StockRow>, LedgerError> {
        self.read(move |c| {
            let sql = format!("SELECT {STOCK_COLUMNS} FROM stock WHERE store_id = $1 AND sku = $2");
            Ok(stock_rows(c, &sql, &[&store.as_str(), &sku.as_str()])?.pop())
        })
        .await
    }

    async fn stock_by_sku(&self, sku: Sku) -> Result<Vec<StockRow>, LedgerError> {
        self.read(move |c| {
            let sql = format!("SELECT {STOCK_COLUMNS} FROM stock WHERE sku = $1 ORDER BY store_id");
            stock_rows(c, &sql, &[&sku.as_str()])
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
            let sql = format!("SELECT {STOCK_COLUMNS} FROM stock WHERE store_id = $1 AND sku > $2 ORDER BY sku LIMIT $3");
            let after = after.as_ref().map_or("", Sku::as_str);
            stock_rows(c, &sql, &[&store.as_str(), &after, &(limit as i64)])
        })
        .await
    }

    async fn all_stock(&self) -> Result<Vec<StockRow>, LedgerError> {
        self.read(|c| {
            stock_rows(
                c,
                &format!("SELECT {STOCK_COLUMNS} FROM stock ORDER BY store_id, sku"),
                &[],
            )
        })
        .await
    }

    async fn shortages(&self) -> Result<i64, LedgerError> {
        self.read(|c| {
            Ok(
                c.query_one("SELECT count(*) FROM stock WHERE on_hand < reserved", &[])?
                    .get(0),
            )
        })
        .await
    }

    async fn shortage_rows(&self, limit: usize) -> Result<Vec<StockRow>, LedgerError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {STOCK_COLUMNS} FROM stock WHERE on_hand < reserved \
                 ORDER BY reserved - on_hand DESC, store_id, sku LIMIT $1"
            );
            stock_rows(c, &sql, &[&(limit as i64)])
        })
        .await
    }

    async fn recent_events_of(
        &self,
        sku: Sku,
        limit: usize,
    ) -> Result<Vec<LoggedEvent>, LedgerError> {
        self.read(move |c| {
            Ok(c.query(
                "SELECT log_offset, envelope FROM events \
                 WHERE log_offset > (SELECT value FROM meta WHERE key = 'last_offset') - $1 \
                   AND sku = $2 ORDER BY log_offset DESC LIMIT $3",
                &[&crate::RECENT_WINDOW, &sku.as_str(), &(limit as i64)],
            )?
            .iter()
            .map(|r| LoggedEvent {
                offset: r.get(0),
                envelope: r.get(1),
            })
            .collect())
        })
        .await
    }
}
