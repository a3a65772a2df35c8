//! Dead letters: listed, and redriven (the policy is the consumers crate's).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use invsync_consumers::{ConsumerHandle, RedriveDecision};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{AdminScope, Auth, ReadScope};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{field, ApiPath, ApiQuery, IdemKey};
use crate::AppState;

use super::consumers::{consumer, control_error};
use super::unavailable;

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
    match invsync_consumers::redrive(state.consumers(), id, force)
        .await
        .map_err(control_error)?
    {
        RedriveDecision::Queued { .. } => Ok(StatusCode::ACCEPTED),
        RedriveDecision::NotFound => Err(ApiError::not_found("dead letter")),
        RedriveDecision::Superseded {
            consumer,
            superseded: s,
        } => Err(ApiError::new(
            ErrorCode::VersionConflict,
            format!(
                "the {consumer} endpoint already received version {} of {}/{}, newer than this dead letter's version {}: redriving it would send an older state after a newer one; add force=true to send it anyway",
                s.received, s.store_id, s.sku, s.version
            ),
        )),
    }
}
