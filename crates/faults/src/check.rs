//! The history checker. It reads the ledger's tables with SQL of its own and parses
//! the envelopes as plain JSON: nothing of invsync's code decides whether invsync was
//! right.
//!
//! What it checks, after the run, against the whole history:
//! - the log is gapless, every event id appears once, and each (store, sku)'s versions
//!   rise by exactly one; every stock row is the fold of its events;
//! - no oversell: no `RESERVED` leaves `available` below zero, and none through the
//!   channel leaves a location below the safety stock of the configuration in force
//!   at its offset (the log's own `CHANNEL_UPDATED` / `SAFETY_STOCK_SET` events), or
//!   lands on a location the channel did not have then;
//! - every acknowledged write is in the log exactly once, every unknown one at most
//!   once, no failed one at all; no reservation releases or fulfils more than it
//!   held;
//! - the storefront of every `serve` instance, every webhook receiver and the NATS
//!   stream converge to the log (duplicates and out-of-order re-deliveries counted).

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use crate::history::{Kind, Op, Outcome};
use crate::receiver::Delivery;

/// One event of the log, as stored.
#[derive(Debug, Clone)]
pub struct Logged {
    pub offset: i64,
    pub envelope: Value,
}

impl Logged {
    pub fn data(&self) -> &Value {
        &self.envelope["data"]
    }
    fn text(&self, field: &str) -> &str {
        self.data()[field].as_str().unwrap_or_default()
    }
    fn int(&self, field: &str) -> i64 {
        self.data()[field].as_i64().unwrap_or(i64::MIN)
    }
    pub fn id(&self) -> &str {
        self.envelope["id"].as_str().unwrap_or_default()
    }
    pub fn event_type(&self) -> &str {
        self.text("event_type")
    }
    pub fn is_stock(&self) -> bool {
        matches!(self.event_type(), "RESERVED" | "RELEASED" | "ADJUSTED")
    }
    fn key(&self) -> (String, String) {
        (
            self.text("store_id").to_owned(),
            self.text("product_sku").to_owned(),
        )
    }
}

/// The log and the stock table, read straight from PostgreSQL.
pub fn read_ledger(url: &str) -> Result<(Vec<Logged>, Vec<StockRow>)> {
    let mut c = postgres::Client::connect(url, postgres::NoTls)?;
    let mut log = Vec::new();
    for r in c.query(
        "SELECT log_offset, envelope FROM events ORDER BY log_offset",
        &[],
    )? {
        let envelope: &str = r.get(1);
        log.push(Logged {
            offset: r.get(0),
            envelope: serde_json::from_str(envelope)?,
        });
    }
    let rows = c
        .query(
            "SELECT store_id, sku, on_hand, reserved, version FROM stock",
            &[],
        )?
        .iter()
        .map(|r| StockRow {
            store: r.get(0),
            sku: r.get(1),
            on_hand: r.get(2),
            reserved: r.get(3),
            version: r.get(4),
        })
        .collect();
    Ok((log, rows))
}

#[derive(Debug, Clone)]
pub struct StockRow {
    pub store: String,
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub version: i64,
}

/// What the checker found.
#[derive(Debug, Default, Serialize)]
pub struct Findings {
    pub problems: Vec<String>,
    pub events: usize,
    pub stock_events: usize,
    pub reservations_checked: usize,
    pub channel_reservations_checked: usize,
    /// Operations by kind and outcome.
    pub outcomes: BTreeMap<String, BTreeMap<&'static str, usize>>,
    /// Unknown outcomes found applied (at most once each, by the rules).
    pub unknown_applied: usize,
    pub unknown_not_applied: usize,
}

impl Findings {
    fn problem(&mut self, p: String) {
        if self.problems.len() < 200 {
            self.problems.push(p);
        }
    }
}

/// The log and the history: gaps, versions, folds, oversell, channel rules, and each
/// operation's presence.
pub fn check_ledger(log: &[Logged], rows: &[StockRow], ops: &[Op]) -> Findings {
    let mut f = Findings {
        events: log.len(),
        ..Findings::default()
    };
    // Gapless, unique.
    for (i, e) in log.iter().enumerate() {
        if e.offset != i as i64 + 1 {
            f.problem(format!(
                "the log has a gap: offset {} at position {}",
                e.offset,
                i + 1
            ));
            break;
        }
    }
    let mut ids = HashSet::new();
    for e in log {
        if !ids.insert(e.id().to_owned()) {
            f.problem(format!("event {} is in the log twice", e.id()));
        }
    }
    // Versions and the fold.
    let mut last: HashMap<(String, String), &Logged> = HashMap::new();
    for e in log.iter().filter(|e| e.is_stock()) {
        f.stock_events += 1;
        let key = e.key();
        let expected = last.get(&key).map_or(1, |p| p.int("version") + 1);
        if e.int("version") != expected {
            f.problem(format!(
                "{key:?}: version {} at offset {} (expected {expected})",
                e.int("version"),
                e.offset
            ));
        }
        if e.int("available") != e.int("on_hand") - e.int("reserved") || e.int("on_hand") < 0 {
            f.problem(format!(
                "offset {}: inconsistent levels {}",
                e.offset,
                e.data()
            ));
        }
        last.insert(key, e);
    }
    for row in rows {
        match last.get(&(row.store.clone(), row.sku.clone())) {
            Some(e)
                if e.int("on_hand") == row.on_hand
                    && e.int("reserved") == row.reserved
                    && e.int("version") == row.version => {}
            Some(e) => f.problem(format!(
                "stock row {}/{} ({}, {}, v{}) is not its last event ({})",
                row.store,
                row.sku,
                row.on_hand,
                row.reserved,
                row.version,
                e.data()
            )),
            None if row.version == 0 => {}
            None => f.problem(format!("stock row {}/{} has no events", row.store, row.sku)),
        }
    }
    check_reservations(log, &mut f);
    check_ops(log, ops, &mut f);
    f
}

/// The channel configuration in force, folded from the log.
#[derive(Default)]
struct Config {
    /// Location → its safety stock.
    locations: HashMap<String, i64>,
    /// (store, sku) → override.
    overrides: HashMap<(String, String), i64>,
}

fn check_reservations(log: &[Logged], f: &mut Findings) {
    let mut channels: HashMap<String, Config> = HashMap::new();
    // Per reservation: units held (reserved − released − fulfilled), in log order.
    let mut held: HashMap<String, i64> = HashMap::new();
    for e in log {
        let data = e.data();
        match e.event_type() {
            "CHANNEL_UPDATED" => {
                let c = channels.entry(e.text("channel_id").to_owned()).or_default();
                c.locations = data["locations"]
                    .as_array()
                    .map(|ls| {
                        ls.iter()
                            .map(|l| {
                                (
                                    l["store_id"].as_str().unwrap_or_default().to_owned(),
                                    l["safety_stock"].as_i64().unwrap_or(0),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            }
            "SAFETY_STOCK_SET" => {
                let c = channels.entry(e.text("channel_id").to_owned()).or_default();
                let key = e.key();
                match data["safety_stock"].as_i64() {
                    Some(n) => c.overrides.insert(key, n),
                    None => c.overrides.remove(&key),
                };
            }
            "RESERVED" => {
                f.reservations_checked += 1;
                if e.int("available") < 0 {
                    f.problem(format!("OVERSOLD at offset {}: {}", e.offset, data));
                }
                if let Some(channel) = data["channel"].as_str() {
                    f.channel_reservations_checked += 1;
                    let store = e.text("store_id");
                    match channels.get(channel) {
                        None => f.problem(format!(
                            "offset {}: a reservation through {channel:?}, which had no configuration then",
                            e.offset
                        )),
                        Some(c) => match c.locations.get(store) {
                            None => f.problem(format!(
                                "offset {}: a reservation through {channel:?} at {store:?}, not one of its locations then",
                                e.offset
                            )),
                            Some(default) => {
                                let safety = c.overrides.get(&e.key()).copied().unwrap_or(*default);
                                if e.int("available") < safety {
                                    f.problem(format!(
                                        "INTO SAFETY STOCK at offset {}: available {} after it, safety stock {safety} in force: {}",
                                        e.offset,
                                        e.int("available"),
                                        data
                                    ));
                                }
                            }
                        },
                    }
                }
                *held.entry(e.text("reservation_id").to_owned()).or_default() +=
                    e.int("quantity").abs();
            }
            "RELEASED" => {
                let h = held.entry(e.text("reservation_id").to_owned()).or_default();
                *h -= e.int("quantity").abs();
                if *h < 0 {
                    f.problem(format!(
                        "offset {}: released more than it held: {}",
                        e.offset, data
                    ));
                }
            }
            "ADJUSTED" if e.text("reason") == "fulfilled" => {
                let h = held.entry(e.text("reservation_id").to_owned()).or_default();
                *h -= e.int("quantity").abs();
                if *h < 0 {
                    f.problem(format!(
                        "offset {}: fulfilled more than it held: {}",
                        e.offset, data
                    ));
                }
            }
            _ => {}
        }
    }
}

/// What the log holds of the operations' effects, by the keys the operations name.
#[derive(Default)]
struct Effects<'a> {
    /// Reservations by order id (their own RESERVED events, not reallocations).
    by_order: HashMap<&'a str, HashSet<&'a str>>,
    /// Adjustments by external_ref.
    by_ref: HashMap<&'a str, Vec<&'a Logged>>,
    /// Reservations a client released (not a reallocation's move).
    released: HashSet<&'a str>,
    fulfilled: HashSet<&'a str>,
}

impl<'a> Effects<'a> {
    fn of(log: &'a [Logged]) -> Self {
        let mut x = Effects::default();
        for e in log.iter().filter(|e| e.is_stock()) {
            let data = e.data();
            match (e.event_type(), e.text("reason")) {
                ("RESERVED", reason) if reason != "reallocated" => {
                    if let (Some(o), Some(r)) =
                        (data["order_id"].as_str(), data["reservation_id"].as_str())
                    {
                        x.by_order.entry(o).or_default().insert(r);
                    }
                }
                ("RELEASED", reason) if reason != "reallocated" => {
                    if let Some(r) = data["reservation_id"].as_str() {
                        x.released.insert(r);
                    }
                }
                ("ADJUSTED", "fulfilled") => {
                    if let Some(r) = data["reservation_id"].as_str() {
                        x.fulfilled.insert(r);
                    }
                }
                ("ADJUSTED", _) => {
                    if let Some(r) = data["external_ref"].as_str() {
                        x.by_ref.entry(r).or_default().push(e);
                    }
                }
                _ => {}
            }
        }
        x
    }
}

fn check_ops(log: &[Logged], ops: &[Op], f: &mut Findings) {
    let Effects {
        by_order,
        by_ref,
        released,
        fulfilled,
    } = Effects::of(log);
    for op in ops {
        let outcome = match &op.outcome {
            Outcome::Ok { .. } => "ok",
            Outcome::Failed { .. } => "failed",
            Outcome::Unknown { .. } => "unknown",
        };
        *f.outcomes
            .entry(format!("{:?}", op.kind))
            .or_default()
            .entry(outcome)
            .or_default() += 1;
        if let Outcome::Unknown { detail } = &op.outcome {
            if detail.starts_with("500") || detail.starts_with("502") {
                f.problem(format!(
                    "op {} ({:?}) was answered {detail}",
                    op.key, op.kind
                ));
            }
        }
        let found: usize = match op.kind {
            Kind::ReserveStore | Kind::ReserveChannel => {
                let ids = by_order.get(op.key.as_str());
                if let (Outcome::Ok { answer }, Some(ids)) = (&op.outcome, ids) {
                    let id = answer["reservation_id"].as_str().unwrap_or_default();
                    if !ids.contains(id) {
                        f.problem(format!(
                            "order {}: acknowledged as {id}, logged as {ids:?}",
                            op.key
                        ));
                    }
                }
                ids.map_or(0, HashSet::len)
            }
            Kind::TillSale | Kind::StockIn | Kind::Count => {
                let events = by_ref.get(op.key.as_str()).map_or(&[][..], Vec::as_slice);
                if let Outcome::Ok { answer } = &op.outcome {
                    match answer["event_id"].as_str() {
                        // A count that changed nothing has no event.
                        None => {
                            if !events.is_empty() {
                                f.problem(format!(
                                    "adjustment {}: answered without an event, logged {} times",
                                    op.key,
                                    events.len()
                                ));
                            }
                            continue;
                        }
                        Some(id) => {
                            if events.len() != 1 || events[0].id() != id {
                                f.problem(format!(
                                    "adjustment {}: acknowledged as event {id}, logged {} times",
                                    op.key,
                                    events.len()
                                ));
                            }
                            continue;
                        }
                    }
                }
                events.len()
            }
            Kind::Release => usize::from(released.contains(op.key.as_str())),
            Kind::Fulfil => usize::from(fulfilled.contains(op.key.as_str())),
            Kind::SafetyStock | Kind::ChannelConfig => continue,
        };
        match &op.outcome {
            Outcome::Ok { .. } if found != 1 => f.problem(format!(
                "LOST or DOUBLED: acknowledged {:?} {} is in the log {found} times",
                op.kind, op.key
            )),
            Outcome::Unknown { .. } if found > 1 => f.problem(format!(
                "DOUBLED: {:?} {} of unknown outcome is in the log {found} times",
                op.kind, op.key
            )),
            Outcome::Unknown { .. } if op.kind.is_stock_write() => {
                if found == 1 {
                    f.unknown_applied += 1;
                } else {
                    f.unknown_not_applied += 1;
                }
            }
            // Each reservation is released or fulfilled by at most one operation,
            // so its events are that operation's too.
            Outcome::Failed { status, detail } if found > 0 => f.problem(format!(
                "APPLIED THOUGH FAILED: {:?} {} ({status} {detail}) is in the log {found} times",
                op.kind, op.key
            )),
            _ => {}
        }
    }
}

/// How one receiver (or the stream) compares with the log.
#[derive(Debug, Default, Serialize)]
pub struct Convergence {
    pub name: String,
    pub expected: usize,
    pub missing: usize,
    pub deliveries: usize,
    pub duplicates: usize,
    /// Deliveries of an older version of a (store, sku) after a newer one.
    pub out_of_order: usize,
}

/// A webhook endpoint's deliveries against the log's stock events.
pub fn check_receiver(name: &str, log: &[Logged], deliveries: &[Delivery]) -> Convergence {
    let expected: HashSet<&str> = log
        .iter()
        .filter(|e| e.is_stock())
        .map(Logged::id)
        .collect();
    let mut seen = HashSet::new();
    let mut newest: HashMap<(&str, &str), i64> = HashMap::new();
    let mut c = Convergence {
        name: name.to_owned(),
        expected: expected.len(),
        deliveries: deliveries.len(),
        ..Convergence::default()
    };
    for d in deliveries {
        if !seen.insert(d.event_id.as_str()) {
            c.duplicates += 1;
        }
        let top = newest
            .entry((d.store.as_str(), d.sku.as_str()))
            .or_insert(0);
        if d.version < *top {
            c.out_of_order += 1;
        }
        *top = (*top).max(d.version);
    }
    c.missing = expected.iter().filter(|id| !seen.contains(*id)).count();
    c
}

/// The stream's event ids against the log.
pub fn check_stream(log: &[Logged], stream: &[String]) -> (Convergence, usize) {
    let expected: HashSet<&str> = log.iter().map(Logged::id).collect();
    let mut seen = HashSet::new();
    let mut c = Convergence {
        name: "nats stream".into(),
        expected: expected.len(),
        deliveries: stream.len(),
        ..Convergence::default()
    };
    let mut foreign = 0;
    for id in stream {
        if !seen.insert(id.as_str()) {
            c.duplicates += 1;
        }
        if !expected.contains(id.as_str()) {
            foreign += 1;
        }
    }
    c.missing = expected.iter().filter(|id| !seen.contains(*id)).count();
    (c, foreign)
}

/// The last (available, version) of every (store, sku), for the storefronts.
pub fn last_levels(log: &[Logged]) -> HashMap<(String, String), (i64, i64)> {
    let mut out = HashMap::new();
    for e in log.iter().filter(|e| e.is_stock()) {
        out.insert(e.key(), (e.int("available"), e.int("version")));
    }
    out
}
