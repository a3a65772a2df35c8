//! The workload: clients sending a retailer's mix of writes to whichever `serve`
//! instance they pick, each operation recorded in the [`History`]. No operation is
//! retried: each is one attempt with one outcome.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Result};
use chrono::Utc;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::history::{History, Kind, Op, Outcome};

pub const STORES: [&str; 3] = ["WH1", "S1", "S2"];
pub const SKUS: usize = 12;
pub const CHANNEL: &str = "online";

pub fn sku(i: usize) -> String {
    format!("K{i:02}")
}

/// The channel's configuration; `bump` varies the locations' safety stock.
pub fn channel_config(bump: i64) -> Value {
    json!({
        "name": "Online shop",
        "allocation": "priority",
        "split": "by_unit",
        "locations": [
            {"store_id": "WH1", "priority": 1, "safety_stock": bump % 2},
            {"store_id": "S1", "priority": 2, "safety_stock": 2 + bump % 3},
            {"store_id": "S2", "priority": 3, "safety_stock": 1 + bump % 2},
        ]
    })
}

/// Where clients send their requests: the `serve` instances, by name.
pub type Targets = Arc<RwLock<Vec<(String, String)>>>;

/// Loads the catalogue (a count of every store × SKU) and the channel, through the
/// first target, retrying until each answers 2xx.
pub async fn setup(http: &reqwest::Client, base: &str) -> Result<()> {
    put(
        http,
        &format!("{base}/v1/channels/{CHANNEL}"),
        channel_config(0),
    )
    .await?;
    for store in STORES {
        for i in 0..SKUS {
            let body = json!({
                "store_id": store, "sku": sku(i), "set_on_hand": 15,
                "reason": "cycle_count", "external_ref": format!("setup-{store}-{i}"),
            });
            post(http, &format!("{base}/v1/adjustments"), body).await?;
        }
    }
    Ok(())
}

async fn put(http: &reqwest::Client, url: &str, body: Value) -> Result<()> {
    let r = http.put(url).json(&body).send().await?;
    if !r.status().is_success() {
        bail!(
            "PUT {url}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Result<()> {
    let r = http.post(url).json(&body).send().await?;
    if !r.status().is_success() {
        bail!(
            "POST {url}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// Runs `workers` clients until `stop`; each pauses `pace` between operations.
pub async fn run(
    workers: usize,
    pace: Duration,
    targets: Targets,
    history: History,
    stop: watch::Receiver<bool>,
) {
    let reservations = Arc::new(Mutex::new(Vec::<String>::new()));
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1))
        .build()
    {
        Ok(h) => h,
        Err(_) => return,
    };
    let mut tasks = Vec::new();
    for w in 0..workers {
        let worker = Worker {
            id: w,
            http: http.clone(),
            targets: targets.clone(),
            history: history.clone(),
            reservations: reservations.clone(),
            next: 0,
        };
        let stop = stop.clone();
        tasks.push(tokio::spawn(worker.run(pace, stop)));
    }
    for t in tasks {
        let _ = t.await;
    }
}

struct Worker {
    id: usize,
    http: reqwest::Client,
    targets: Targets,
    history: History,
    /// Reservations acknowledged and not yet released or fulfilled by a client.
    reservations: Arc<Mutex<Vec<String>>>,
    next: u64,
}

const MIX: [(Kind, u32); 9] = [
    (Kind::ReserveStore, 25),
    (Kind::ReserveChannel, 20),
    (Kind::Release, 12),
    (Kind::Fulfil, 8),
    (Kind::TillSale, 10),
    (Kind::StockIn, 10),
    (Kind::Count, 5),
    (Kind::SafetyStock, 5),
    (Kind::ChannelConfig, 3),
];

impl Worker {
    async fn run(mut self, pace: Duration, stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let kind = {
                let mut rng = rand::rng();
                let total: u32 = MIX.iter().map(|(_, w)| w).sum();
                let mut pick = rng.random_range(0..total);
                let mut chosen = Kind::ReserveStore;
                for (kind, weight) in MIX {
                    if pick < weight {
                        chosen = kind;
                        break;
                    }
                    pick -= weight;
                }
                chosen
            };
            self.one(kind).await;
            tokio::time::sleep(pace).await;
        }
    }

    fn target(&self) -> Option<(String, String)> {
        let targets = self.targets.read().unwrap_or_else(|e| e.into_inner());
        targets.choose(&mut rand::rng()).cloned()
    }

    async fn one(&mut self, kind: Kind) {
        let Some((instance, base)) = self.target() else {
            return;
        };
        self.next += 1;
        let tag = format!("w{}-{}", self.id, self.next);
        let (method, path, body, key) = {
            let mut rng = rand::rng();
            let line = |rng: &mut rand::rngs::ThreadRng| json!({"sku": sku(rng.random_range(0..SKUS)), "quantity": rng.random_range(1..=3)});
            let mut lines = vec![line(&mut rng)];
            if rng.random_bool(0.3) {
                let second = line(&mut rng);
                if second["sku"] != lines[0]["sku"] {
                    lines.push(second);
                }
            }
            let store = *STORES.choose(&mut rng).unwrap_or(&"S1");
            let some_sku = sku(rng.random_range(0..SKUS));
            match kind {
                Kind::ReserveStore => {
                    let order = format!("O-{tag}");
                    let body = json!({"order_id": order, "store_id": store, "lines": lines, "ttl_seconds": 3600});
                    ("POST", "/v1/reservations".to_owned(), Some(body), order)
                }
                Kind::ReserveChannel => {
                    let order = format!("O-{tag}");
                    let body = json!({"order_id": order, "channel": CHANNEL, "lines": lines, "ttl_seconds": 3600});
                    ("POST", "/v1/reservations".to_owned(), Some(body), order)
                }
                Kind::Release | Kind::Fulfil => {
                    let picked = {
                        let mut pool = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
                        if pool.is_empty() {
                            None
                        } else {
                            let i = rng.random_range(0..pool.len());
                            Some(pool.swap_remove(i))
                        }
                    };
                    let Some(id) = picked else { return };
                    let verb = if kind == Kind::Release {
                        "release"
                    } else {
                        "fulfil"
                    };
                    ("POST", format!("/v1/reservations/{id}/{verb}"), None, id)
                }
                Kind::TillSale => {
                    let r = format!("TILL-{tag}");
                    let body = json!({"store_id": store, "sku": some_sku, "delta": -1, "reason": "sale", "external_ref": r});
                    ("POST", "/v1/adjustments".to_owned(), Some(body), r)
                }
                Kind::StockIn => {
                    let r = format!("GRN-{tag}");
                    let body = json!({"store_id": store, "sku": some_sku, "delta": rng.random_range(1..=5), "reason": "stock_in", "external_ref": r});
                    ("POST", "/v1/adjustments".to_owned(), Some(body), r)
                }
                Kind::Count => {
                    let r = format!("CNT-{tag}");
                    let body = json!({"store_id": store, "sku": some_sku, "set_on_hand": rng.random_range(0..=20), "reason": "cycle_count", "external_ref": r});
                    ("POST", "/v1/adjustments".to_owned(), Some(body), r)
                }
                Kind::SafetyStock => {
                    let body = json!({"items": [{"store_id": store, "sku": some_sku, "safety_stock": rng.random_range(0..=3)}]});
                    (
                        "PUT",
                        format!("/v1/channels/{CHANNEL}/safety-stock"),
                        Some(body),
                        tag,
                    )
                }
                Kind::ChannelConfig => {
                    let body = channel_config(rng.random_range(0..6));
                    ("PUT", format!("/v1/channels/{CHANNEL}"), Some(body), tag)
                }
            }
        };
        let url = format!("{base}{path}");
        let request = match method {
            "PUT" => self.http.put(&url),
            _ => self.http.post(&url),
        };
        let request = match &body {
            Some(b) => request.json(b),
            None => request,
        };
        let invoked = Utc::now();
        let outcome = classify(request.send().await).await;
        let completed = Utc::now();
        if let (Kind::ReserveStore | Kind::ReserveChannel, Outcome::Ok { answer }) =
            (kind, &outcome)
        {
            if let Some(id) = answer["reservation_id"].as_str() {
                self.reservations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id.to_owned());
            }
        }
        self.history.record(Op {
            id: 0,
            kind,
            key,
            instance,
            invoked,
            completed,
            outcome,
        });
    }
}

/// What the client can tell from the answer (see [`crate::history`]).
async fn classify(sent: reqwest::Result<reqwest::Response>) -> Outcome {
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if (200..300).contains(&status) {
                Outcome::Ok { answer: body }
            } else if status == 503 && body["outcome"] == "unknown" {
                Outcome::Unknown {
                    detail: "503 outcome unknown".into(),
                }
            } else if status < 500 || status == 503 {
                Outcome::Failed {
                    status,
                    detail: body["code"].as_str().unwrap_or_default().to_owned(),
                }
            } else {
                // A 500 or 502: nothing promised either way (and a finding).
                Outcome::Unknown {
                    detail: format!("{status} {}", body["code"].as_str().unwrap_or_default()),
                }
            }
        }
        // Refused before anything was sent: nothing was applied.
        Err(e) if e.is_connect() => Outcome::Failed {
            status: 0,
            detail: "connection refused".into(),
        },
        Err(e) => Outcome::Unknown {
            detail: if e.is_timeout() {
                "timed out".into()
            } else {
                format!("transport: {e}")
            },
        },
    }
}
