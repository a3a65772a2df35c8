//! `POST /v1/adjustments[/batch]`: external systems' stock-in, stock-out and counts.

use axum::extract::State;
use axum::Json;
use invsync_core::record_key;

use crate::auth::{AdjustScope, Auth};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, IdemKey};
use crate::wire::{
    AdjustmentBatchBody, AdjustmentBody, AdjustmentView, BatchResult, BatchView, MAX_BATCH,
};
use crate::AppState;

/// Applies one adjustment (`delta` or `set_on_hand`).
#[utoipa::path(post, path = "/v1/adjustments", tag = "adjustments", operation_id = "adjust", request_body = AdjustmentBody,
    params(("Idempotency-Key" = Option<crate::schema::Identifier>, Header, description = "Makes a retry apply the write once (see api.md)")),
    responses((status = 200, body = AdjustmentView),
        (status = 409, description = "insufficient_on_hand, version_conflict, idempotency_conflict", body = crate::error::Problem)))]
pub(crate) async fn adjust(
    _: Auth<AdjustScope>,
    State(state): State<AppState>,
    IdemKey(key): IdemKey,
    ApiJson(body): ApiJson<AdjustmentBody>,
) -> ApiResult<Json<AdjustmentView>> {
    let mut cmd = body.into_command("")?;
    cmd.idempotency_key = key.map(|k| record_key("adjust", &k));
    Ok(Json(state.ledger().adjust(cmd).await?.into()))
}

/// Applies up to 1,000 adjustments, each atomically on its own, answering in order.
/// A malformed item refuses the whole batch (nothing is applied); business refusals
/// are answered per item.
#[utoipa::path(post, path = "/v1/adjustments/batch", tag = "adjustments", operation_id = "adjust_batch", request_body = AdjustmentBatchBody,
    params(("Idempotency-Key" = Option<crate::schema::Identifier>, Header, description = "Makes a retry apply the write once (see api.md)")),
    responses((status = 200, body = BatchView)))]
pub(crate) async fn batch(
    _: Auth<AdjustScope>,
    State(state): State<AppState>,
    IdemKey(key): IdemKey,
    ApiJson(body): ApiJson<AdjustmentBatchBody>,
) -> ApiResult<Json<BatchView>> {
    if body.items.is_empty() || body.items.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "items",
            format!(
                "must hold 1 to {MAX_BATCH} adjustments, got {}",
                body.items.len()
            ),
        ));
    }
    let cmds = body
        .items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let mut cmd = item.into_command(&format!("items[{i}]."))?;
            // Each item is recorded on its own: a retried batch applies each item
            // once, and an item refused before is tried again.
            cmd.idempotency_key = key.as_ref().map(|k| record_key(&format!("batch#{i}"), k));
            Ok(cmd)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let results = state
        .ledger()
        .adjust_many(cmds)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(outcome) => BatchResult::Ok(outcome.into()),
            Err(err) => BatchResult::Error(ApiError::from(err).problem().clone()),
        })
        .collect();
    Ok(Json(BatchView { results }))
}
