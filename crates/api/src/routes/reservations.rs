//! `/v1/reservations…`: the Order domain's reserve, release and fulfil.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use invsync_core::{record_key, OrderId, ReleaseReason, Reserve, Target};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::{Auth, ReadScope, ReserveScope};
use crate::error::{ApiError, ApiResult};
use crate::extract::{field, ApiJson, ApiPath, ApiQuery, IdemKey, OptionalJson};
use crate::wire::{
    lines, settle_lines, FulfilBody, ReleaseBody, ReservationList, ReservationView, ReserveBody,
};
use crate::AppState;

/// Reserves every line or none. A repeat (same `Idempotency-Key`, or same order and
/// store when no key is given) with the same body answers 200 with the original.
#[utoipa::path(post, path = "/v1/reservations", tag = "reservations", operation_id = "reserve", request_body = ReserveBody,
    params(("Idempotency-Key" = Option<crate::schema::Identifier>, Header)),
    responses((status = 201, body = ReservationView), (status = 200, description = "a repeat", body = ReservationView),
        (status = 404, description = "not_found: the channel is not configured", body = crate::error::Problem),
        (status = 409, description = "insufficient_stock (with `lines`; through a channel, `available` is the channel's availability), idempotency_conflict", body = crate::error::Problem)))]
pub(crate) async fn create(
    _: Auth<ReserveScope>,
    State(state): State<AppState>,
    IdemKey(key): IdemKey,
    ApiJson(body): ApiJson<ReserveBody>,
) -> ApiResult<(StatusCode, Json<ReservationView>)> {
    let target: Target = match (body.store_id, body.channel) {
        (Some(store), None) => store.into(),
        (None, Some(channel)) => channel.into(),
        (None, None) => {
            return Err(ApiError::invalid(
                "store_id",
                "give exactly one of store_id and channel",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "channel",
                "give exactly one of store_id and channel, not both",
            ))
        }
    };
    let cmd = Reserve::new(
        body.order_id,
        target,
        lines(body.lines),
        body.ttl_seconds,
        key,
    )?;
    let result = state.ledger().reserve(cmd).await;
    let label = match &result {
        Ok(out) if out.created => "reserved",
        Ok(_) => "replayed",
        Err(invsync_ledger::LedgerError::Domain(
            invsync_core::DomainError::InsufficientStock { .. },
        )) => "insufficient",
        Err(invsync_ledger::LedgerError::Domain(_)) => "conflict",
        Err(_) => "error",
    };
    metrics::counter!("invsync_reservations_total", "result" => label).increment(1);
    state.console().tallies.count(label);
    let out = result?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(out.reservation.into())))
}

fn reservation_id(raw: &str) -> Result<Uuid, ApiError> {
    field("reservation_id", Uuid::parse_str(raw))
}

#[utoipa::path(get, path = "/v1/reservations/{reservation_id}", tag = "reservations", operation_id = "get_reservation",
    params(("reservation_id" = Uuid, Path)),
    responses((status = 200, body = ReservationView), (status = 404, body = crate::error::Problem)))]
pub(crate) async fn get_one(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ReservationView>> {
    let id = reservation_id(&id)?;
    let found = state.ledger().reservation(id).await?;
    found
        .map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("reservation"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ByOrder {
    /// The order whose reservations to list (required).
    #[param(value_type = crate::schema::Identifier, required = true)]
    order_id: Option<String>,
}

/// Every reservation of an order (one per store, or more with idempotency keys).
#[utoipa::path(get, path = "/v1/reservations", tag = "reservations", operation_id = "list_reservations", params(ByOrder),
    responses((status = 200, body = ReservationList)))]
pub(crate) async fn list(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ByOrder>,
) -> ApiResult<Json<ReservationList>> {
    let order = q
        .order_id
        .ok_or_else(|| ApiError::invalid("order_id", "is required"))?;
    let order = field("order_id", OrderId::parse(order))?;
    let items = state.ledger().reservations_by_order(order).await?;
    Ok(Json(ReservationList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// Releases the given lines, or everything still held. Releasing a reservation that
/// holds nothing answers 200 with no event, so retries are safe.
#[utoipa::path(post, path = "/v1/reservations/{reservation_id}/release", tag = "reservations", operation_id = "release",
    params(("reservation_id" = Uuid, Path), ("Idempotency-Key" = Option<crate::schema::Identifier>, Header, description = "Makes a retry apply the write once (see api.md)")), request_body(content = Option<ReleaseBody>),
    responses((status = 200, body = ReservationView),
        (status = 409, description = "invalid_state: more than is held", body = crate::error::Problem)))]
pub(crate) async fn release(
    _: Auth<ReserveScope>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    IdemKey(key): IdemKey,
    OptionalJson(body): OptionalJson<ReleaseBody>,
) -> ApiResult<Json<ReservationView>> {
    let id = reservation_id(&id)?;
    let body = body.unwrap_or_default();
    let lines = settle_lines(body.lines)?;
    let reason = body.reason.unwrap_or(ReleaseReason::OrderCancelled);
    Ok(Json(
        state
            .ledger()
            .release(id, lines, reason, key.map(|k| record_key("release", &k)))
            .await?
            .into(),
    ))
}

/// Fulfils the given lines, or everything still held: they leave `reserved` and
/// `on_hand` together.
#[utoipa::path(post, path = "/v1/reservations/{reservation_id}/fulfil", tag = "reservations", operation_id = "fulfil",
    params(("reservation_id" = Uuid, Path), ("Idempotency-Key" = Option<crate::schema::Identifier>, Header, description = "Makes a retry apply the write once (see api.md)")), request_body(content = Option<FulfilBody>),
    responses((status = 200, body = ReservationView),
        (status = 409, description = "invalid_state, insufficient_on_hand", body = crate::error::Problem)))]
pub(crate) async fn fulfil(
    _: Auth<ReserveScope>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    IdemKey(key): IdemKey,
    OptionalJson(body): OptionalJson<FulfilBody>,
) -> ApiResult<Json<ReservationView>> {
    let id = reservation_id(&id)?;
    let lines = settle_lines(body.unwrap_or_default().lines)?;
    let key = key.map(|k| record_key("fulfil", &k));
    Ok(Json(state.ledger().fulfil(id, lines, key).await?.into()))
}
