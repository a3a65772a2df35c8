//! `GET /v1/stock…`: the ledger's strongly consistent levels.

use axum::extract::State;
use axum::Json;
use invsync_core::{Sku, StoreId};
use serde::Deserialize;

use super::page_limit;
use crate::auth::{Auth, ReadScope};
use crate::error::{ApiError, ApiResult};
use crate::extract::{field, ApiPath, ApiQuery};
use crate::wire::{ShortagesView, SnapshotView, StockList, StockPage, StockView};
use crate::AppState;

/// One (store, sku) level.
#[utoipa::path(get, path = "/v1/stock/{store_id}/{sku}", tag = "stock", operation_id = "get_stock",
    params(("store_id" = crate::schema::Identifier, Path), ("sku" = crate::schema::Identifier, Path)),
    responses((status = 200, body = StockView), (status = 404, body = crate::error::Problem)))]
pub(crate) async fn get_one(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiPath((store_id, sku)): ApiPath<(String, String)>,
) -> ApiResult<Json<StockView>> {
    let store_id = field("store_id", StoreId::parse(store_id))?;
    let sku = field("sku", Sku::parse(sku))?;
    let row = state.ledger().stock(store_id, sku).await?;
    row.map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("stock for this store and sku"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct StockQuery {
    /// Every store holding this SKU.
    #[param(value_type = Option<crate::schema::Identifier>)]
    sku: Option<String>,
    /// One store's stock, paged by SKU.
    #[param(value_type = Option<crate::schema::Identifier>)]
    store_id: Option<String>,
    /// Page size with `store_id`: 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Cursor from the previous page's `next` (with `store_id`).
    #[param(value_type = Option<crate::schema::Identifier>)]
    after: Option<String>,
}

/// Levels by SKU (`?sku=`) or by store (`?store_id=&limit=&after=`).
#[utoipa::path(get, path = "/v1/stock", tag = "stock", operation_id = "list_stock", params(StockQuery),
    responses((status = 200, description = "`{items}` for sku, `{items, next}` for store_id", body = StockPage)))]
pub(crate) async fn list(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<StockQuery>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    match (q.sku, q.store_id) {
        (Some(sku), None) => {
            if q.limit.is_some() || q.after.is_some() {
                return Err(ApiError::invalid(
                    "limit",
                    "paging applies to store_id listings only",
                ));
            }
            let sku = field("sku", Sku::parse(sku))?;
            let items = state.ledger().stock_by_sku(sku).await?;
            Ok(Json(StockList {
                items: items.into_iter().map(Into::into).collect(),
            })
            .into_response())
        }
        (None, Some(store)) => {
            let store = field("store_id", StoreId::parse(store))?;
            let limit = page_limit(q.limit)?;
            let after = q.after.map(|a| field("after", Sku::parse(a))).transpose()?;
            // One row more than the page: `next` only when there is a next page.
            let mut items = state
                .ledger()
                .stock_by_store(store, after, limit + 1)
                .await?;
            let more = items.len() > limit;
            items.truncate(limit);
            let next = more
                .then(|| items.last().map(|r| r.sku.to_string()))
                .flatten();
            Ok(Json(StockPage {
                items: items.into_iter().map(Into::into).collect(),
                next,
            })
            .into_response())
        }
        _ => Err(ApiError::invalid(
            "sku",
            "give exactly one of sku and store_id",
        )),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotQuery {
    /// 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Cursor from the previous page's `next` (`<store_id>/<sku>`, each part with `%`
    /// and `/` percent-escaped).
    #[param(pattern = "^[^/]+/[^/]+$")]
    after: Option<String>,
}

/// Every level, paged, with the log offset each page is consistent with. To
/// bootstrap a consumer: take the pages, then follow the log from the first page's
/// `log_offset`, skipping events whose version is not above the level's.
#[utoipa::path(get, path = "/v1/stock/snapshot", tag = "stock", operation_id = "stock_snapshot", params(SnapshotQuery),
    responses((status = 200, body = SnapshotView)))]
pub(crate) async fn snapshot(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<SnapshotQuery>,
) -> ApiResult<Json<SnapshotView>> {
    let limit = page_limit(q.limit)?;
    let after = q.after.map(|a| super::parse_pair_cursor(&a)).transpose()?;
    let mut page = state.ledger().snapshot(after, limit + 1).await?;
    let more = page.items.len() > limit;
    page.items.truncate(limit);
    let next = more
        .then(|| {
            page.items
                .last()
                .map(|r| super::pair_cursor(r.store_id.as_str(), r.sku.as_str()))
        })
        .flatten();
    Ok(Json(SnapshotView {
        items: page.items.into_iter().map(Into::into).collect(),
        next,
        log_offset: page.log_offset,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShortagesQuery {
    /// 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The (store, sku) rows with a shortage (`available < 0`: fewer on hand than
/// reserved), the largest first, and how many there are in all.
#[utoipa::path(get, path = "/v1/stock/shortages", tag = "stock", operation_id = "list_shortages", params(ShortagesQuery),
    responses((status = 200, body = ShortagesView)))]
pub(crate) async fn shortages(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ShortagesQuery>,
) -> ApiResult<Json<ShortagesView>> {
    let limit = page_limit(q.limit)?;
    let (count, rows) = tokio::try_join!(
        state.ledger().shortages(),
        state.ledger().shortage_rows(limit)
    )?;
    Ok(Json(ShortagesView {
        count,
        items: rows.into_iter().map(Into::into).collect(),
    }))
}
