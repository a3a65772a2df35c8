//! `GET /v1/events`: the event log, paged by offset.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::{Auth, ReadScope};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::wire::{EventView, EventsView, RecentEventsView};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Events with an offset above this one (default 0: from the start).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Events with offset > `after`, oldest first. 410 `gone` (with `oldest_offset`) when
/// the next one wanted is older than retention.
#[utoipa::path(get, path = "/v1/events", tag = "events", operation_id = "list_events", params(EventsQuery),
    responses((status = 200, body = EventsView), (status = 410, body = crate::error::Problem)))]
pub(crate) async fn list(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventsView>> {
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::invalid(
            "after",
            format!("must be 0 or more, got {after}"),
        ));
    }
    let limit = super::page_limit(q.limit)?;
    let page = state.ledger().events(after, limit).await?;
    if page.purged_after(after) {
        return Err(ApiError::gone(page.oldest_offset));
    }
    let next_offset = page.events.last().map_or(after, |e| e.offset);
    let events = page
        .events
        .into_iter()
        .map(event_view)
        .collect::<ApiResult<_>>()?;
    Ok(Json(EventsView {
        events,
        next_offset,
        head_offset: page.last_offset,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecentQuery {
    /// The SKU whose events to show (every store).
    #[param(value_type = crate::schema::Identifier)]
    sku: String,
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// A SKU's latest events in every store, newest first, found among the last 10,000
/// events of the log (a bounded read for the console; page `/v1/events` for all).
#[utoipa::path(get, path = "/v1/events/recent", tag = "events", operation_id = "recent_events", params(RecentQuery),
    responses((status = 200, body = RecentEventsView)))]
pub(crate) async fn recent(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RecentQuery>,
) -> ApiResult<Json<RecentEventsView>> {
    let sku = crate::extract::field("sku", invsync_core::Sku::parse(q.sku))?;
    let limit = match q.limit {
        None => 20,
        Some(n @ 1..=100) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "limit",
                format!("must be from 1 to 100, got {n}"),
            ))
        }
    };
    let events = state.ledger().recent_events_of(sku, limit).await?;
    Ok(Json(RecentEventsView {
        events: events
            .into_iter()
            .map(event_view)
            .collect::<ApiResult<_>>()?,
        window: invsync_ledger::RECENT_WINDOW,
    }))
}

/// A logged event as the API shows it (its envelope as stored).
fn event_view(e: invsync_ledger::LoggedEvent) -> ApiResult<EventView> {
    let event = RawValue::from_string(e.envelope).map_err(|err| {
        tracing::error!(log.offset = e.offset, error = %err, "stored envelope is not JSON");
        ApiError::new(crate::error::ErrorCode::Internal, "internal error")
    })?;
    Ok(EventView {
        offset: e.offset,
        event,
    })
}
