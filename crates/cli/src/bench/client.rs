//! One simulated client: its open reservations and the next request of its
//! workload; and the seeding of the catalogue.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{sku, store, Target, Workload};
use anyhow::bail;
use rand::Rng;
use serde_json::{json, Value};

/// One simulated client: what it has reserved and not yet released or fulfilled.
pub(super) struct Client {
    pub(super) target: Arc<Target>,
    pub(super) run: String,
    pub(super) n: u64,
    pub(super) stores: usize,
    pub(super) skus: usize,
    /// Its active reservations, oldest first: (id, units held).
    pub(super) open: VecDeque<(String, i64)>,
    /// Units its successful answers leave reserved.
    pub(super) held: i64,
    /// `channels` workload: the percentage of steps that are till sales.
    pub(super) till_sales: u8,
    /// The channel its reservations go through (`channels` workload); else each
    /// names a store.
    pub(super) channel: Option<&'static str>,
}

impl Client {
    /// One request of the workload; returns `"<operation> <status>[ <code>]"`.
    pub(super) async fn step(&mut self, workload: Workload) -> String {
        self.n += 1;
        let roll = rand::rng().random_range(0..100);
        match workload {
            Workload::Spread | Workload::Hot => self.reserve(1).await,
            Workload::Channels if roll < i32::from(self.till_sales) => {
                let (s, k) = self.pick();
                let body = json!({"store_id": store(s), "sku": sku(k), "delta": -1,
                    "reason": "sale", "channel": "bench-pos"});
                self.adjust(body, "sale").await
            }
            Workload::Channels => self.reserve(1).await,
            Workload::Mix if roll < 70 || self.open.is_empty() && roll < 95 => {
                let lines = if roll % 2 == 0 { 2 } else { 1 };
                self.reserve(lines).await
            }
            Workload::Mix if roll < 85 => self.settle("release").await,
            Workload::Mix if roll < 95 => self.settle("fulfil").await,
            Workload::Mix => {
                let (s, k) = self.pick();
                let body =
                    json!({"store_id": store(s), "sku": sku(k), "delta": 1, "reason": "stock_in"});
                self.adjust(body, "adjust").await
            }
        }
    }

    pub(super) async fn adjust(&self, body: Value, operation: &str) -> String {
        let answer = self
            .target
            .request(reqwest::Method::POST, "/v1/adjustments")
            .json(&body)
            .send()
            .await;
        describe(operation, answer).await.0
    }

    pub(super) fn pick(&self) -> (usize, usize) {
        let mut rng = rand::rng();
        (
            rng.random_range(0..self.stores),
            rng.random_range(0..self.skus),
        )
    }

    pub(super) async fn reserve(&mut self, lines: usize) -> String {
        let (s, first) = self.pick();
        let lines: Vec<Value> = (0..lines)
            .map(|i| json!({"sku": sku((first + i * 7919) % self.skus), "quantity": 1}))
            .collect();
        let units = lines.len() as i64;
        let mut body = json!({"order_id": format!("{}-{}", self.run, self.n), "lines": lines});
        if let Some(channel) = self.channel {
            body["channel"] = json!(channel);
        } else {
            body["store_id"] = json!(store(s));
        }
        let answer = self
            .target
            .request(reqwest::Method::POST, "/v1/reservations")
            .json(&body)
            .send()
            .await;
        let (key, created) = describe("reserve", answer).await;
        if let Some(id) = created.and_then(|v| v["reservation_id"].as_str().map(str::to_owned)) {
            self.open.push_back((id, units));
            self.held += units;
        }
        key
    }

    /// Releases or fulfils this client's oldest open reservation.
    pub(super) async fn settle(&mut self, action: &str) -> String {
        let Some((id, units)) = self.open.pop_front() else {
            return format!("{action} skipped");
        };
        let answer = self
            .target
            .request(
                reqwest::Method::POST,
                &format!("/v1/reservations/{id}/{action}"),
            )
            .json(&json!({}))
            .send()
            .await;
        let (key, done) = describe(action, answer).await;
        if done.is_some() {
            self.held -= units;
        } else {
            self.open.push_front((id, units));
        }
        key
    }
}

/// `"<operation> <status>[ <code>]"` and, on success, the answer's body.
async fn describe(
    operation: &str,
    answer: reqwest::Result<reqwest::Response>,
) -> (String, Option<Value>) {
    match answer {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.json::<Value>().await.ok();
            if status >= 400 {
                let code = body
                    .as_ref()
                    .and_then(|v| v["code"].as_str())
                    .unwrap_or("-");
                (format!("{operation} {status} {code}"), None)
            } else {
                (format!("{operation} {status}"), body)
            }
        }
        Err(e) => (
            format!(
                "{operation} transport error: {}",
                if e.is_connect() { "connect" } else { "other" }
            ),
            None,
        ),
    }
}

/// Sets every (store, sku) of the catalog to `stock` on hand, 1,000 per request.
pub(super) async fn seed(
    target: &Target,
    stores: usize,
    skus: usize,
    stock: i64,
) -> anyhow::Result<()> {
    let pairs: Vec<(usize, usize)> = (0..stores)
        .flat_map(|s| (0..skus).map(move |k| (s, k)))
        .collect();
    for chunk in pairs.chunks(1000) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|(s, k)| json!({"store_id": store(*s), "sku": sku(*k), "set_on_hand": stock, "reason": "cycle_count"}))
            .collect();
        let answer = target
            .json(
                reqwest::Method::POST,
                "/v1/adjustments/batch",
                Some(json!({"items": items})),
            )
            .await?;
        if let Some(err) = answer["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|r| r.get("error"))
        {
            bail!("seeding failed: {}", err["detail"]);
        }
    }
    Ok(())
}
