//! `invsync bench`: a load generator for the reservation path. One process, async,
//! keep-alive connections; seeds a catalog, drives `--clients` concurrent clients for
//! `--duration`, then prints throughput, latency percentiles, answers by status and
//! code, and checks for overselling (the final levels must equal what the successful
//! answers imply).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;

mod client;
mod probe;
mod target;

use client::{seed, Client};
use probe::probe_visibility;
use target::{configure_channel, sku, store, Target};

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
    let (hist, answers, held) =
        drive(&args, &targets, (stores, skus), run_id, deadline, &progress).await?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let reserved = answers
        .iter()
        .filter(|(k, _)| k.starts_with("reserve 201"))
        .map(|(_, v)| *v)
        .sum();
    let (reserved_after, oversold) = target.reserved_total(stores).await?;
    let oversell_check = oversell_verdict(
        &args,
        &target,
        log_before,
        reserved_after,
        oversold,
        reserved_before + held,
        held,
    )
    .await?;
    let visibility_ms = match probe {
        Some(task) => quantiles(task.await??),
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

/// Runs `--clients` clients against the targets (round robin) until `deadline`:
/// every request's latency, the count of each kind of answer, and the units the
/// successful answers still hold.
async fn drive(
    args: &BenchArgs,
    targets: &[Arc<Target>],
    (stores, skus): (usize, usize),
    run_id: u64,
    deadline: Instant,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(Histogram<u64>, BTreeMap<String, u64>, i64)> {
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
    Ok((hist, answers, held))
}

/// Whether the run oversold: reserved grew by exactly what the successful answers
/// hold, and no row (or, for channels, no RESERVED event) broke a bound.
async fn oversell_verdict(
    args: &BenchArgs,
    target: &Target,
    log_before: i64,
    reserved_after: i64,
    oversold: usize,
    implied: i64,
    held: i64,
) -> anyhow::Result<String> {
    Ok(if args.workload == Workload::Channels {
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
    })
}

/// The visibility probe's samples as p50, p99, max and their count; `None` when it
/// took none.
fn quantiles(mut samples: Vec<f64>) -> Option<BTreeMap<String, f64>> {
    samples.sort_by(f64::total_cmp);
    let at =
        |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    (!samples.is_empty()).then(|| {
        BTreeMap::from([
            ("p50".to_owned(), at(0.5)),
            ("p99".to_owned(), at(0.99)),
            ("max".to_owned(), samples[samples.len() - 1]),
            ("samples".to_owned(), samples.len() as f64),
        ])
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
