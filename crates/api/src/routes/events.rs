//! `GET /v1/events`: the event log, paged by offset.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::{Auth, ReadScope};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::wire::{EventView, EventsView};
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
        .map(|e| {
            let event = RawValue::from_string(e.envelope).map_err(|err| {
                tracing::error!(log.offset = e.offset, error = %err, "stored envelope is not JSON");
                ApiError::new(crate::error::ErrorCode::Internal, "internal error")
            })?;
            Ok(EventView {
                offset: e.offset,
                event,
            })
        })
        .collect::<ApiResult<_>>()?;
    Ok(Json(EventsView {
        events,
        next_offset,
        head_offset: page.last_offset,
    }))
}
