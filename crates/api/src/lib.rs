//! invsync's HTTP API: the v1 routes of `api.md` over a [`Ledger`], with bearer-token
//! scopes, problem+json errors, Prometheus metrics and a generated OpenAPI document.
//!
//! # Layout
//!
//! - [`router`]: the axum application; [`serve`]: the server loop with connection
//!   limits, timeouts and a bounded graceful shutdown (`server.rs`).
//! - `routes`: one module per area (stock, adjustments, reservations, events, health).
//! - `wire`: request/response bodies; requests deserialize into domain types.
//! - `extract`: JSON/query/path extractors whose errors name the field at fault.
//! - [`auth`]: tokens and scopes, enforced by the `Auth<Scope>` extractor.
//! - [`error`]: `ApiError` → RFC 9457 problem+json.
//!
//! Architecture invariant: only this crate knows HTTP and JSON request shapes.
#![forbid(unsafe_code)]

pub mod auth;
pub mod console;
pub mod error;
mod extract;
pub mod openapi;
mod recent;
mod routes;
mod schema;
mod server;
pub mod telemetry;
mod wire;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use invsync_consumers::storefront::StorefrontReader;
use invsync_consumers::ConsumerHandle;
use invsync_ledger::Ledger;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;

pub use auth::{Access, Scope, TokenEntry};
pub use error::{ApiError, ErrorCode, Problem};
pub use server::{serve, ServeLimits};
pub const BODY_LIMIT: usize = extract::BODY_LIMIT;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    ledger: Arc<dyn Ledger>,
    access: Access,
    /// Reported by `/readyz`; `embedded` until other buses exist.
    bus_name: &'static str,
    /// The bus server this process is connected to now (a NATS server's name and
    /// address), as the bus's watcher last saw it; reported by `/readyz`.
    bus_server: std::sync::Mutex<Option<String>>,
    pipeline: Pipeline,
    /// Set once at shutdown: long responses (SSE streams) end when it is.
    closing: tokio::sync::watch::Sender<bool>,
    /// Idempotency-Keys of the consumer controls (replay, redrive).
    recent: recent::RecentWrites,
    console: console::Console,
}

/// The consumers running in this process, for the pipeline routes.
#[derive(Clone, Default)]
pub struct Pipeline {
    /// The visibility SLA the console and `/v1/consumers` judge lag against.
    pub sla: std::time::Duration,
    pub consumers: Vec<ConsumerHandle>,
    /// The storefront projection's reader and its consumer (for `as_of`, lag).
    pub storefront: Option<(StorefrontReader, ConsumerHandle)>,
}

impl AppState {
    pub fn new(ledger: Arc<dyn Ledger>, access: Access) -> Self {
        Self::with_pipeline(ledger, access, Pipeline::default())
    }

    pub fn with_pipeline(ledger: Arc<dyn Ledger>, access: Access, pipeline: Pipeline) -> Self {
        Self::on_bus(ledger, access, pipeline, "embedded")
    }

    /// `bus_name`: what distributes the events (`embedded`, `nats`), as `/healthz`
    /// reports it.
    pub fn on_bus(
        ledger: Arc<dyn Ledger>,
        access: Access,
        pipeline: Pipeline,
        bus_name: &'static str,
    ) -> Self {
        Self(Arc::new(Inner {
            ledger,
            access,
            bus_name,
            bus_server: std::sync::Mutex::new(None),
            pipeline,
            closing: tokio::sync::watch::Sender::new(false),
            recent: recent::RecentWrites::default(),
            console: console::Console::default(),
        }))
    }

    /// Ends every long response (the SSE streams) now and refuses to start new
    /// ones, so that a graceful shutdown is not held open by a client that never
    /// disconnects.
    pub fn close_streams(&self) {
        self.0.closing.send_replace(true);
    }

    /// Resolves once [`Self::close_streams`] was called.
    pub(crate) fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.closing.subscribe();
        async move {
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }

    pub fn ledger(&self) -> &dyn Ledger {
        self.0.ledger.as_ref()
    }

    /// The console's outcomes and chart history (housekeeping feeds it).
    pub fn console(&self) -> &console::Console {
        &self.0.console
    }

    pub(crate) fn ledger_arc(&self) -> Arc<dyn Ledger> {
        self.0.ledger.clone()
    }

    pub fn consumers(&self) -> &[ConsumerHandle] {
        &self.0.pipeline.consumers
    }

    pub(crate) fn sla(&self) -> std::time::Duration {
        self.0.pipeline.sla
    }

    pub(crate) fn storefront(&self) -> Option<&(StorefrontReader, ConsumerHandle)> {
        self.0.pipeline.storefront.as_ref()
    }

    pub(crate) fn recent(&self) -> &recent::RecentWrites {
        &self.0.recent
    }

    pub(crate) fn access(&self) -> &Access {
        &self.0.access
    }

    pub(crate) fn bus_name(&self) -> &'static str {
        self.0.bus_name
    }

    /// Records which bus server the process is connected to (`None`: none now).
    pub fn set_bus_server(&self, server: Option<String>) {
        *self.0.bus_server.lock().unwrap_or_else(|e| e.into_inner()) = server;
    }

    pub(crate) fn bus_server(&self) -> Option<String> {
        self.0
            .bus_server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    use routes::{adjustments, channels, events, reservations, stock, stream};
    let api = Router::new()
        .route("/v1/stock", get(stock::list))
        .route("/v1/stock/snapshot", get(stock::snapshot))
        .route("/v1/stock/shortages", get(stock::shortages))
        .route("/v1/events/recent", get(events::recent))
        .route("/v1/stock/{store_id}/{sku}", get(stock::get_one))
        .route("/v1/adjustments", post(adjustments::adjust))
        .route("/v1/adjustments/batch", post(adjustments::batch))
        .route(
            "/v1/reservations",
            post(reservations::create).get(reservations::list),
        )
        .route(
            "/v1/reservations/{reservation_id}",
            get(reservations::get_one),
        )
        .route(
            "/v1/reservations/{reservation_id}/release",
            post(reservations::release),
        )
        .route(
            "/v1/reservations/{reservation_id}/fulfil",
            post(reservations::fulfil),
        )
        .route("/v1/channels", get(channels::list))
        .route(
            "/v1/channels/{channel_id}",
            get(channels::get_one).put(channels::put),
        )
        .route(
            "/v1/channels/{channel_id}/safety-stock",
            get(channels::get_safety_stock).put(channels::set_safety_stock),
        )
        .route("/v1/events", get(events::list))
        .route("/v1/events/stream", get(stream::stream))
        .route("/openapi.json", get(openapi::serve));
    finish(api.merge(pipeline_routes()), state)
}

/// The routes of a consumer running as its own process (`invsync consume`): its
/// status, replay and dead letters, the storefront reads, health and metrics — no
/// ledger writes.
pub fn consumer_router(state: AppState) -> Router {
    finish(pipeline_routes(), state)
}

fn pipeline_routes() -> Router<AppState> {
    use routes::{health, pipeline};
    Router::new()
        .route(
            "/v1/storefront/availability",
            get(pipeline::storefront::availability_list),
        )
        .route(
            "/v1/storefront/availability/{sku}",
            get(pipeline::storefront::availability),
        )
        .route("/v1/storefront/rows", get(pipeline::storefront::rows))
        .route("/v1/consumers", get(pipeline::consumers::consumers))
        .route("/v1/overview", get(pipeline::consumers::overview))
        .route("/v1/whoami", get(health::whoami))
        .route(
            "/v1/consumers/{name}/replay",
            post(pipeline::consumers::replay),
        )
        .route(
            "/v1/dead-letters",
            get(pipeline::dead_letters::dead_letters),
        )
        .route(
            "/v1/dead-letters/{id}/redrive",
            post(pipeline::dead_letters::redrive),
        )
        .route("/", get(health::dashboard))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
}

/// The fallbacks and layers every router gets.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    telemetry::init();
    routes
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not accept that method",
            )
        })
        .layer(axum::middleware::from_fn(telemetry::track))
        // No answer is ever sniffed into another type (a JSON error as HTML, say).
        .layer(SetResponseHeaderLayer::overriding(
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            axum::http::HeaderValue::from_static("nosniff"),
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            axum::response::IntoResponse::into_response(ApiError::new(
                ErrorCode::Internal,
                "internal error",
            ))
        }))
        .with_state(state)
}
