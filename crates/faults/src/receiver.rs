//! The webhook receivers: one HTTP server for every endpoint, recording each delivery
//! with its arrival time and the instance that made it (the last segment of the path
//! each instance was configured with: `/shop/i0`, `/erp/erp-m1`). It answers 200 after
//! a short, varying pause, so that deliveries are in flight when a fault strikes.
//!
//! It checks the fencing token as a careful receiver would: it keeps the highest
//! `X-Invsync-Lease-Epoch` seen per (endpoint, `X-Invsync-Lease`) and refuses (409) a
//! request with a lower one — a deposed holder's request that was already on its way
//! when it froze. Refused requests are recorded apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// One delivery as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub endpoint: String,
    pub sender: String,
    pub arrived: DateTime<Utc>,
    pub event_id: String,
    pub store: String,
    pub sku: String,
    pub version: i64,
    /// The event's own time (its commit).
    pub occurred: Option<DateTime<Utc>>,
    /// The fencing token: the lease the sender worked under, and its epoch.
    pub lease: Option<(String, i64)>,
}

#[derive(Default)]
struct Seen {
    accepted: Vec<Delivery>,
    refused: Vec<Delivery>,
    /// Highest epoch per (endpoint, lease).
    epochs: HashMap<(String, String), i64>,
}

#[derive(Clone, Default)]
pub struct Receiver {
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    /// Serves on a free port; returns the base URL.
    pub async fn start(&self) -> Result<String> {
        let app = axum::Router::new()
            .route("/{endpoint}/{sender}", axum::routing::post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(url)
    }

    /// Accepted deliveries, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .accepted
            .clone()
    }

    /// Requests refused for a stale fencing token.
    pub fn refused(&self) -> Vec<Delivery> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused
            .clone()
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

async fn receive(
    State(r): State<Receiver>,
    Path((endpoint, sender)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let arrived = Utc::now();
    let Ok(envelope) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let data = &envelope["data"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let delivery = Delivery {
        endpoint,
        sender,
        arrived,
        event_id: text(&envelope["id"]),
        store: text(&data["store_id"]),
        sku: text(&data["product_sku"]),
        version: data["version"].as_i64().unwrap_or(-1),
        occurred: envelope["time"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        lease: header(&headers, "x-invsync-lease")
            .zip(header(&headers, "x-invsync-lease-epoch").and_then(|e| e.parse().ok())),
    };
    {
        let mut seen = r.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((lease, epoch)) = &delivery.lease {
            let top = seen
                .epochs
                .entry((delivery.endpoint.clone(), lease.clone()))
                .or_insert(*epoch);
            if *epoch < *top {
                seen.refused.push(delivery);
                return StatusCode::CONFLICT;
            }
            *top = *epoch;
        }
        seen.accepted.push(delivery);
    }
    // 0–4 ms: a receiver doing some work, so deliveries overlap faults.
    let pause = u64::from(arrived.timestamp_subsec_micros() % 5);
    tokio::time::sleep(Duration::from_millis(pause)).await;
    StatusCode::OK
}
