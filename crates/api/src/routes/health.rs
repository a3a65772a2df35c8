//! Liveness, readiness, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::AppState;

/// The process is up.
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// The ledger answers (503 otherwise); reports the bus in use.
pub(crate) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.ledger().ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "ledger": "up", "bus": state.bus_name()})),
        ),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "ledger": "down", "bus": state.bus_name()})),
            )
        }
    }
}

pub(crate) async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
}

pub(crate) async fn openapi(_: crate::auth::Auth<crate::auth::ReadScope>) -> impl IntoResponse {
    Json(crate::openapi::document())
}

/// The operator dashboard: a static page that reads `/v1/consumers`, `/metrics` and
/// `/v1/dead-letters` (with a token the operator pastes, when tokens are configured).
pub(crate) async fn dashboard() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../static/dashboard.html"),
    )
}
