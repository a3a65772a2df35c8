//! `invsync demo`: the embedded server with a shop around it, so that the console has
//! something to show from the first minute.
//!
//! - **Catalogue:** a warehouse (`WH1`) and four stores (`S1`–`S4`), 300 SKUs, the
//!   channels `online` (the warehouse first, then two stores above a safety stock of 2)
//!   and `pos-S1` (the first store's tills).
//! - **A webhook receiver** standing in for an external inventory system, on a
//!   loopback port. It answers within tens of milliseconds, but is sometimes slow
//!   (up to 1.5 s). It is down (503) for 20 s of every 2 minutes, which the console
//!   shows as an SLA breach (the demo's SLA is 10 s) that clears by itself. It
//!   refuses one SKU, `MUG-RECALLED`, for good (422), which makes dead letters to
//!   redrive.
//! - **Traffic**, about 20 commands a second:
//!   - online orders through the channel, some with a TTL short enough to expire;
//!   - click-and-collect orders at a store;
//!   - cancellations and fulfilments of earlier orders;
//!   - till sales;
//!   - deliveries into the warehouse;
//!   - cycle counts.
//!
//! Everything goes through the public HTTP API, as a real client's would.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::http::StatusCode;
use clap::Args;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::{json, Value};

use crate::config::{Config, ServeArgs};

/// The SKU the demo's receiver refuses.
pub const RECALLED: &str = "MUG-RECALLED";
const STORES: [&str; 4] = ["S1", "S2", "S3", "S4"];
const WAREHOUSE: &str = "WH1";
/// The receiver is down for `OUTAGE` of every `CYCLE`.
const CYCLE: Duration = Duration::from_secs(120);
const OUTAGE: Duration = Duration::from_secs(20);

/// The flags of `invsync demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// HTTP address of the console and API (loopback only; default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the demo's embedded ledger (default ./invsync-demo). Running the
    /// demo again on it carries on from where it stopped.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
}

/// The demo's configuration: `serve`'s, with the receiver as its webhook endpoint.
pub fn config(args: &DemoArgs, webhook_url: &str) -> Result<Config, crate::config::ConfigError> {
    let serve = ServeArgs {
        listen: args.listen.clone(),
        data_dir: Some(
            args.data_dir
                .clone()
                .unwrap_or_else(|| "invsync-demo".into()),
        ),
        webhook_url: Some(webhook_url.to_owned()),
        webhook_secret: Some("invsync-demo-webhook-secret".to_owned()),
        sla: Some("10s".to_owned()),
        // Retries at most 2 s apart, so that the console shows the receiver's
        // recovery within seconds of it (the default backs off up to 30 s).
        webhook_retry_cap: Some("2s".to_owned()),
        deployment: Some("demo".to_owned()),
        ..ServeArgs::default()
    };
    let config = Config::resolve_with(serve, "127.0.0.1:8080")?;
    if !config.listen.ip().is_loopback() {
        return Err(crate::config::bad(
            "listen",
            format!(
                "the demo serves without tokens, so on loopback only (got {})",
                config.listen
            ),
        ));
    }
    Ok(config)
}

/// Runs the demo until Ctrl-C (or SIGTERM).
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let receiver = start_receiver().await?;
    let config =
        config(&args, &format!("http://{receiver}/hook")).map_err(|e| anyhow::anyhow!(e))?;
    let (listening, address) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(crate::serve::run_reporting(config, listening));
    let Ok(address) = address.await else {
        // The server stopped before it listened: its error says why.
        return server.await.context("the demo's server")?;
    };
    let url = format!("http://{address}");
    let banner = format!(
        "invsync demo: open the console at {url}/\n\
         \n\
         A shop runs against it: a warehouse ({WAREHOUSE}) and four stores, 300 SKUs, the\n\
         channels `online` and `pos-S1`, about 20 orders, cancellations, expiries, till sales,\n\
         deliveries and counts a second. Each change goes to the storefront view and to a\n\
         webhook receiver at http://{receiver}/hook that is sometimes slow, down for 20 s of\n\
         every 2 minutes (the console shows the SLA breach, then its recovery) and refuses\n\
         {RECALLED} (dead letters to redrive). The API is at {url}/v1/… (OpenAPI:\n\
         {url}/openapi.json). Ctrl-C stops it."
    );
    // The banner is a courtesy: a stdout that is closed (`invsync demo | head -1`, a
    // reader that went away) must not stop the server and the shop, so a failed write
    // is reported, not a panic as `println!` would make it.
    if let Err(error) = writeln!(std::io::stdout().lock(), "{banner}") {
        let _ = writeln!(
            std::io::stderr(),
            "invsync demo: cannot print to stdout ({error}); the console is at {url}/"
        );
    }
    let traffic = tokio::spawn(simulate(url));
    let outcome = server.await.context("the demo's server")?;
    traffic.abort();
    outcome
}

/// Starts the flaky receiver on a loopback port; returns its address.
async fn start_receiver() -> anyhow::Result<SocketAddr> {
    let started = Instant::now();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: Bytes| receive(started, body)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo's webhook receiver")?;
    let address = listener.local_addr().context("the receiver's address")?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// What the receiver answers an event: see the module's documentation.
async fn receive(started: Instant, body: Bytes) -> (StatusCode, &'static str) {
    let event: Value = serde_json::from_slice(&body).unwrap_or_default();
    if event["data"]["product_sku"] == RECALLED {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown product: recalled",
        );
    }
    let phase = started.elapsed().as_secs() % CYCLE.as_secs();
    if phase >= (CYCLE - OUTAGE).as_secs() {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance");
    }
    let pause = {
        let mut rng = rand::rng();
        if rng.random_bool(0.03) {
            // Slow, but within the 2 s after which a delivery is parked.
            Duration::from_millis(rng.random_range(300..1500))
        } else {
            Duration::from_millis(rng.random_range(5..40))
        }
    };
    tokio::time::sleep(pause).await;
    (StatusCode::OK, "ok")
}

/// The catalogue's SKUs: six families, five colours, ten variants.
fn catalogue() -> Vec<String> {
    let mut skus = Vec::with_capacity(300);
    for family in ["TEE", "HOODIE", "CAP", "SOCKS", "JEANS", "MUG"] {
        for colour in ["BLK", "WHT", "RED", "NVY", "GRN"] {
            for variant in 1..=10 {
                skus.push(format!("{family}-{colour}-{variant:02}"));
            }
        }
    }
    skus
}

/// One shop's traffic against the API at `url`, until aborted.
async fn simulate(url: String) {
    let shop = Shop {
        http: reqwest::Client::new(),
        url,
        skus: Arc::new(catalogue()),
        run: format!("{:04X}", rand::rng().random_range(0..0x10000)),
    };
    // The server may still be opening its consumers: retry the set-up until it takes.
    while let Err(error) = shop.set_up().await {
        tracing::warn!(%error, "demo: setting up the catalogue failed; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut open: VecDeque<String> = VecDeque::new();
    let mut n: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        n += 1;
        if let Err(error) = shop.step(n, &mut open).await {
            tracing::debug!(%error, "demo: a command failed");
        }
    }
}

struct Shop {
    http: reqwest::Client,
    url: String,
    skus: Arc<Vec<String>>,
    /// This run's mark in order ids, so that a demo started again on the same data
    /// places new orders rather than repeat (and conflict with) the last run's.
    run: String,
}

impl Shop {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let answer = self
            .http
            .request(method, format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await?;
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or_default();
        if status.is_success() {
            Ok(body)
        } else {
            Err(anyhow::anyhow!("{path}: {status}: {}", body["detail"]))
        }
    }

    /// Stock everywhere (counts, so a second run starts from the same levels), the
    /// two channels, and the recalled SKU.
    async fn set_up(&self) -> anyhow::Result<()> {
        let mut items = Vec::new();
        {
            let mut rng = rand::rng();
            for sku in self.skus.iter() {
                items.push(json!({"store_id": WAREHOUSE, "sku": sku,
                    "set_on_hand": rng.random_range(20..80), "reason": "cycle_count"}));
                // At least one: a count of zero where no stock row exists yet is no
                // change, and every store carries the whole catalogue from the start
                // (sales take some of it to zero later).
                for store in STORES {
                    items.push(json!({"store_id": store, "sku": sku,
                        "set_on_hand": rng.random_range(1..25), "reason": "cycle_count"}));
                }
            }
        }
        for chunk in items.chunks(1000) {
            self.send(
                reqwest::Method::POST,
                "/v1/adjustments/batch",
                json!({"items": chunk}),
            )
            .await?;
        }
        let online = json!({"allocation": "priority", "split": "by_unit", "locations": [
            {"store_id": WAREHOUSE, "priority": 1},
            {"store_id": "S1", "priority": 2, "safety_stock": 2},
            {"store_id": "S2", "priority": 3, "safety_stock": 2}]});
        self.send(reqwest::Method::PUT, "/v1/channels/online", online)
            .await?;
        let pos = json!({"allocation": "priority", "split": "none",
            "locations": [{"store_id": "S1", "safety_stock": 0}]});
        self.send(reqwest::Method::PUT, "/v1/channels/pos-S1", pos)
            .await?;
        self.recalled_delivery().await
    }

    /// A delivery of the recalled SKU: its event is refused by the receiver.
    async fn recalled_delivery(&self) -> anyhow::Result<()> {
        let body =
            json!({"store_id": WAREHOUSE, "sku": RECALLED, "delta": 5, "reason": "stock_in"});
        self.send(reqwest::Method::POST, "/v1/adjustments", body)
            .await?;
        Ok(())
    }

    /// One command, drawn at random: see the module's documentation for the mix.
    async fn step(&self, n: u64, open: &mut VecDeque<String>) -> anyhow::Result<()> {
        if n.is_multiple_of(600) {
            return self.recalled_delivery().await;
        }
        let (roll, order) = {
            let mut rng = rand::rng();
            let roll: u32 = rng.random_range(0..100);
            let count = rng.random_range(1..=3);
            let lines: Vec<Value> = self
                .skus
                .choose_multiple(&mut rng, count)
                .map(|sku| json!({"sku": sku, "quantity": rng.random_range(1..=2)}))
                .collect();
            // A quarter of online orders are abandoned carts that expire.
            let ttl = if rng.random_bool(0.25) {
                rng.random_range(10..30)
            } else {
                900
            };
            let store = STORES.choose(&mut rng).copied().unwrap_or("S1");
            (roll, (lines, ttl, store))
        };
        let (lines, ttl, store) = order;
        match roll {
            0..45 => {
                let body = json!({"order_id": format!("WEB-{}-{n}", self.run), "channel": "online",
                    "lines": lines, "ttl_seconds": ttl});
                self.reserved(
                    self.send(reqwest::Method::POST, "/v1/reservations", body)
                        .await?,
                    open,
                );
            }
            45..60 => {
                let body = json!({"order_id": format!("CC-{}-{n}", self.run), "store_id": store,
                    "lines": lines, "ttl_seconds": 1800});
                self.reserved(
                    self.send(reqwest::Method::POST, "/v1/reservations", body)
                        .await?,
                    open,
                );
            }
            60..72 => {
                if let Some(id) = open.pop_back() {
                    let path = format!("/v1/reservations/{id}/release");
                    self.send(
                        reqwest::Method::POST,
                        &path,
                        json!({"reason": "order_cancelled"}),
                    )
                    .await?;
                }
            }
            72..84 => {
                if let Some(id) = open.pop_front() {
                    let path = format!("/v1/reservations/{id}/fulfil");
                    self.send(reqwest::Method::POST, &path, json!({})).await?;
                }
            }
            84..94 => {
                let sku = lines[0]["sku"].clone();
                let body = json!({"store_id": store, "sku": sku, "delta": -1, "reason": "sale",
                    "channel": format!("pos-{store}")});
                self.send(reqwest::Method::POST, "/v1/adjustments", body)
                    .await?;
            }
            94..98 => {
                let sku = lines[0]["sku"].clone();
                let units = rand::rng().random_range(10..40);
                let body = json!({"store_id": WAREHOUSE, "sku": sku, "delta": units, "reason": "stock_in"});
                self.send(reqwest::Method::POST, "/v1/adjustments", body)
                    .await?;
            }
            _ => {
                let sku = lines[0]["sku"].clone();
                let count = rand::rng().random_range(0..20);
                let body = json!({"store_id": store, "sku": sku, "set_on_hand": count, "reason": "cycle_count"});
                self.send(reqwest::Method::POST, "/v1/adjustments", body)
                    .await?;
            }
        }
        Ok(())
    }

    /// Keeps the new reservation's id for a later cancellation or fulfilment (at most
    /// 500 of them).
    fn reserved(&self, answer: Value, open: &mut VecDeque<String>) {
        if let Some(id) = answer["reservation_id"].as_str() {
            open.push_back(id.to_owned());
            if open.len() > 500 {
                open.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_300_distinct_valid_skus() {
        let skus = catalogue();
        assert_eq!(skus.len(), 300);
        let distinct: std::collections::HashSet<_> = skus.iter().collect();
        assert_eq!(distinct.len(), 300);
        for sku in &skus {
            invsync_core::Sku::parse(sku.clone()).unwrap_or_else(|e| panic!("{sku}: {e}"));
        }
    }

    #[test]
    fn the_demo_refuses_to_listen_beyond_loopback() {
        let args = DemoArgs {
            listen: Some("0.0.0.0:8080".into()),
            data_dir: None,
        };
        let error = config(&args, "http://127.0.0.1:9/hook")
            .err()
            .map(|e| e.key);
        assert_eq!(error.as_deref(), Some("listen"));
    }
}
