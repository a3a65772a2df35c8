//! A server under load: the requests the bench makes besides the workload's own
//! (seeding, totals, the event audit, the channel it reserves through).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{BENCH_CHANNEL, BENCH_LOCATIONS};
use anyhow::{bail, Context};
use serde_json::{json, Value};

pub(super) fn store(i: usize) -> String {
    format!("bench-S{i}")
}

pub(super) fn sku(i: usize) -> String {
    format!("bench-{i:08}")
}

pub(super) struct Target {
    pub(super) http: reqwest::Client,
    pub(super) url: String,
    pub(super) token: Option<String>,
}

impl Target {
    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{}", self.url, path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub(super) async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.request(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = resp.status();
        let value: Value = resp
            .json()
            .await
            .with_context(|| format!("reading the answer of {path}"))?;
        if !status.is_success() {
            bail!("{path}: {status}: {}", value["detail"]);
        }
        Ok(value)
    }

    /// Waits until every consumer of the server has applied everything committed.
    pub(super) async fn wait_for_consumers(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let status = self
                .json(reqwest::Method::GET, "/v1/consumers", None)
                .await?;
            let behind: i64 = status["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["lag_events"].as_i64().unwrap_or(0))
                .sum();
            if behind == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the consumers are still {behind} events behind after seeding");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The log offset the ledger's rows are consistent with now.
    pub(super) async fn log_offset(&self) -> anyhow::Result<i64> {
        let page = self
            .json(reqwest::Method::GET, "/v1/stock/snapshot?limit=1", None)
            .await?;
        Ok(page["log_offset"].as_i64().unwrap_or(0))
    }

    /// Reads the log after `after` up to the rows' offset now, and checks every
    /// RESERVED event: it left its row at `available >= 0`, and one through the bench
    /// channel left its location at or above the channel's safety stock there.
    pub(super) async fn reserved_events(&self, after: i64) -> anyhow::Result<EventAudit> {
        let until = self.log_offset().await?;
        let safety: BTreeMap<String, i64> = BENCH_LOCATIONS
            .iter()
            .map(|(s, _, safety)| (store(*s), *safety))
            .collect();
        let mut audit = EventAudit::default();
        let mut cursor = after;
        while cursor < until {
            let page = self
                .json(
                    reqwest::Method::GET,
                    &format!("/v1/events?after={cursor}&limit=1000"),
                    None,
                )
                .await?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                bail!("the log ends at {cursor}, before the offset {until} the rows name");
            }
            for e in &events {
                cursor = e["offset"].as_i64().unwrap_or(cursor + 1);
                let d = &e["event"]["data"];
                if d["event_type"] != "RESERVED" {
                    continue;
                }
                audit.checked += 1;
                if d["reason"] == "reallocated" {
                    audit.reallocated += d["quantity"].as_i64().unwrap_or(0);
                }
                let available = d["available"].as_i64().unwrap_or(i64::MIN);
                let floor = match d["channel"].as_str() {
                    Some(BENCH_CHANNEL) => d["store_id"]
                        .as_str()
                        .and_then(|s| safety.get(s).copied())
                        .unwrap_or(0),
                    _ => 0,
                };
                if available < floor {
                    audit.violations.push(format!(
                        "offset {cursor}: {} {} left at available {available}, below {floor}",
                        d["store_id"], d["product_sku"]
                    ));
                }
            }
        }
        Ok(audit)
    }

    /// Total `reserved` over the bench catalog, checking no row is oversold.
    pub(super) async fn reserved_total(&self, stores: usize) -> anyhow::Result<(i64, usize)> {
        let mut total = 0;
        let mut oversold = 0;
        for s in 0..stores {
            let mut after: Option<String> = None;
            loop {
                let mut path = format!("/v1/stock?store_id={}&limit=1000", store(s));
                if let Some(a) = &after {
                    path.push_str(&format!("&after={}", crate::client::enc(a)));
                }
                let page = self.json(reqwest::Method::GET, &path, None).await?;
                for item in page["items"].as_array().into_iter().flatten() {
                    total += item["reserved"].as_i64().unwrap_or(0);
                    if item["available"].as_i64().unwrap_or(0) < 0 {
                        oversold += 1;
                    }
                }
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => break,
                }
            }
        }
        Ok((total, oversold))
    }
}

/// What [`Target::reserved_events`] found.
#[derive(Debug, Default)]
pub(super) struct EventAudit {
    pub(super) checked: u64,
    /// Units reserved at a new location by reallocation.
    pub(super) reallocated: i64,
    pub(super) violations: Vec<String>,
}

/// Creates (or sets again) the bench channel over the first three stores.
pub(super) async fn configure_channel(target: &Target) -> anyhow::Result<()> {
    let locations: Vec<Value> = BENCH_LOCATIONS
        .iter()
        .map(|(s, priority, safety)| {
            json!({"store_id": store(*s), "priority": priority, "safety_stock": safety})
        })
        .collect();
    let body = json!({"name": "invsync bench", "allocation": "most_available",
        "split": "by_unit", "locations": locations});
    target
        .json(
            reqwest::Method::PUT,
            &format!("/v1/channels/{BENCH_CHANNEL}"),
            Some(body),
        )
        .await
        .context("configuring the bench channel (needs the admin scope)")?;
    Ok(())
}
