//! `invsync bench`: a load generator for the reservation path. One process, async,
//! keep-alive connections; seeds a catalog, drives `--clients` concurrent clients for
//! `--duration`, then prints throughput, latency percentiles, answers by status and
//! code, and checks for overselling (the final levels must equal what the successful
//! answers imply).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Every reservation picks a uniformly random (store, sku).
    Spread,
    /// Every reservation is for the same (store, sku).
    Hot,
    /// An order system's day: 70 % reservations of one or two lines, 15 % releases and
    /// 10 % fulfilments of a client's own earlier reservations, 5 % stock-ins.
    Mix,
    /// Reservations through a channel of three locations (most available first, split
    /// by unit, safety stock at two of them), racing till sales (`--till-sales`) of
    /// the same SKUs at those locations. Its check also reads every RESERVED event of
    /// the log: none took a row below zero, nor a location below the channel's safety
    /// stock. Needs the admin scope (it configures the channel).
    Channels,
}

/// The channel the `channels` workload reserves through, and its locations:
/// (store index, priority, safety stock).
const BENCH_CHANNEL: &str = "bench-online";
const BENCH_LOCATIONS: [(usize, i64, i64); 3] = [(0, 1, 0), (1, 2, 2), (2, 3, 1)];

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The server, or several instances separated by commas: clients are spread over
    /// them round-robin (seeding and checks use the first).
    #[arg(
        long,
        env = "INVSYNC_URL",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ',',
        value_parser = crate::client::parse_base_url
    )]
    pub url: Vec<String>,
    /// Bearer token with the reserve and adjust scopes (or admin).
    #[arg(long, env = "INVSYNC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What the clients do (see the values).
    #[arg(long, value_enum, default_value = "spread")]
    pub workload: Workload,
    /// Concurrent clients, each waiting for its answer before its next request.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long to drive load, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub duration: Duration,
    /// Stores in the seeded catalog.
    #[arg(long, default_value_t = 1)]
    pub stores: usize,
    /// SKUs per store in the seeded catalog.
    #[arg(long, default_value_t = 10_000)]
    pub skus: usize,
    /// on_hand each (store, sku) is seeded with.
    #[arg(long, default_value_t = 1_000_000)]
    pub stock: i64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Skip sampling visibility (reservation acknowledged → storefront shows it).
    #[arg(long)]
    pub no_visibility: bool,
    /// `channels` workload: the percentage of requests that are till sales (one
    /// unit off a random location's shelf); the rest are channel reservations.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub till_sales: u8,
    /// Use the catalog already on the server, as an earlier run with the same
    /// `--stores`/`--skus` left it, instead of seeding it again (10M rows take
    /// minutes to seed; this lets a script measure the load phase on its own).
    #[arg(long)]
    pub no_seed: bool,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub workload: Workload,
    pub clients: usize,
    pub seconds: f64,
    pub requests: u64,
    pub reserved: u64,
    pub throughput_per_s: f64,
    pub latency_ms: BTreeMap<String, f64>,
    pub answers: BTreeMap<String, u64>,
    pub oversell_check: String,
    /// Reservation acknowledged → storefront shows it, sampled every 20 ms while the
    /// load runs: p50, p99, max and the number of samples.
    pub visibility_ms: Option<BTreeMap<String, f64>>,
}

const PROBE_STORE: &str = "bench-probe";
const PROBE_SKU: &str = "bench-probe";

/// Samples visibility until `deadline`: reserves one unit of the probe SKU, then polls
/// the storefront until its availability reflects it. Only the probe reserves that
/// SKU, so availability falls by exactly one per sample.
async fn probe_visibility(
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

fn store(i: usize) -> String {
    format!("bench-S{i}")
}

fn sku(i: usize) -> String {
    format!("bench-{i:08}")
}

struct Target {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Target {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{}", self.url, path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn json(
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
    async fn wait_for_consumers(&self, limit: Duration) -> anyhow::Result<()> {
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
    async fn log_offset(&self) -> anyhow::Result<i64> {
        let page = self
            .json(reqwest::Method::GET, "/v1/stock/snapshot?limit=1", None)
            .await?;
        Ok(page["log_offset"].as_i64().unwrap_or(0))
    }

    /// Reads the log after `after` up to the rows' offset now, and checks every
    /// RESERVED event: it left its row at `available >= 0`, and one through the bench
    /// channel left its location at or above the channel's safety stock there.
    async fn reserved_events(&self, after: i64) -> anyhow::Result<EventAudit> {
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
    async fn reserved_total(&self, stores: usize) -> anyhow::Result<(i64, usize)> {
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
struct EventAudit {
    checked: u64,
    /// Units reserved at a new location by reallocation.
    reallocated: i64,
    violations: Vec<String>,
}

/// Creates (or sets again) the bench channel over the first three stores.
async fn configure_channel(target: &Target) -> anyhow::Result<()> {
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

pub async fn run(args: BenchArgs) -> anyhow::Result<Summary> {
    if args.clients == 0 || args.stores == 0 || args.skus == 0 {
        bail!("--clients, --stores and --skus must be at least 1");
    }
    if args.url.is_empty() {
        bail!("--url needs at least one server");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .tcp_nodelay(true)
        .build()?;
    let targets: Vec<Arc<Target>> = args
        .url
        .iter()
        .map(|url| {
            Arc::new(Target {
                http: http.clone(),
                url: url.trim_end_matches('/').to_owned(),
                token: args.token.clone(),
            })
        })
        .collect();
    let target = targets[0].clone();
    let (stores, skus) = match args.workload {
        Workload::Spread | Workload::Mix => (args.stores, args.skus),
        Workload::Hot => (1, 1),
        Workload::Channels => (BENCH_LOCATIONS.len(), args.skus),
    };
    if !args.no_seed {
        seed(&target, stores, skus, args.stock).await?;
    }
    if args.workload == Workload::Channels {
        configure_channel(&target).await?;
    }
    // Measure the steady state, not the seeding's backlog draining beside the load.
    target.wait_for_consumers(Duration::from_secs(600)).await?;
    let (reserved_before, _) = target.reserved_total(stores).await?;
    let log_before = target.log_offset().await?;

    let run_id: u64 = rand::rng().random();
    let progress = progress_bar(args.duration, args.json);
    let started = Instant::now();
    let deadline = started + args.duration;
    let probe = (!args.no_visibility)
        .then(|| tokio::spawn(probe_visibility(target.clone(), deadline, run_id)));
    // Latencies in microseconds, up to a minute, 3 significant digits.
    let empty = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut tasks = Vec::with_capacity(args.clients);
    for client in 0..args.clients {
        let empty = empty.clone();
        let target = targets[client % targets.len()].clone();
        let (progress, workload, till_sales) = (progress.clone(), args.workload, args.till_sales);
        tasks.push(tokio::spawn(async move {
            let mut hist = empty.clone();
            let mut answers: BTreeMap<String, u64> = BTreeMap::new();
            let mut client = Client {
                target,
                run: format!("bench-{run_id:x}-{client}"),
                n: 0,
                stores,
                skus,
                open: VecDeque::new(),
                held: 0,
                till_sales,
                channel: (workload == Workload::Channels).then_some(BENCH_CHANNEL),
            };
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let key = client.step(workload).await;
                let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                *answers.entry(key).or_default() += 1;
                progress.inc(1);
            }
            (hist, answers, client.held)
        }));
    }
    let mut hist = empty;
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut held = 0;
    for t in tasks {
        let (h, a, units) = t.await?;
        hist.add(h)?;
        held += units;
        for (k, v) in a {
            *answers.entry(k).or_default() += v;
        }
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let reserved = answers
        .iter()
        .filter(|(k, _)| k.starts_with("reserve 201"))
        .map(|(_, v)| *v)
        .sum();
    let (reserved_after, oversold) = target.reserved_total(stores).await?;
    let implied = reserved_before + held;
    let oversell_check = if args.workload == Workload::Channels {
        // Till sales may leave rows short (on_hand < reserved) without any reservation
        // overselling: the reservations' own events are the evidence. A move by
        // reallocation releases here what it reserves there, so the total holds.
        let events = target.reserved_events(log_before).await?;
        if reserved_after == implied && events.violations.is_empty() {
            format!(
                "ok: reserved grew by exactly the {held} units the successful answers hold; \
                 none of {} RESERVED events took a row below 0 or a location below the channel's \
                 safety stock ({} moved by reallocation)",
                events.checked, events.reallocated
            )
        } else {
            format!(
                "FAILED: reserved is {reserved_after}, the answers imply {implied}; {} RESERVED events broke a bound, e.g. {:?}",
                events.violations.len(),
                events.violations.first()
            )
        }
    } else if reserved_after == implied && oversold == 0 {
        format!(
            "ok: reserved grew by exactly the {held} units the successful answers hold; no row oversold"
        )
    } else {
        format!("FAILED: reserved is {reserved_after}, the answers imply {implied}; {oversold} rows oversold")
    };
    let visibility_ms = match probe {
        Some(task) => {
            let mut samples = task.await??;
            samples.sort_by(f64::total_cmp);
            let at = |q: f64| {
                samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]
            };
            (!samples.is_empty()).then(|| {
                BTreeMap::from([
                    ("p50".to_owned(), at(0.5)),
                    ("p99".to_owned(), at(0.99)),
                    ("max".to_owned(), samples[samples.len() - 1]),
                    ("samples".to_owned(), samples.len() as f64),
                ])
            })
        }
        None => None,
    };
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let latency_ms = BTreeMap::from([
        ("p50".to_owned(), ms(0.50)),
        ("p90".to_owned(), ms(0.90)),
        ("p99".to_owned(), ms(0.99)),
        ("p99.9".to_owned(), ms(0.999)),
        ("max".to_owned(), hist.max() as f64 / 1000.0),
    ]);
    Ok(Summary {
        workload: args.workload,
        clients: args.clients,
        seconds,
        requests: hist.len(),
        reserved,
        throughput_per_s: hist.len() as f64 / seconds,
        latency_ms,
        answers,
        oversell_check,
        visibility_ms,
    })
}

/// A progress bar over the run's duration on a terminal (hidden with `--json` or when
/// stderr is not a terminal), counting requests.
fn progress_bar(duration: Duration, json: bool) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed}/{msg} {human_pos} requests, {per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(format!("{}s", duration.as_secs()));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// One simulated client: what it has reserved and not yet released or fulfilled.
struct Client {
    target: Arc<Target>,
    run: String,
    n: u64,
    stores: usize,
    skus: usize,
    /// Its active reservations, oldest first: (id, units held).
    open: VecDeque<(String, i64)>,
    /// Units its successful answers leave reserved.
    held: i64,
    /// `channels` workload: the percentage of steps that are till sales.
    till_sales: u8,
    /// The channel its reservations go through (`channels` workload); else each
    /// names a store.
    channel: Option<&'static str>,
}

impl Client {
    /// One request of the workload; returns `"<operation> <status>[ <code>]"`.
    async fn step(&mut self, workload: Workload) -> String {
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

    async fn adjust(&self, body: Value, operation: &str) -> String {
        let answer = self
            .target
            .request(reqwest::Method::POST, "/v1/adjustments")
            .json(&body)
            .send()
            .await;
        describe(operation, answer).await.0
    }

    fn pick(&self) -> (usize, usize) {
        let mut rng = rand::rng();
        (
            rng.random_range(0..self.stores),
            rng.random_range(0..self.skus),
        )
    }

    async fn reserve(&mut self, lines: usize) -> String {
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
    async fn settle(&mut self, action: &str) -> String {
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
async fn seed(target: &Target, stores: usize, skus: usize, stock: i64) -> anyhow::Result<()> {
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

/// The summary as `invsync bench` prints it without `--json`.
pub fn report(summary: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // (Writing to a String cannot fail.)
    let _ = writeln!(
        out,
        "{:?} workload, {} clients, {:.1} s: {} requests, {:.0} req/s, {} reserved",
        summary.workload,
        summary.clients,
        summary.seconds,
        summary.requests,
        summary.throughput_per_s,
        summary.reserved
    );
    let l = &summary.latency_ms;
    let _ = writeln!(
        out,
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        l["p50"], l["p90"], l["p99"], l["p99.9"], l["max"]
    );
    for (answer, n) in &summary.answers {
        let _ = writeln!(out, "  {answer}: {n}");
    }
    if let Some(v) = &summary.visibility_ms {
        let _ = writeln!(
            out,
            "visibility (acknowledged → storefront) ms: p50 {:.2}  p99 {:.2}  max {:.2}  ({} samples)",
            v["p50"], v["p99"], v["max"], v["samples"]
        );
    }
    let _ = writeln!(out, "oversell check: {}", summary.oversell_check);
    out
}
