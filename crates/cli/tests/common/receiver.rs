//! A webhook receiver that checks what invsync sends (signature, headers) with its
//! own code, and records what it accepted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::BIN;

pub const SECRET: &str = "test-webhook-secret-0123";
/// What the receiver saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Accepted deliveries in arrival order: (event_id, store, sku, version).
    pub accepted: Vec<(String, String, String, i64)>,
    pub requests: usize,
    pub bad_signatures: usize,
    /// Requests that reached `/elsewhere`, where redirects point.
    pub redirected_hits: usize,
    /// Per accepted delivery, in arrival order: (event_id, sku, milliseconds from the
    /// event's `time` to its arrival here).
    pub latency_ms: Vec<(String, String, f64)>,
}

/// How the receiver answers.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// 503 until then.
    pub unavailable_until: Option<Instant>,
    /// 422 for events whose `external_ref` is this.
    pub reject_ref: Option<String>,
    /// Pause before answering (a slow receiver).
    pub delay: Duration,
    /// For events whose `external_ref` is the key, answer this redirect status with
    /// `Location: /elsewhere` (which counts whatever reaches it).
    pub redirect_refs: std::collections::HashMap<String, u16>,
    /// Events of this SKU are refused: 503 until the first instant, then no answer
    /// at all (the request hangs) until the second.
    pub stuck_sku: Option<(String, Instant, Instant)>,
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub seen: Arc<Mutex<Seen>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
}

impl Receiver {
    pub async fn start(self) -> String {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .route("/elsewhere", axum::routing::get(elsewhere).post(elsewhere))
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    pub fn accepted_ids(&self) -> HashSet<String> {
        self.seen
            .lock()
            .unwrap()
            .accepted
            .iter()
            .map(|a| a.0.clone())
            .collect()
    }
}

async fn elsewhere(State(r): State<Receiver>) -> &'static str {
    r.seen.lock().unwrap().redirected_hits += 1;
    "ok"
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (delay, unavailable, reject, b_redirects, stuck) = {
        let b = r.behaviour.lock().unwrap();
        (
            b.delay,
            b.unavailable_until.is_some_and(|t| Instant::now() < t),
            b.reject_ref.clone(),
            b.redirect_refs.clone(),
            b.stuck_sku.clone(),
        )
    };
    tokio::time::sleep(delay).await;
    let arrived = chrono::Utc::now();
    // Verify independently of invsync's own code: HMAC-SHA256 of the exact body.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let event: Value = serde_json::from_slice(&body).unwrap_or_default();
    if let Some((sku, refusing, hanging)) = stuck {
        if event["data"]["product_sku"].as_str() == Some(sku.as_str()) {
            let now = Instant::now();
            if now < refusing {
                return (StatusCode::SERVICE_UNAVAILABLE, "this SKU is not now").into_response();
            }
            if now < hanging {
                tokio::time::sleep(hanging - now).await;
                return (StatusCode::SERVICE_UNAVAILABLE, "too late").into_response();
            }
        }
    }
    let mut seen = r.seen.lock().unwrap();
    seen.requests += 1;
    let signed = headers
        .get("x-invsync-signature")
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str());
    let id_matches = headers
        .get("x-invsync-event-id")
        .and_then(|v| v.to_str().ok())
        == event["id"].as_str();
    let cloudevents = headers.get("content-type").and_then(|v| v.to_str().ok())
        == Some("application/cloudevents+json");
    if !(signed && id_matches && cloudevents) {
        seen.bad_signatures += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    if unavailable {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response();
    }
    let d = &event["data"];
    if reject.is_some() && d["external_ref"].as_str() == reject.as_deref() {
        return (StatusCode::UNPROCESSABLE_ENTITY, "unknown location").into_response();
    }
    let redirect = d["external_ref"]
        .as_str()
        .and_then(|r| b_redirects.get(r).copied());
    if let Some(status) = redirect {
        let status = StatusCode::from_u16(status).unwrap();
        return (
            status,
            [(axum::http::header::LOCATION, "/elsewhere")],
            "moved",
        )
            .into_response();
    }
    let occurred = event["time"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            (arrived - t.with_timezone(&chrono::Utc))
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e3
        })
        .unwrap_or(f64::NAN);
    seen.latency_ms.push((
        event["id"].as_str().unwrap().to_owned(),
        d["product_sku"].as_str().unwrap().to_owned(),
        occurred,
    ));
    seen.accepted.push((
        event["id"].as_str().unwrap().to_owned(),
        d["store_id"].as_str().unwrap().to_owned(),
        d["product_sku"].as_str().unwrap().to_owned(),
        d["version"].as_i64().unwrap(),
    ));
    (StatusCode::OK, "ok").into_response()
}

pub fn webhook_flags(url: &str) -> Vec<String> {
    vec![
        "--webhook-url".into(),
        url.into(),
        "--webhook-secret".into(),
        SECRET.into(),
    ]
}

/// `serve` flags for PostgreSQL, NATS and a webhook to `receiver` (started here).
pub async fn postgres_nats_webhook_flags(
    pg: &invsync_testkit::Postgres,
    nats: &invsync_testkit::Nats,
    receiver: &Receiver,
) -> Vec<String> {
    let hook = receiver.clone().start().await;
    let mut flags = vec![
        "--database-url".to_owned(),
        pg.url(),
        "--bus".to_owned(),
        nats.url(),
    ];
    flags.extend(webhook_flags(&hook));
    flags
}

pub fn args(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// Every accepted delivery of each (store, sku) came in version order.
pub fn assert_per_sku_order(seen: &Seen) {
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    for (_, store, sku, version) in &seen.accepted {
        let previous = last
            .insert((store.clone(), sku.clone()), *version)
            .unwrap_or(0);
        assert!(
            *version > previous,
            "{store}/{sku}: version {version} delivered after {previous}"
        );
    }
}

/// The first arrival of each event, per (store, sku), came in version order (an event
/// may arrive again after a crash: at least once, deduplicated by id).
pub fn assert_first_arrivals_in_order(seen: &Seen) {
    let mut first = HashSet::new();
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    for (id, store, sku, version) in &seen.accepted {
        if !first.insert(id.clone()) {
            continue;
        }
        let previous = last
            .insert((store.clone(), sku.clone()), *version)
            .unwrap_or(0);
        assert!(
            *version > previous,
            "{store}/{sku}: version {version} first arrived after {previous}"
        );
    }
}

/// Runs `invsync check` against the server and requires it to pass.
/// Runs `invsync check` and requires it to pass; returns its report.
pub fn assert_check_passes(url: &str) -> String {
    let out = std::process::Command::new(BIN)
        .args(["check", "--url", url])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}");
    report
}
