//! The storefront read model: availability by SKU (and through a channel), and its
//! rows for audits.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use invsync_core::Sku;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Auth, ReadScope};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{field, ApiPath, ApiQuery};
use crate::AppState;

use super::unavailable;

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StoreAvailabilityView {
    store_id: String,
    /// What the store can still sell: never negative. A stock-out below what is
    /// reserved leaves a shortage in the ledger, but nothing is for sale.
    #[schema(minimum = 0)]
    available: i64,
    version: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AvailabilityView {
    sku: String,
    /// The channel asked about (absent: every store, as without channels).
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    /// The sum of the stores' availability.
    #[schema(minimum = 0)]
    available: i64,
    /// Every store holding the SKU; with `channel`, the channel's locations, each
    /// net of the channel's safety stock there.
    stores: Vec<StoreAvailabilityView>,
    /// The projection is current up to events that occurred at this time.
    as_of: Option<DateTime<Utc>>,
    /// How far the projection trails the ledger (0 when caught up).
    lag_ms: i64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelQuery {
    /// Availability through this channel: its locations only, net of its safety
    /// stock.
    #[param(value_type = Option<crate::schema::Identifier>)]
    channel: Option<String>,
}

/// Most SKUs one listing request may ask about.
const MAX_LISTED_SKUS: usize = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListingQuery {
    /// 1 to 100 SKUs, comma-separated (a SKU holding a comma is asked for on its own
    /// route).
    #[param(required = true, value_type = crate::schema::SkuList)]
    skus: Option<String>,
    /// Availability through this channel.
    #[param(value_type = Option<crate::schema::Identifier>)]
    channel: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AvailabilityList {
    items: Vec<AvailabilityView>,
}

/// The availability of `skus` (all or, with `channel`, through that channel) from the
/// projection's store.
async fn availability_of(
    state: &AppState,
    skus: Vec<Sku>,
    channel: Option<String>,
) -> ApiResult<Vec<AvailabilityView>> {
    let (reader, consumer) = state.storefront().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "the storefront projection is not running",
        )
    })?;
    let status = consumer.status();
    let view = |sku: String,
                channel: Option<String>,
                stores: Vec<invsync_consumers::storefront::StoreAvailability>| {
        let stores: Vec<StoreAvailabilityView> = stores
            .into_iter()
            .map(|s| StoreAvailabilityView {
                store_id: s.store_id,
                available: s.available.max(0),
                version: s.version,
            })
            .collect();
        AvailabilityView {
            sku,
            channel,
            available: stores.iter().map(|s| s.available).sum(),
            stores,
            as_of: status.as_of,
            lag_ms: (status.lag_seconds * 1000.0).round() as i64,
        }
    };
    let mut out = Vec::with_capacity(skus.len());
    match channel {
        Some(channel) => {
            let channel = field("channel", invsync_core::ChannelId::parse(channel))?;
            let found = reader
                .channel_availability(
                    channel.to_string(),
                    skus.into_iter().map(Into::into).collect(),
                )
                .await
                .map_err(|e| unavailable("storefront projection", e))?
                .ok_or_else(|| ApiError::not_found("channel"))?;
            for a in found {
                out.push(view(a.sku, Some(channel.to_string()), a.stores));
            }
        }
        None => {
            let names: Vec<String> = skus.iter().map(ToString::to_string).collect();
            let found = reader
                .availability_of(names)
                .await
                .map_err(|e| unavailable("storefront projection", e))?;
            for (sku, stores) in skus.into_iter().zip(found) {
                out.push(view(sku.into(), None, stores));
            }
        }
    }
    Ok(out)
}

/// Availability of a SKU as the storefront sees it: from the projection's own store,
/// eventually consistent, and answering while the ledger is down. A SKU the
/// projection has never seen has no stores and `available` 0. With `channel`, only
/// the channel's locations, each net of its safety stock (404 for an unknown channel).
#[utoipa::path(get, path = "/v1/storefront/availability/{sku}", tag = "storefront", operation_id = "storefront_availability",
    params(("sku" = crate::schema::Identifier, Path), ChannelQuery), responses((status = 200, body = AvailabilityView)))]
pub(crate) async fn availability(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiPath(sku): ApiPath<String>,
    ApiQuery(q): ApiQuery<ChannelQuery>,
) -> ApiResult<Json<AvailabilityView>> {
    let sku = field("sku", Sku::parse(sku))?;
    let mut found = availability_of(&state, vec![sku], q.channel).await?;
    found
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("sku"))
}

/// Availability of up to 100 SKUs at once (a product listing page), as the route per
/// SKU answers each, in the order asked.
#[utoipa::path(get, path = "/v1/storefront/availability", tag = "storefront", operation_id = "storefront_availability_list",
    params(ListingQuery), responses((status = 200, body = AvailabilityList),
        (status = 404, description = "not_found: no such channel")))]
pub(crate) async fn availability_list(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListingQuery>,
) -> ApiResult<Json<AvailabilityList>> {
    let raw = q
        .skus
        .ok_or_else(|| ApiError::invalid("skus", "is required"))?;
    let skus = raw
        .split(',')
        .map(|s| field("skus", Sku::parse(s)))
        .collect::<Result<Vec<_>, _>>()?;
    if skus.len() > MAX_LISTED_SKUS {
        return Err(ApiError::invalid(
            "skus",
            format!("at most {MAX_LISTED_SKUS} SKUs per request"),
        ));
    }
    let items = availability_of(&state, skus, q.channel).await?;
    Ok(Json(AvailabilityList { items }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RowsQuery {
    /// Cursor from the previous page's `next` (`<store_id>/<sku>`, each part with `%`
    /// and `/` percent-escaped).
    #[param(pattern = "^[^/]+/[^/]+$")]
    after: Option<String>,
    /// 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ViewPage {
    #[schema(value_type = Vec<Object>)]
    items: Vec<invsync_consumers::storefront::ViewRow>,
    next: Option<String>,
}

/// The whole storefront view, paged (for audits such as `invsync check`).
#[utoipa::path(get, path = "/v1/storefront/rows", tag = "storefront", operation_id = "storefront_rows", params(RowsQuery),
    responses((status = 200, body = ViewPage)))]
pub(crate) async fn rows(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RowsQuery>,
) -> ApiResult<Json<ViewPage>> {
    let limit = crate::routes::page_limit(q.limit)?;
    let after = q
        .after
        .map(|a| {
            crate::routes::parse_pair_cursor(&a).map(|(st, sk)| (st.to_string(), sk.to_string()))
        })
        .transpose()?;
    let (reader, _) = state.storefront().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "the storefront projection is not running",
        )
    })?;
    let mut items = reader
        .rows(after, limit + 1)
        .await
        .map_err(|e| unavailable("storefront projection", e))?;
    let more = items.len() > limit;
    items.truncate(limit);
    let next = more
        .then(|| {
            items
                .last()
                .map(|r| crate::routes::pair_cursor(&r.store_id, &r.sku))
        })
        .flatten();
    Ok(Json(ViewPage { items, next }))
}
