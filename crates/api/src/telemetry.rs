//! Prometheus metrics (the process-wide recorder), and the middleware every request
//! goes through: its request id, its span, its access-log line and its duration.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often the recorder's histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Installs the process-wide recorder on first use (several servers in one test
/// process share it), with its upkeep thread. `None` if another recorder was installed
/// first.
fn handle() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .and_then(|b| b.install_recorder())
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()?;
            spawn_upkeep(handle.clone());
            describe();
            Some(handle)
        })
        .as_ref()
}

/// The version and commit this binary was built from (`commit` is `unknown` when it
/// was built outside a git checkout).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("INVSYNC_COMMIT");

/// Gives every metric of operations.md its `# HELP` line (and unit), and sets
/// `invsync_build_info{version, commit} 1`.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "invsync_build_info",
        "Always 1; the labels say which invsync is running."
    );
    metrics::gauge!("invsync_build_info", "version" => VERSION, "commit" => COMMIT).set(1.0);
    describe_counter!(
        "invsync_consumer_log_bypass_total",
        "Events a consumer read from the ledger's log because the bus stayed silent while the log moved on."
    );
    describe_counter!(
        "invsync_reservations_total",
        "Reservation requests by outcome (reserved, replayed, insufficient, conflict, error)."
    );
    describe_histogram!(
        "invsync_request_duration_seconds",
        Unit::Seconds,
        "HTTP request duration by route template and status."
    );
    describe_gauge!(
        "invsync_outbox_backlog",
        "Events committed but not yet on the bus."
    );
    describe_gauge!(
        "invsync_outbox_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest event committed but not yet on the bus."
    );
    describe_counter!(
        "invsync_bus_published_total",
        "Events the relay published to the bus."
    );
    describe_histogram!(
        "invsync_bus_publish_latency_seconds",
        Unit::Seconds,
        "Time from an event's occurred_at to the bus acknowledging its publication (the log to stream hop)."
    );
    describe_gauge!(
        "invsync_consumer_lag_events",
        "Events in the log a consumer has not applied yet."
    );
    describe_gauge!(
        "invsync_consumer_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event a consumer has not applied yet."
    );
    describe_histogram!(
        "invsync_sync_latency_seconds",
        Unit::Seconds,
        "Time from an event's occurred_at to the consumer applying it."
    );
    describe_counter!(
        "invsync_sla_breaches_total",
        "Events a consumer applied later than the visibility SLA."
    );
    describe_gauge!(
        "invsync_consumer_parked_events",
        "Events set aside because their SKU's delivery keeps failing (retried on the side; counted in the lag)."
    );
    describe_gauge!(
        "invsync_dead_letters",
        "Events a consumer gave up on, waiting for a redrive."
    );
    describe_gauge!(
        "invsync_stock_shortages",
        "(store, sku) pairs whose available is below zero."
    );
    describe_gauge!("invsync_bus_up", "1 while the event bus answers, else 0.");
    describe_gauge!(
        "invsync_consumer_sla_breached",
        "1 while a consumer's current lag exceeds the visibility SLA, else 0."
    );
    describe_gauge!("invsync_ledger_up", "1 while the ledger answers, else 0.");
    describe_gauge!(
        "invsync_ledger_server_info",
        "1 for the database server the ledger reaches now (the primary it follows), 0 for one it left."
    );
    describe_gauge!(
        "invsync_bus_server_info",
        "1 for the NATS server the bus client is connected to now, 0 for one it left."
    );
    describe_gauge!(
        "invsync_relay_leader",
        "1 on the instance that holds the relay lease (bus and shared endpoints), else 0."
    );
}

/// The recorder keeps every histogram sample in a list until something drains it into
/// the buckets: `render` does, but only when `/metrics` is scraped. A server nobody
/// scrapes would otherwise grow by 8 bytes per event applied and per request: the heap
/// profile in BENCHMARKS.md found 16.6 MB held after 1M seeding events, and the RSS of
/// a 10M-row run fell from 244 to 67 MB with this thread.
/// `install_recorder` leaves the draining to us; this thread does it every second.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics upkeep thread not started; histograms drain only when scraped");
    }
}

/// Makes sure metrics are recorded from the start (call once at server start).
pub fn init() {
    let _ = handle();
}

pub(crate) fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}

/// The header that carries a request's id, in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// The caller's `X-Request-Id` when it is a usable one (1 to 128 visible ASCII
/// characters: it goes into logs and back into a header), else a new UUID v7.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// Every request: takes or makes its request id and returns it in `X-Request-Id`,
/// runs the handler inside a span carrying it (so every log line of the request has
/// it), writes one access-log line (target `invsync::access`, INFO: method, route,
/// status, `duration_ms`; never the query, headers or body, so no token or
/// identifier leaks), and records `invsync_request_duration_seconds{route, status}`.
/// `route` is the matched route template, so label values stay bounded.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let id = request_id(&req);
    let method = req.method().clone();
    let span = tracing::info_span!("request", request.id = %id, http.method = %method, http.route = %route);
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
    span.in_scope(|| {
        tracing::event!(
            target: "invsync::access",
            tracing::Level::INFO,
            http.status = status,
            duration_ms,
            "{method} {route} {status}"
        );
    });
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    metrics::histogram!(
        "invsync_request_duration_seconds",
        "route" => route,
        "status" => status.to_string()
    )
    .record(elapsed.as_secs_f64());
    response
}
