//! The consumers: their status, the operator overview, and replay.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use invsync_consumers::{ConsumerHandle, ConsumerStatus, ControlError, ReplayFrom};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{AdminScope, Auth, ReadScope};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{ApiJson, ApiPath, IdemKey};
use crate::AppState;

use super::unavailable;

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

pub(super) fn consumer<'a>(state: &'a AppState, name: &str) -> ApiResult<&'a ConsumerHandle> {
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

pub(super) fn control_error(err: ControlError) -> ApiError {
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
