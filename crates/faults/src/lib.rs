//! invsync's fault suite, in the manner of Jepsen: invsync on the engines operators
//! run — PostgreSQL with a synchronous standby and automatic failover (Patroni, etcd),
//! a three-server NATS JetStream cluster with the stream at three replicas — with two
//! `serve` instances, a `consume` process reading the bus and a two-member
//! `consume --partitioned` group, under a retailer's mix of writes, while faults are
//! injected. Every operation is recorded (ok / failed / unknown) and the whole history
//! is checked afterwards ([`check`]); recovery times are measured from the history
//! and the receivers' arrival times ([`faults::Fault`]).
//!
//! `crates/cli/tests/faults.rs` runs one fault of each kind in CI; the long run is
//! `scripts/fault-suite.sh` (`invsync-faults` with more rounds), whose report is
//! `docs/faults/REPORT.md`.

pub mod check;
pub mod faults;
pub mod history;
pub mod invsync;
pub mod nats;
pub mod patroni;
pub mod procs;
pub mod proxy;
pub mod receiver;
pub mod report;
pub mod workload;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use crate::faults::{Fault, FaultKind, World};
use crate::history::History;
use crate::invsync::{Instance, Role};
use crate::receiver::{Delivery, Receiver};
use crate::report::Report;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `invsync` binary.
    pub invsync: PathBuf,
    /// Faults, in order (each is healed before the next).
    pub faults: Vec<FaultKind>,
    /// Concurrent clients.
    pub workers: usize,
    /// Each client's pause between operations.
    pub pace: Duration,
    /// Quiet time after each fault is healed, before the next.
    pub calm: Duration,
    /// Where the servers keep their files (a temporary directory when `None`).
    pub dir: Option<PathBuf>,
}

impl Plan {
    /// One fault of each kind, `rounds` times.
    pub fn rounds(invsync: PathBuf, rounds: usize) -> Self {
        Self {
            invsync,
            faults: (0..rounds).flat_map(|_| FaultKind::ALL).collect(),
            workers: 4,
            pace: Duration::from_millis(60),
            calm: Duration::from_secs(3),
            dir: None,
        }
    }
}

const SECRET: &str = "fault-suite-webhook-secret";
/// Most re-deliveries one fault may cause: one consumer batch.
const DUPLICATE_BOUND: usize = 1000;

fn serve_config(db: &str, bus: &str, hooks: &str, me: &str) -> String {
    format!(
        "database-url = {db:?}\nbus = {bus:?}\nbus-replicas = 3\n\n\
         [[webhook]]\nname = \"shop\"\nurl = \"{hooks}/shop/{me}\"\nsecret = {SECRET:?}\n"
    )
}

fn consume_config(db: &str, bus: &str, hooks: &str, endpoint: &str, me: &str) -> String {
    format!(
        "database-url = {db:?}\nbus = {bus:?}\nbus-replicas = 3\n\n\
         [[webhook]]\nname = {endpoint:?}\nurl = \"{hooks}/{endpoint}/{me}\"\nsecret = {SECRET:?}\n"
    )
}

/// Runs the plan; the report says what was found (its `problems` empty when every
/// check held). The servers' files and logs are kept (and named in the error or the
/// report) when the suite fails or finds a problem, and deleted otherwise.
pub async fn run(plan: &Plan) -> Result<Report> {
    let temp = tempfile::Builder::new()
        .prefix("invsync-faults-")
        .tempdir()?;
    let dir = plan.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    match run_in(plan, &dir).await {
        Ok(report) if report.ok() => Ok(report),
        Ok(mut report) => {
            let kept = temp.keep();
            report.dir = Some(plan.dir.clone().unwrap_or(kept));
            Ok(report)
        }
        Err(e) => {
            let kept = temp.keep();
            let dir = plan.dir.clone().unwrap_or(kept);
            Err(e.context(format!("the servers' logs are kept in {}", dir.display())))
        }
    }
}

async fn run_in(plan: &Plan, dir: &std::path::Path) -> Result<Report> {
    let dir = dir.to_owned();
    let started = Utc::now();
    let mut pg = patroni::PgCluster::start(&dir)
        .await
        .context("PostgreSQL")?;
    let mut nats = nats::NatsCluster::start(&dir).await.context("NATS")?;
    let receiver = Receiver::default();
    let hooks = receiver.start().await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let bus = nats.urls();

    let Instances {
        proxies,
        mut serve,
        mut wms,
        mut erp,
    } = start_instances(plan, &dir, &pg, &bus, &hooks, &http).await?;
    nats.wait_stream_healthy(faults::STREAM, Duration::from_secs(60))
        .await?;

    let history = History::default();
    let targets: workload::Targets = Arc::new(RwLock::new(
        serve.iter().map(|s| (s.name.clone(), s.url())).collect(),
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clients = tokio::spawn(workload::run(
        plan.workers,
        plan.pace,
        targets,
        history.clone(),
        stopped,
    ));
    tokio::time::sleep(plan.calm).await;

    let mut faults = Vec::new();
    let mut world = World {
        pg: &mut pg,
        nats: &mut nats,
        serve: &mut serve,
        wms: &mut wms,
        erp: &mut erp,
        proxies: &proxies,
        http: &http,
        history: &history,
    };
    for kind in &plan.faults {
        eprintln!("fault suite: {kind:?}");
        let fault = world
            .inject(*kind)
            .await
            .with_context(|| format!("{kind:?}"))?;
        faults.push(fault);
        tokio::time::sleep(plan.calm).await;
    }
    let _ = stop.send(true);
    let _ = clients.await;
    let ended = Utc::now();

    // Everything settles: every endpoint and storefront catches up with the log.
    let url = pg.url();
    let (log, rows) = tokio::task::spawn_blocking(move || check::read_ledger(&url)).await??;
    let caught_up = every_endpoint_caught_up(&receiver, &log).await;
    let mut findings = check::check_ledger(&log, &rows, &history.ops());
    if let Err(e) = caught_up {
        findings.problems.push(e.to_string());
    }
    let storefronts = storefronts_converge(&http, &serve, &log).await;
    findings.problems.extend(storefronts);
    findings
        .problems
        .extend(invsync_check(&plan.invsync, &serve[0].url()).await);

    let deliveries = receiver.deliveries();
    let convergence = converge(&deliveries, &log, &nats, &mut findings).await;
    let logs: std::collections::HashMap<String, PathBuf> = serve
        .iter()
        .chain(erp.iter())
        .chain(std::iter::once(&wms))
        .map(|i| (i.name.clone(), i.log_path()))
        .collect();
    let refused = receiver.refused();
    measure(&mut faults, &history, &deliveries, &refused, &log, &logs);
    check_bounds(&faults, &deliveries, &mut findings);
    Ok(Report {
        started,
        ended,
        ops: history.len(),
        nats_syncs_always: nats.syncs_always,
        findings,
        convergence,
        faults,
        dir: plan.dir.clone(),
    })
}

/// The invsync processes of the suite, started.
struct Instances {
    /// Per `serve` instance, its proxy to each PostgreSQL node.
    proxies: Vec<Vec<proxy::Proxy>>,
    serve: Vec<Instance>,
    wms: Instance,
    erp: Vec<Instance>,
}

/// Starts two `serve` instances (each reaching every PostgreSQL node through proxies
/// of its own, which the `Partition` fault cuts), sets the shop up, then the `wms`
/// consumer and the two members of the partitioned `erp` group.
async fn start_instances(
    plan: &Plan,
    dir: &std::path::Path,
    pg: &patroni::PgCluster,
    bus: &str,
    hooks: &str,
    http: &reqwest::Client,
) -> Result<Instances> {
    let db = pg.url();
    let mut proxies = Vec::new();
    let mut serve = Vec::new();
    for i in 0..2 {
        let name = format!("i{i}");
        let mut mine = Vec::new();
        for port in pg.ports() {
            mine.push(proxy::Proxy::start(port).await?);
        }
        let via: Vec<u16> = mine.iter().map(|p| p.port).collect();
        proxies.push(mine);
        let text = serve_config(&patroni::PgCluster::url_through(&via), bus, hooks, &name);
        let mut instance = Instance::new(&plan.invsync, dir, &name, Role::Serve, &text)?;
        instance.start(http).await?;
        serve.push(instance);
    }
    workload::setup(http, &serve[0].url()).await?;
    let consume = |name: &str, endpoint: &str, partitioned: bool| {
        let text = consume_config(&db, bus, hooks, endpoint, name);
        let role = Role::Consume {
            endpoint: endpoint.to_owned(),
            partitioned,
        };
        Instance::new(&plan.invsync, dir, name, role, &text)
    };
    let mut wms = consume("wms", "wms", false)?;
    wms.start(http).await?;
    let mut erp = vec![
        consume("erp-m0", "erp", true)?,
        consume("erp-m1", "erp", true)?,
    ];
    for m in &mut erp {
        m.start(http).await?;
    }
    Ok(Instances {
        proxies,
        serve,
        wms,
        erp,
    })
}

/// Waits (bounded) until every webhook endpoint has received every stock event of
/// the log.
async fn every_endpoint_caught_up(receiver: &Receiver, log: &[check::Logged]) -> Result<()> {
    let stock_ids: std::collections::HashSet<String> = log
        .iter()
        .filter(|e| e.is_stock())
        .map(|e| e.id().to_owned())
        .collect();
    procs::eventually(
        "every webhook endpoint received every stock event",
        Duration::from_secs(120),
        || async {
            let deliveries = receiver.deliveries();
            ["shop", "wms", "erp"]
                .iter()
                .all(|endpoint| {
                    let got: std::collections::HashSet<&str> = deliveries
                        .iter()
                        .filter(|d| d.endpoint == *endpoint)
                        .map(|d| d.event_id.as_str())
                        .collect();
                    stock_ids.iter().all(|id| got.contains(id.as_str()))
                })
                .then_some(())
        },
    )
    .await
}

/// How each endpoint and the stream converged on the log; what never arrived (or what
/// the stream holds that the log does not) is a problem.
async fn converge(
    deliveries: &[Delivery],
    log: &[check::Logged],
    nats: &nats::NatsCluster,
    findings: &mut check::Findings,
) -> Vec<check::Convergence> {
    let mut convergence = Vec::new();
    for endpoint in ["shop", "wms", "erp"] {
        let mine: Vec<Delivery> = deliveries
            .iter()
            .filter(|d| d.endpoint == endpoint)
            .cloned()
            .collect();
        let c = check::check_receiver(endpoint, log, &mine);
        if c.missing > 0 {
            findings
                .problems
                .push(format!("{endpoint}: {} events never delivered", c.missing));
        }
        convergence.push(c);
    }
    let stream = nats.event_ids(faults::STREAM).await.unwrap_or_default();
    let (stream_check, foreign) = check::check_stream(log, &stream);
    if foreign > 0 {
        findings.problems.push(format!(
            "the stream holds {foreign} events the log does not"
        ));
    }
    convergence.push(stream_check);
    convergence
}

/// The bounds every fault must keep: re-deliveries within one batch, no delivery
/// started after a frozen process woke, and the fencing token on every delivery made
/// under a lease and only there.
fn check_bounds(faults: &[Fault], deliveries: &[Delivery], findings: &mut check::Findings) {
    for f in faults {
        // A change of worker re-delivers at most the batch in flight (a consumer's
        // batch is at most 1,000 events), plus what waited behind a parked SKU.
        if f.duplicates > DUPLICATE_BOUND {
            findings.problems.push(format!(
                "{:?} on {}: {} re-deliveries, more than one batch ({DUPLICATE_BOUND})",
                f.kind, f.target, f.duplicates
            ));
        }
        if f.started_after_wake > 0 {
            findings.problems.push(format!(
                "FENCING: {} started {} deliveries after it woke from {:?}",
                f.target, f.started_after_wake, f.kind
            ));
        }
    }
    // The fencing token is on every delivery made under a lease, and only there.
    for d in deliveries {
        let leased = d.endpoint != "wms";
        if d.lease.is_some() != leased {
            findings.problems.push(format!(
                "{} delivery of {} from {}: fencing token {:?}",
                d.endpoint, d.event_id, d.sender, d.lease
            ));
            break;
        }
    }
}

/// Fills in each fault's measures from the history and the deliveries.
fn measure(
    faults: &mut [Fault],
    history: &History,
    deliveries: &[Delivery],
    refused: &[Delivery],
    log: &[check::Logged],
    logs: &std::collections::HashMap<String, PathBuf>,
) {
    let ops = history.ops();
    let occurred: Vec<(DateTime<Utc>, &str)> = log
        .iter()
        .filter(|e| e.is_stock())
        .filter_map(|e| {
            let t = e.envelope["time"].as_str()?;
            let t = DateTime::parse_from_rfc3339(t).ok()?.with_timezone(&Utc);
            Some((t, e.id()))
        })
        .collect();
    let ends: Vec<DateTime<Utc>> = faults
        .iter()
        .skip(1)
        .map(|f| f.at)
        .chain(std::iter::once(DateTime::<Utc>::MAX_UTC))
        .collect();
    for (fault, end) in faults.iter_mut().zip(ends) {
        let at = fault.at;
        fault.writes_back_s = ops
            .iter()
            .filter(|op| op.ok() && op.kind.is_stock_write() && op.invoked >= at)
            .map(|op| op.completed)
            .min()
            .map(|t| seconds(t - at));
        let mut acked: Vec<DateTime<Utc>> = ops
            .iter()
            .filter(|op| {
                op.ok() && op.kind.is_stock_write() && op.completed > at && op.completed < end
            })
            .map(|op| op.completed)
            .collect();
        acked.sort();
        fault.write_gap_s = std::iter::once(at)
            .chain(acked.iter().copied())
            .zip(acked.iter().copied())
            .map(|(a, b)| seconds(b - a))
            .fold(None, |worst: Option<f64>, s| {
                Some(worst.map_or(s, |w| w.max(s)))
            });
        let endpoint = fault.kind.endpoint();
        let mine: Vec<&Delivery> = deliveries
            .iter()
            .filter(|d| d.endpoint == endpoint)
            .collect();
        let mut first: std::collections::HashMap<&str, DateTime<Utc>> = Default::default();
        for d in &mine {
            first.entry(d.event_id.as_str()).or_insert(d.arrived);
        }
        let window = at + chrono::Duration::seconds(5);
        let mut after: Vec<&(DateTime<Utc>, &str)> = occurred
            .iter()
            .filter(|(t, _)| *t >= at && *t < window)
            .collect();
        if after.is_empty() {
            after = occurred.iter().filter(|(t, _)| *t >= at).take(20).collect();
        }
        fault.delivery_stall_s = after
            .iter()
            .filter_map(|(t, id)| first.get(id).map(|a| seconds(*a - *t)))
            .fold(None, |worst: Option<f64>, s| {
                Some(worst.map_or(s, |w| w.max(s)))
            });
        let mut seen = std::collections::HashSet::new();
        for d in &mine {
            let new = seen.insert(d.event_id.as_str());
            if !new && d.arrived >= at && d.arrived < end {
                fault.duplicates += 1;
            }
        }
        if let Some(woke) = fault.resumed {
            // Until it holds a lease again under a new term (a group member claims a
            // share again after it rejoined; a deposed leader does not lead while the
            // other renews), the woken process may deliver nothing.
            let regained = logs
                .get(&fault.target)
                .and_then(|path| first_line_after(path, woke, &["partition claimed", "now leads"]))
                .unwrap_or(end)
                .min(end);
            let mut skus = std::collections::HashSet::new();
            for d in mine
                .iter()
                .copied()
                .chain(refused.iter().filter(|d| d.endpoint == endpoint))
                .filter(|d| d.sender == fault.target && d.arrived > woke && d.arrived < regained)
            {
                fault.after_wake += 1;
                if !skus.insert((d.store.as_str(), d.sku.as_str())) {
                    fault.started_after_wake += 1;
                }
            }
        }
        fault.stale_refused = refused
            .iter()
            .filter(|d| d.endpoint == endpoint && d.arrived >= at && d.arrived < end)
            .count();
    }
}

/// When `path`'s first line after `after` holding one of `needles` was logged (the
/// tracing text format starts each line with its RFC 3339 time).
fn first_line_after(
    path: &std::path::Path,
    after: DateTime<Utc>,
    needles: &[&str],
) -> Option<DateTime<Utc>> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .filter_map(|l| {
            let stamp = l.split_whitespace().next()?;
            DateTime::parse_from_rfc3339(stamp)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
        .find(|t| *t > after)
}

fn seconds(d: chrono::Duration) -> f64 {
    d.num_microseconds().map_or(f64::MAX, |us| us as f64 / 1e6)
}

/// Every `serve` instance's storefront shows every (store, sku) at its last event.
async fn storefronts_converge(
    http: &reqwest::Client,
    serve: &[Instance],
    log: &[check::Logged],
) -> Vec<String> {
    let expected = check::last_levels(log);
    let mut problems = Vec::new();
    for s in serve {
        let last_seen = std::sync::Mutex::new(String::new());
        let result = procs::eventually(
            &format!("the storefront of {} converges to the log", s.name),
            Duration::from_secs(60),
            || async {
                for i in 0..workload::SKUS {
                    let sku = workload::sku(i);
                    let url = format!("{}/v1/storefront/availability/{sku}", s.url());
                    let v: serde_json::Value =
                        http.get(&url).send().await.ok()?.json().await.ok()?;
                    for store in v["stores"].as_array()? {
                        let key = (store["store_id"].as_str()?.to_owned(), sku.clone());
                        // The storefront never shows a negative per-store availability
                        // (README: a shortage shows as 0).
                        let want = expected
                            .get(&key)
                            .map(|(available, version)| ((*available).max(0), *version))
                            .unwrap_or_default();
                        let got = (store["available"].as_i64()?, store["version"].as_i64()?);
                        if got != want {
                            *last_seen.lock().unwrap_or_else(|e| e.into_inner()) = format!(
                                "{key:?} shows (available, version) {got:?}, the log {want:?}"
                            );
                            return None;
                        }
                    }
                }
                Some(())
            },
        )
        .await;
        if let Err(e) = result {
            let detail = last_seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            problems.push(format!("{e}: {detail}"));
        }
    }
    problems
}

/// `invsync check` (the operator's audit) against one instance.
async fn invsync_check(bin: &std::path::Path, url: &str) -> Vec<String> {
    let out = tokio::process::Command::new(bin)
        .args(["check", "--json", "--url", url])
        .output()
        .await;
    match out {
        Ok(o) => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            if v["ok"] == true {
                Vec::new()
            } else {
                vec![format!(
                    "invsync check: {}",
                    String::from_utf8_lossy(&o.stdout).trim()
                )]
            }
        }
        Err(e) => vec![format!("invsync check did not run: {e}")],
    }
}
