//! The visibility probe: how long a change takes to show in the storefront.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Target;
use anyhow::bail;
use serde_json::json;

const PROBE_STORE: &str = "bench-probe";
const PROBE_SKU: &str = "bench-probe";

/// Samples visibility until `deadline`: reserves one unit of the probe SKU, then polls
/// the storefront until its availability reflects it. Only the probe reserves that
/// SKU, so availability falls by exactly one per sample.
pub(super) async fn probe_visibility(
    target: Arc<Target>,
    deadline: Instant,
    run_id: u64,
) -> anyhow::Result<Vec<f64>> {
    let answer = target
        .json(reqwest::Method::POST, "/v1/adjustments", Some(json!({"store_id": PROBE_STORE, "sku": PROBE_SKU, "set_on_hand": 1_000_000, "reason": "cycle_count"})))
        .await?;
    let mut expected = answer["available"].as_i64().unwrap_or(0);
    let path = format!("/v1/storefront/availability/{PROBE_SKU}");
    let mut samples = Vec::new();
    let mut n = 0;
    while Instant::now() < deadline {
        let body = json!({"order_id": format!("probe-{run_id:x}-{n}"), "store_id": PROBE_STORE, "lines": [{"sku": PROBE_SKU, "quantity": 1}]});
        n += 1;
        target
            .json(reqwest::Method::POST, "/v1/reservations", Some(body))
            .await?;
        let acknowledged = Instant::now();
        expected -= 1;
        loop {
            let view = target.json(reqwest::Method::GET, &path, None).await?;
            let shown = view["stores"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["store_id"] == PROBE_STORE)
                .and_then(|s| s["available"].as_i64());
            if shown.is_some_and(|a| a <= expected) {
                break;
            }
            if acknowledged.elapsed() > Duration::from_secs(60) {
                bail!("the storefront did not show a reservation within 60 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        samples.push(acknowledged.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(samples)
}
