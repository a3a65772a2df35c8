//! `/v1/channels…` (channels.md): the configuration of channels and their per-SKU
//! safety stock. Reads need the `read` scope, changes `admin`.

use axum::extract::State;
use axum::Json;
use invsync_core::channel::{
    Channel, ChannelConfig, ChannelLocation, SafetyOverride, SafetyOverrides,
};
use invsync_core::ChannelId;

use crate::auth::{AdminScope, Auth, ReadScope};
use crate::error::{ApiError, ApiResult};
use crate::extract::{field, ApiJson, ApiPath};
use crate::wire::{
    ChannelBody, ChannelList, ChannelView, SafetyOverrideList, SafetyOverrideView, SafetyStockBody,
    SafetyStockView,
};
use crate::AppState;

fn channel_id(raw: String) -> Result<ChannelId, ApiError> {
    field("channel_id", ChannelId::parse(raw))
}

/// Creates or replaces a channel. With `if_version` the change applies only if the
/// channel is at that version (0: only if it does not exist yet); else 409
/// `version_conflict`. The same configuration again changes nothing.
#[utoipa::path(put, path = "/v1/channels/{channel_id}", tag = "channels", operation_id = "put_channel",
    params(("channel_id" = crate::schema::Identifier, Path)), request_body = ChannelBody,
    responses((status = 200, body = ChannelView),
        (status = 409, description = "version_conflict", body = crate::error::Problem)))]
pub(crate) async fn put(
    _: Auth<AdminScope>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ChannelBody>,
) -> ApiResult<Json<ChannelView>> {
    let id = channel_id(id)?;
    if let Some(version) = body.if_version.filter(|v| *v < 0) {
        return Err(ApiError::invalid(
            "if_version",
            format!("must be 0 or more, got {version}"),
        ));
    }
    let locations = body
        .locations
        .into_iter()
        .map(|l| ChannelLocation {
            store_id: l.store_id,
            priority: l.priority.unwrap_or(0),
            safety_stock: l.safety_stock.unwrap_or(0),
        })
        .collect();
    let config = ChannelConfig::new(body.name, body.allocation, body.split, locations)?;
    let channel = state
        .ledger()
        .put_channel(id, config, body.if_version)
        .await?;
    Ok(Json(channel.into()))
}

#[utoipa::path(get, path = "/v1/channels/{channel_id}", tag = "channels", operation_id = "get_channel",
    params(("channel_id" = crate::schema::Identifier, Path)),
    responses((status = 200, body = ChannelView), (status = 404, body = crate::error::Problem)))]
pub(crate) async fn get_one(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ChannelView>> {
    let id = channel_id(id)?;
    let found: Option<Channel> = state.ledger().channel(id).await?;
    found
        .map(|c| Json(c.into()))
        .ok_or_else(|| ApiError::not_found("channel"))
}

/// Every channel, by id.
#[utoipa::path(get, path = "/v1/channels", tag = "channels", operation_id = "list_channels",
    responses((status = 200, body = ChannelList)))]
pub(crate) async fn list(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
) -> ApiResult<Json<ChannelList>> {
    let items = state.ledger().channels().await?;
    Ok(Json(ChannelList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// Sets per-SKU safety stock of the channel at its locations (`null` removes an
/// override, so the location's default applies again). Answers how many items
/// changed something; each is recorded as a `SAFETY_STOCK_SET` event.
#[utoipa::path(put, path = "/v1/channels/{channel_id}/safety-stock", tag = "channels", operation_id = "set_safety_stock",
    params(("channel_id" = crate::schema::Identifier, Path)), request_body = SafetyStockBody,
    responses((status = 200, body = SafetyStockView), (status = 404, body = crate::error::Problem)))]
pub(crate) async fn set_safety_stock(
    _: Auth<AdminScope>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SafetyStockBody>,
) -> ApiResult<Json<SafetyStockView>> {
    let id = channel_id(id)?;
    let items = body
        .items
        .into_iter()
        .map(|i| SafetyOverride {
            store_id: i.store_id,
            sku: i.sku,
            safety_stock: i.safety_stock,
        })
        .collect();
    let items = SafetyOverrides::new(items)?;
    let applied = state.ledger().set_safety_stock(id, items).await?;
    Ok(Json(SafetyStockView { applied }))
}

/// The channel's per-SKU safety-stock overrides in force (where none is set, the
/// location's `safety_stock` applies).
#[utoipa::path(get, path = "/v1/channels/{channel_id}/safety-stock", tag = "channels", operation_id = "get_safety_stock",
    params(("channel_id" = crate::schema::Identifier, Path)),
    responses((status = 200, body = SafetyOverrideList), (status = 404, body = crate::error::Problem)))]
pub(crate) async fn get_safety_stock(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SafetyOverrideList>> {
    let id = channel_id(id)?;
    let snapshot = state.ledger().channel_snapshot().await?;
    if !snapshot.channels.iter().any(|c| c.channel_id == id) {
        return Err(ApiError::not_found("channel"));
    }
    let mut items: Vec<SafetyOverrideView> = snapshot
        .overrides
        .into_iter()
        .filter(|o| o.channel_id == id)
        .filter_map(|o| {
            Some(SafetyOverrideView {
                safety_stock: o.safety_stock?,
                store_id: o.store_id.to_string(),
                sku: o.sku.to_string(),
                version: o.version,
            })
        })
        .collect();
    items.sort_by(|a, b| (&a.store_id, &a.sku).cmp(&(&b.store_id, &b.sku)));
    Ok(Json(SafetyOverrideList { items }))
}
