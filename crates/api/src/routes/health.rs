//! Liveness, readiness, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz", security(()),
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// The ledger answers (503 otherwise); reports the bus in use, and where this
/// instance is connected: the database server it reached (with several hosts, the
/// primary it follows) and the bus server.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz", security(()),
    responses((status = 200, description = "`{\"status\": \"ready\", \"ledger\": \"up\", \"ledger_server\": \"10.0.0.5:5432\"|null, \"bus\": \"nats\", \"bus_server\": \"nats2 127.0.0.1:4222\"|null}`", body = Object),
        (status = 503, description = "the ledger does not answer", body = Object, content_type = "application/json")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ping = state.ledger().ping().await;
    let (status, ready, ledger) = match &ping {
        Ok(()) => (StatusCode::OK, "ready", "up"),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "down")
        }
    };
    (
        status,
        Json(json!({
            "status": ready,
            "ledger": ledger,
            "ledger_server": state.ledger().server(),
            "bus": state.bus_name(),
            "bus_server": state.bus_server(),
        })),
    )
}

/// Prometheus metrics (text exposition format 0.0.4), every one with `# HELP`.
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics", security(()),
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain; version=0.0.4")))]
pub(crate) async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
}

/// Who the bearer token (if any) belongs to and what it may do: lets the console say
/// which of its parts the token opens. Needs no token; a token the server does not
/// know is 401.
#[utoipa::path(get, path = "/v1/whoami", tag = "operations", operation_id = "whoami", security(()),
    responses((status = 200, body = crate::auth::Identity), (status = 401, body = crate::error::Problem)))]
pub(crate) async fn whoami(
    State(state): State<AppState>,
    parts: axum::http::request::Parts,
) -> Result<Json<crate::auth::Identity>, crate::error::ApiError> {
    crate::auth::identify(&state, &parts).map(Json)
}

const DASHBOARD: &str = include_str!("../static/dashboard.html");

/// The operator console: a static page that reads `/v1/overview` (no token needed),
/// and, with a token the operator signs in with (`/v1/whoami` says what it opens),
/// the consumers, dead letters, stock, orders and shortages; it redrives and replays
/// with an admin token.
/// Served with a Content-Security-Policy that allows only its own inline script and
/// style (by hash) and requests to this server, and that no site may frame it.
#[utoipa::path(get, path = "/", tag = "operations", operation_id = "dashboard", security(()),
    responses((status = 200, description = "the operator console", body = String, content_type = "text/html; charset=utf-8")))]
pub(crate) async fn dashboard() -> impl IntoResponse {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let csp = CSP.get_or_init(|| content_security_policy(DASHBOARD));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, csp.as_str()),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        DASHBOARD,
    )
}

/// A policy allowing exactly the page's inline `<script>` and `<style>` blocks, by
/// their SHA-256, so that nothing injected into the page could run.
fn content_security_policy(page: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let hashes = |tag: &str| -> String {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        page.split(open.as_str())
            .skip(1)
            .filter_map(|rest| rest.split(close.as_str()).next())
            .map(|body| {
                let digest = Sha256::digest(body.as_bytes());
                format!(
                    " 'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(digest)
                )
            })
            .collect()
    };
    format!(
        "default-src 'none'; script-src{}; style-src{}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes("script"),
        hashes("style")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_policy_names_each_inline_block_by_hash() {
        let csp = super::content_security_policy("<style>a{}</style><script>x()</script>");
        // echo -n 'x()' | openssl dgst -sha256 -binary | base64
        assert!(
            csp.contains("script-src 'sha256-D6IGS8VMvCoyaR/l0h9tERrBTATY01CoPS7l6xDv0kI='"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }
}
