//! The event pipeline's routes: the storefront read model, consumers, replay, dead
//! letters.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use invsync_consumers::{ConsumerHandle, ConsumerStatus, ControlError, ReplayFrom};
use invsync_core::Sku;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{AdminScope, Auth, ReadScope};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{field, ApiJson, ApiPath, ApiQuery, IdemKey};
use crate::AppState;

fn unavailable(what: &str, err: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "{what} unavailable");
    ApiError::new(
        ErrorCode::Unavailable,
        format!("the {what} is unavailable; retry later"),
    )
}

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
    let limit = super::page_limit(q.limit)?;
    let after = q
        .after
        .map(|a| super::parse_pair_cursor(&a).map(|(st, sk)| (st.to_string(), sk.to_string())))
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
                .map(|r| super::pair_cursor(&r.store_id, &r.sku))
        })
        .flatten();
    Ok(Json(ViewPage { items, next }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ConsumersView {
    #[schema(value_type = Vec<Object>)]
    items: Vec<ConsumerStatus>,
    /// The visibility SLA (`--sla`) lag and latency are judged against.
    sla_seconds: f64,
}

/// Every consumer's position, lag, dead letters and sync latency.
#[utoipa::path(get, path = "/v1/consumers", tag = "consumers", operation_id = "list_consumers", responses((status = 200, body = ConsumersView)))]
pub(crate) async fn consumers(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
) -> Json<ConsumersView> {
    Json(ConsumersView {
        items: state
            .consumers()
            .iter()
            // A partition another process works is that process's to show.
            .filter(|c| !c.standing_by())
            .map(ConsumerHandle::status)
            .collect(),
        sla_seconds: state.sla().as_secs_f64(),
    })
}

/// A consumer as the overview shows it (no token needed: what `/metrics` shows too).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OverviewConsumer {
    name: String,
    position: i64,
    lag_events: i64,
    /// Age of the oldest event not applied yet, now.
    lag_seconds: f64,
    /// Whether `lag_seconds` exceeds the SLA now.
    sla_breached: bool,
    dead_letters: i64,
    parked: i64,
    /// Sync latency (`occurred_at` → applied) over the last 5 and 60 minutes.
    p50_5m_ms: Option<f64>,
    p99_5m_ms: Option<f64>,
    p50_1h_ms: Option<f64>,
    p99_1h_ms: Option<f64>,
    /// Sync latency p99 per 10-second slot of the last hour, oldest first (null:
    /// nothing applied in that slot).
    p99_series_ms: Vec<Option<f64>>,
}

/// The operator console's overview.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OverviewView {
    sla_seconds: f64,
    /// No consumer's current lag exceeds the SLA.
    sla_met: bool,
    /// From the server's last housekeeping round (every 5 s); null before the first,
    /// and in a `consume` process, which has none.
    ledger_up: Option<bool>,
    bus: &'static str,
    bus_up: Option<bool>,
    /// Events committed and not yet on the bus.
    outbox_backlog: Option<i64>,
    /// (store, sku) rows with fewer on hand than reserved.
    shortages: Option<i64>,
    /// The log's head offset at the last round.
    head_offset: Option<i64>,
    /// Reservation outcomes since this process started.
    reservations: crate::console::Outcomes,
    consumers: Vec<OverviewConsumer>,
    /// One point per housekeeping round over the last hour, oldest first.
    points: Vec<crate::console::Point>,
}

/// Is the SLA being met now, throughput and outcomes, latency over 5 and 60 minutes,
/// bus and ledger state, and the last hour's points: what the console's overview
/// shows. Needs no token (it shows what `/metrics` shows).
#[utoipa::path(get, path = "/v1/overview", tag = "operations", operation_id = "overview", security(()),
    responses((status = 200, body = OverviewView)))]
pub(crate) async fn overview(State(state): State<AppState>) -> Json<OverviewView> {
    let sla = state.sla().as_secs_f64();
    let consumers: Vec<OverviewConsumer> = state
        .consumers()
        .iter()
        .filter(|c| !c.standing_by())
        .map(|c| {
            let s = c.status();
            OverviewConsumer {
                sla_breached: s.lag_seconds > sla,
                p99_series_ms: c.latency_series(0.99).into_iter().map(|(_, v)| v).collect(),
                name: s.name,
                position: s.position,
                lag_events: s.lag_events,
                lag_seconds: s.lag_seconds,
                dead_letters: s.dead_letters,
                parked: s.parked,
                p50_5m_ms: s.sync_latency_p50_ms,
                p99_5m_ms: s.sync_latency_p99_ms,
                p50_1h_ms: s.sync_latency_1h_p50_ms,
                p99_1h_ms: s.sync_latency_1h_p99_ms,
            }
        })
        .collect();
    let (last, reservations, points) = state.console().read();
    Json(OverviewView {
        sla_seconds: sla,
        sla_met: consumers.iter().all(|c| !c.sla_breached),
        ledger_up: last.as_ref().map(|o| o.ledger_up),
        bus: state.bus_name(),
        bus_up: last.as_ref().map(|o| o.bus_up),
        outbox_backlog: last.as_ref().and_then(|o| o.backlog),
        shortages: last.as_ref().and_then(|o| o.shortages),
        head_offset: last.as_ref().map(|o| o.head),
        reservations,
        consumers,
        points,
    })
}

fn consumer<'a>(state: &'a AppState, name: &str) -> ApiResult<&'a ConsumerHandle> {
    state
        .consumers()
        .iter()
        .find(|c| c.name() == name)
        .ok_or_else(|| ApiError::not_found("consumer"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayBody {
    /// Replay from this offset (inclusive). Exactly one of `from_offset` and `since`.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "invsync_core::optional_integer")]
    from_offset: Option<i64>,
    /// Replay from the first event at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
}

/// Rewinds a consumer. A delivery consumer (`webhook`) re-delivers from the offset or
/// time; the storefront rebuilds its whole view from a ledger snapshot and the log.
#[utoipa::path(post, path = "/v1/consumers/{name}/replay", tag = "consumers", operation_id = "replay_consumer", request_body = ReplayBody,
    params(("name" = String, Path), ("Idempotency-Key" = Option<crate::schema::Identifier>, Header, description = "A retry under the same key acts once (remembered in memory for a day)")),
    responses((status = 202), (status = 404, body = crate::error::Problem),
        (status = 409, body = crate::error::Problem, description = "idempotency_conflict: the Idempotency-Key was used for another replay"),
        (status = 410, body = crate::error::Problem)))]
pub(crate) async fn replay(
    _: Auth<AdminScope>,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    IdemKey(key): IdemKey,
    ApiJson(body): ApiJson<ReplayBody>,
) -> ApiResult<StatusCode> {
    let from = match (body.from_offset, body.since) {
        (Some(offset), None) if offset >= 1 => {
            // A position past the head would silently skip every event until the log
            // reached it: refuse it.
            let head = state
                .ledger()
                .events(0, 1)
                .await
                .map_err(ApiError::from)?
                .last_offset;
            if offset > head + 1 {
                return Err(ApiError::invalid(
                    "from_offset",
                    format!(
                        "{offset} is past the head of the log ({head}); give at most {}",
                        head + 1
                    ),
                ));
            }
            ReplayFrom::Offset(offset)
        }
        (Some(offset), None) => {
            return Err(ApiError::invalid(
                "from_offset",
                format!("must be 1 or more, got {offset}"),
            ))
        }
        (None, Some(since)) => ReplayFrom::Time(since),
        _ => {
            return Err(ApiError::invalid(
                "from_offset",
                "give exactly one of from_offset and since",
            ))
        }
    };
    let handle = consumer(&state, &name)?;
    let fingerprint = format!("{name}\u{1}{:?}\u{1}{:?}", body.from_offset, body.since);
    state
        .recent()
        .once("replay", key, fingerprint, async {
            handle.replay(from).await.map_err(control_error)?;
            Ok(StatusCode::ACCEPTED)
        })
        .await
}

fn control_error(err: ControlError) -> ApiError {
    match err {
        ControlError::Gone { oldest, .. } => ApiError::gone(oldest),
        ControlError::NotFound => ApiError::not_found("dead letter"),
        ControlError::Failed(e) => unavailable("consumer", e),
        e @ (ControlError::Elsewhere(_)
        | ControlError::Redelivery(_)
        | ControlError::InvalidDeadLetter(_)
        | ControlError::Stopped) => ApiError::new(ErrorCode::Unavailable, e.to_string()),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadLetterQuery {
    /// Only this consumer's dead letters (404 when there is no such consumer).
    #[param(min_length = 1)]
    consumer: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterView {
    id: Uuid,
    consumer: String,
    offset: i64,
    #[schema(value_type = Object)]
    event: Box<RawValue>,
    attempts: i64,
    last_error: String,
    failed_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLettersView {
    items: Vec<DeadLetterView>,
}

/// Events a consumer gave up on, with the last error.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "consumers", operation_id = "list_dead_letters", params(DeadLetterQuery),
    responses((status = 200, body = DeadLettersView), (status = 404, description = "no such consumer")))]
pub(crate) async fn dead_letters(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<DeadLetterQuery>,
) -> ApiResult<Json<DeadLettersView>> {
    let handles: Vec<&ConsumerHandle> = match &q.consumer {
        Some(name) => vec![consumer(&state, name)?],
        None => state.consumers().iter().collect(),
    };
    let mut items = Vec::new();
    for handle in handles {
        let letters = handle
            .reader()
            .dead_letters()
            .await
            .map_err(|e| unavailable("consumer store", e))?;
        for d in letters {
            // A dead letter may hold bytes that are not JSON (that is why it is dead):
            // show them as a JSON string then.
            let event = RawValue::from_string(d.envelope.clone())
                .or_else(|_| {
                    RawValue::from_string(serde_json::Value::String(d.envelope).to_string())
                })
                .map_err(|e| unavailable("consumer store", e))?;
            items.push(DeadLetterView {
                id: d.id,
                consumer: d.consumer,
                offset: d.offset,
                event,
                attempts: d.attempts,
                last_error: d.last_error,
                failed_at: d.failed_at,
            });
        }
    }
    Ok(Json(DeadLettersView { items }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedriveQuery {
    /// Send it even when the endpoint already received a newer version of the same
    /// stock row (which the redriven event would then overwrite, if the receiver
    /// applies events as they come).
    force: Option<bool>,
}

/// Delivers a dead letter again, in the background; it leaves the dead letters when
/// the delivery succeeds. Refused (409) when the endpoint already received a newer
/// version of the same stock row, unless `force=true`.
#[utoipa::path(post, path = "/v1/dead-letters/{id}/redrive", tag = "consumers", operation_id = "redrive_dead_letter",
    params(("id" = Uuid, Path), RedriveQuery, ("Idempotency-Key" = Option<crate::schema::Identifier>, Header, description = "A retry under the same key acts once (remembered in memory for a day)")),
    responses((status = 202), (status = 404, body = crate::error::Problem), (status = 409, body = crate::error::Problem, description = "the endpoint already received a newer version of this stock row")))]
pub(crate) async fn redrive(
    _: Auth<AdminScope>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RedriveQuery>,
    IdemKey(key): IdemKey,
) -> ApiResult<StatusCode> {
    let id = field("id", Uuid::parse_str(&id))?;
    let force = q.force.unwrap_or(false);
    let recent = state.recent();
    recent
        .once(
            "redrive",
            key,
            format!("{id}/{force}"),
            start_redrive(&state, id, force),
        )
        .await
}

async fn start_redrive(state: &AppState, id: Uuid, force: bool) -> ApiResult<StatusCode> {
    for handle in state.consumers() {
        if handle
            .holds_dead_letter(id)
            .await
            .map_err(|e| unavailable("consumer store", e))?
        {
            let superseded = handle
                .superseded(id)
                .await
                .map_err(|e| unavailable("consumer store", e))?;
            if let (Some(s), false) = (superseded, force) {
                return Err(ApiError::new(
                    ErrorCode::VersionConflict,
                    format!(
                        "the {} endpoint already received version {} of {}/{}, newer than this dead letter's version {}: redriving it would send an older state after a newer one; add force=true to send it anyway",
                        handle.name(),
                        s.received,
                        s.store_id,
                        s.sku,
                        s.version
                    ),
                ));
            }
            let handle = handle.clone();
            tokio::spawn(async move {
                if let Err(e) = handle.redrive(id).await {
                    tracing::warn!(dead_letter.id = %id, consumer.name = handle.name(), error = %e, "redrive failed");
                }
            });
            return Ok(StatusCode::ACCEPTED);
        }
    }
    Err(ApiError::not_found("dead letter"))
}
