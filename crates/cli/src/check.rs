//! `invsync check`: audits a running server. Every ledger level must equal the event
//! of its key with the same version, offsets must be gapless and versions consecutive
//! within the retained log, and the storefront projection, once caught up, must agree
//! with the ledger, its channel availability too. Reads only; safe against a live server (it compares each row with
//! the log as of the offset the row's snapshot page names).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::client::{Client, ClientError};

type Key = (String, String);

/// Levels as (on_hand, reserved, available).
type Levels = (i64, i64, i64);

#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    fn problem(&mut self, p: String) {
        if self.problems.len() < 1000 {
            self.problems.push(p);
        }
    }
}

/// One key's retained events: version → (offset, levels).
#[derive(Debug, Default)]
struct History(BTreeMap<i64, (i64, Levels)>);

impl History {
    /// The last event at or before `offset`.
    fn at(&self, offset: i64) -> Option<(i64, Levels)> {
        self.0
            .iter()
            .rev()
            .find(|(_, (o, _))| *o <= offset)
            .map(|(v, (_, l))| (*v, *l))
    }
}

fn levels(v: &Value) -> Levels {
    (
        v["on_hand"].as_i64().unwrap_or(-1),
        v["reserved"].as_i64().unwrap_or(-1),
        v["available"].as_i64().unwrap_or(i64::MIN),
    )
}

fn key(v: &Value, store: &str, sku: &str) -> Key {
    (
        v[store].as_str().unwrap_or("?").to_owned(),
        v[sku].as_str().unwrap_or("?").to_owned(),
    )
}

/// Runs every check against the server behind `client`: the ledger's rows against
/// their events, the log's offsets and versions, the storefront against the ledger,
/// and every channel's availability against the formula.
pub async fn run(client: &Client, wait: Duration) -> Result<Report, ClientError> {
    let mut report = Report::default();
    let rows = read_snapshot(client).await?;
    let snapshot_offset = rows.iter().map(|r| r.2).max().unwrap_or(0);
    let log = read_log(client, wait, &rows, snapshot_offset, &mut report).await?;
    check_rows(&rows, &log, snapshot_offset, &mut report);
    let histories = log.histories;

    // 4. The storefront projection, once it has caught up with the snapshot; then
    // 5. its channel availability against the formula, from the ledger's rows.
    let caught_up = check_storefront(
        client,
        wait,
        snapshot_offset,
        &rows,
        &histories,
        &mut report,
    )
    .await?;
    if caught_up {
        check_channels(client, &rows, &mut report).await?;
    }
    Ok(report)
}

/// A ledger row of the snapshot: its key, the row, and the log offset its page is
/// consistent with.
type SnapshotRow = (Key, Value, i64);

/// 1. The snapshot, page by page, each with the offset it is consistent with.
async fn read_snapshot(client: &Client) -> Result<Vec<SnapshotRow>, ClientError> {
    let mut rows: Vec<SnapshotRow> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/stock/snapshot?limit=1000".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", crate::client::enc(a)));
        }
        let (_, page) = client.call(Method::GET, &path, None).await?;
        let log_offset = page["log_offset"].as_i64().unwrap_or(0);
        for item in page["items"].as_array().into_iter().flatten() {
            rows.push((key(item, "store_id", "sku"), item.clone(), log_offset));
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    Ok(rows)
}

/// What the log says: each key's history, the last offset read, the oldest retained
/// and how many events were read.
struct Log {
    histories: HashMap<Key, History>,
    cursor: i64,
    oldest: i64,
    events: usize,
}

/// 2. The log up to (at least) the snapshot's offset, and then up to the versions the
///    rows hold: on PostgreSQL a row may already reflect a change whose event is not
///    in the log yet, so keep reading (briefly) until every row's version is in it.
///    Offsets must have no gap, and each key's versions rise by one.
async fn read_log(
    client: &Client,
    wait: Duration,
    rows: &[SnapshotRow],
    snapshot_offset: i64,
    report: &mut Report,
) -> Result<Log, ClientError> {
    let mut histories: HashMap<Key, History> = HashMap::new();
    let (mut cursor, oldest) = match client
        .call(Method::GET, "/v1/events?after=0&limit=1", None)
        .await
    {
        Ok(_) => (0, 1),
        Err(ClientError::Problem {
            status: StatusCode::GONE,
            body,
            ..
        }) => {
            let oldest = body["oldest_offset"].as_i64().unwrap_or(1);
            report
                .notes
                .push(format!("events before offset {oldest} are past retention"));
            (oldest - 1, oldest)
        }
        Err(e) => return Err(e),
    };
    let mut events = 0;
    let deadline = Instant::now() + wait;
    loop {
        let (_, page) = client
            .call(
                Method::GET,
                &format!("/v1/events?after={cursor}&limit=1000"),
                None,
            )
            .await?;
        let list = page["events"].as_array().cloned().unwrap_or_default();
        for e in &list {
            let offset = e["offset"].as_i64().unwrap_or(-1);
            if offset != cursor + 1 {
                report.problem(format!("offset gap: {cursor} is followed by {offset}"));
            }
            cursor = offset;
            events += 1;
            // Only stock events carry levels; other types (a channel's configuration)
            // count for the offsets alone.
            let stock = e["event"]["type"]
                .as_str()
                .is_some_and(invsync_core::CloudEvent::is_stock_event);
            if !stock {
                continue;
            }
            let d = &e["event"]["data"];
            let history = histories
                .entry(key(d, "store_id", "product_sku"))
                .or_default();
            let version = d["version"].as_i64().unwrap_or(-1);
            if let Some((&last, _)) = history.0.last_key_value() {
                if version != last + 1 {
                    report.problem(format!(
                        "{}/{}: version {version} at offset {offset} follows version {last}",
                        d["store_id"].as_str().unwrap_or("?"),
                        d["product_sku"].as_str().unwrap_or("?")
                    ));
                }
            }
            history.0.insert(version, (offset, levels(d)));
        }
        if !list.is_empty() {
            continue;
        }
        let behind = rows.iter().any(|((st, sk), row, _)| {
            let newest = histories
                .get(&(st.clone(), sk.clone()))
                .and_then(|h| h.0.last_key_value().map(|(v, _)| *v));
            newest.is_some_and(|v| v < row["version"].as_i64().unwrap_or(0))
        });
        if cursor >= snapshot_offset && !behind {
            break;
        }
        if Instant::now() >= deadline {
            report.problem(format!(
                "the log ends at offset {cursor} but the rows reflect later changes"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Log {
        histories,
        cursor,
        oldest,
        events,
    })
}

/// 3. Each row against the event of its own version, and never behind the log as of
///    its page's offset; no key with events but no row.
fn check_rows(rows: &[SnapshotRow], log: &Log, snapshot_offset: i64, report: &mut Report) {
    let Log {
        histories,
        cursor,
        oldest,
        events,
    } = log;
    let (cursor, oldest) = (*cursor, *oldest);
    let mut unverifiable = 0;
    for ((store, sku), row, page_offset) in rows {
        let name = format!("{store}/{sku}");
        let version = row["version"].as_i64().unwrap_or(-1);
        let Some(history) = histories.get(&(store.clone(), sku.clone())) else {
            if oldest == 1 {
                report.problem(format!("{name}: a ledger row with no event in the log"));
            } else {
                unverifiable += 1;
            }
            continue;
        };
        if let Some((v, _)) = history.at(*page_offset) {
            if v > version {
                report.problem(format!(
                    "{name}: the ledger row is at version {version}, behind the log's {v}"
                ));
                continue;
            }
        }
        match history.0.get(&version) {
            Some((_, expected)) if levels(row) != *expected => report.problem(format!(
                "{name}: the ledger holds (on_hand, reserved, available) {:?} at version {version}, its event says {expected:?}",
                levels(row)
            )),
            Some(_) => {}
            None if history.0.keys().next().is_some_and(|first| *first > version) => unverifiable += 1,
            None => report.problem(format!("{name}: version {version} has no event in the log")),
        }
    }
    let row_keys: std::collections::HashSet<&Key> = rows.iter().map(|r| &r.0).collect();
    for (k, h) in histories {
        if !row_keys.contains(k) && h.at(snapshot_offset).is_some() {
            report.problem(format!(
                "{}/{}: events in the log but no ledger row",
                k.0, k.1
            ));
        }
    }
    report.notes.push(format!(
        "ledger: {} rows checked against {events} events (offsets {}..={cursor}){}",
        rows.len(),
        oldest,
        if unverifiable > 0 {
            format!(", {unverifiable} rows whose events are all past retention")
        } else {
            String::new()
        }
    ));
}

/// The storefront's channel availability, for every channel and every SKU the ledger
/// has, against channels.md's formula computed from the ledger: per location
/// `max(0, available − safety stock)` (the SKU's override, else the location's), and
/// their sum. A location whose projected row is at another version than the
/// snapshot's (a live server moved on) is not compared, and counted in a note.
async fn check_channels(
    client: &Client,
    rows: &[(Key, Value, i64)],
    report: &mut Report,
) -> Result<(), ClientError> {
    let (_, listed) = client.call(Method::GET, "/v1/channels", None).await?;
    let channels = listed["items"].as_array().cloned().unwrap_or_default();
    let ledger: HashMap<&Key, (i64, i64)> = rows
        .iter()
        .map(|(k, row, _)| {
            let available = row["available"].as_i64().unwrap_or(i64::MIN);
            (k, (available, row["version"].as_i64().unwrap_or(-1)))
        })
        .collect();
    let mut skus: Vec<&str> = rows.iter().map(|((_, sku), _, _)| sku.as_str()).collect();
    skus.sort_unstable();
    skus.dedup();
    let (mut compared, mut moved_on) = (0, 0);
    for channel in &channels {
        let id = channel["channel_id"].as_str().unwrap_or("?");
        let (_, overrides) = client
            .call(
                Method::GET,
                &format!("/v1/channels/{}/safety-stock", crate::client::enc(id)),
                None,
            )
            .await?;
        let overrides: HashMap<Key, i64> = overrides["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                (
                    key(o, "store_id", "sku"),
                    o["safety_stock"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        let defaults: HashMap<&str, i64> = channel["locations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                let store = l["store_id"].as_str().unwrap_or("?");
                (store, l["safety_stock"].as_i64().unwrap_or(0))
            })
            .collect();
        // Up to 100 SKUs a request; a SKU holding a comma is asked on its own route.
        let (listed, alone): (Vec<&str>, Vec<&str>) = skus.iter().partition(|s| !s.contains(','));
        let channel_q = format!("channel={}", crate::client::enc(id));
        let paths = listed
            .chunks(100)
            .map(|chunk| {
                let list: Vec<String> = chunk.iter().map(|s| crate::client::enc(s)).collect();
                format!(
                    "/v1/storefront/availability?skus={}&{channel_q}",
                    list.join(",")
                )
            })
            .chain(alone.iter().map(|s| {
                format!(
                    "/v1/storefront/availability/{}?{channel_q}",
                    crate::client::enc(s)
                )
            }));
        for path in paths {
            let (_, page) = client.call(Method::GET, &path, None).await?;
            let items = match page["items"].as_array() {
                Some(items) => items.clone(),
                None => vec![page],
            };
            for item in &items {
                let (c, m) = compare_item(item, id, &defaults, &overrides, &ledger, report);
                compared += c;
                moved_on += m;
            }
        }
    }
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    report.notes.push(format!(
        "channels: {} compared with the formula ({}, {}){}",
        count(compared, "location figure"),
        count(channels.len(), "channel"),
        count(skus.len(), "SKU"),
        if moved_on > 0 {
            format!(", {moved_on} skipped (changed since the snapshot)")
        } else {
            String::new()
        }
    ));
    Ok(())
}

/// One SKU of one channel as the storefront shows it, against the formula computed
/// from the ledger's rows. Returns how many location figures were compared, and how
/// many were skipped because the row changed since the snapshot.
fn compare_item(
    item: &Value,
    id: &str,
    defaults: &HashMap<&str, i64>,
    overrides: &HashMap<Key, i64>,
    ledger: &HashMap<&Key, (i64, i64)>,
    report: &mut Report,
) -> (usize, usize) {
    let (mut compared, mut moved_on) = (0, 0);
    let sku = item["sku"].as_str().unwrap_or("?");
    let name = format!("storefront channel {id} {sku}");
    let stores = item["stores"].as_array().cloned().unwrap_or_default();
    if stores.len() != defaults.len() {
        report.problem(format!(
            "{name}: {} locations, the channel has {}",
            stores.len(),
            defaults.len()
        ));
    }
    let total: i64 = stores.iter().filter_map(|s| s["available"].as_i64()).sum();
    if item["available"].as_i64() != Some(total) {
        report.problem(format!(
            "{name}: available {} is not the sum of its locations' {total}",
            item["available"]
        ));
    }
    for s in &stores {
        let store = s["store_id"].as_str().unwrap_or("?");
        let k = (store.to_owned(), sku.to_owned());
        let (available, version) = ledger.get(&k).copied().unwrap_or((0, 0));
        if s["version"].as_i64() != Some(version) {
            moved_on += 1;
            continue;
        }
        let Some(default) = defaults.get(store) else {
            report.problem(format!("{name}: {store} is not a location of it"));
            continue;
        };
        let safety = overrides.get(&k).copied().unwrap_or(*default);
        let expected = (available - safety).max(0);
        compared += 1;
        if s["available"].as_i64() != Some(expected) {
            report.problem(format!(
                "{name} at {store}: shows {}, the ledger's available {available} less safety stock {safety} gives {expected}",
                s["available"]
            ));
        }
    }
    (compared, moved_on)
}

async fn check_storefront(
    client: &Client,
    wait: Duration,
    snapshot_offset: i64,
    rows: &[(Key, Value, i64)],
    histories: &HashMap<Key, History>,
    report: &mut Report,
) -> Result<bool, ClientError> {
    let deadline = Instant::now() + wait;
    loop {
        let (_, consumers) = client.call(Method::GET, "/v1/consumers", None).await?;
        let storefront = consumers["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "storefront")
            .cloned();
        let Some(storefront) = storefront else {
            report
                .notes
                .push("storefront: not running on this server".into());
            return Ok(false);
        };
        let position = storefront["position"].as_i64().unwrap_or(0);
        if position >= snapshot_offset {
            break;
        }
        if Instant::now() >= deadline {
            report.problem(format!(
                "storefront: still at offset {position}, behind the ledger's {snapshot_offset} after {wait:?}"
            ));
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut view: HashMap<Key, Value> = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/storefront/rows?limit=1000".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", crate::client::enc(a)));
        }
        let (_, page) = client.call(Method::GET, &path, None).await?;
        for item in page["items"].as_array().into_iter().flatten() {
            view.insert(key(item, "store_id", "sku"), item.clone());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    for ((store, sku), row, _) in rows {
        let name = format!("storefront {store}/{sku}");
        let Some(seen) = view.get(&(store.clone(), sku.clone())) else {
            report.problem(format!("{name}: missing from the projection"));
            continue;
        };
        let (version, ledger_version) = (
            seen["version"].as_i64().unwrap_or(-1),
            row["version"].as_i64().unwrap_or(-1),
        );
        if version < ledger_version {
            report.problem(format!(
                "{name}: at version {version}, the ledger at {ledger_version}"
            ));
        } else if version == ledger_version && levels(seen) != levels(row) {
            report.problem(format!(
                "{name}: shows {:?}, the ledger {:?}",
                levels(seen),
                levels(row)
            ));
        } else if let Some((_, expected)) = histories
            .get(&(store.clone(), sku.clone()))
            .and_then(|h| h.0.get(&version))
        {
            if levels(seen) != *expected {
                report.problem(format!(
                    "{name}: shows {:?} at version {version}, its event says {expected:?}",
                    levels(seen)
                ));
            }
        }
    }
    if view.len() > rows.len() {
        report.problem(format!(
            "storefront: {} rows, the ledger has {}",
            view.len(),
            rows.len()
        ));
    }
    report.notes.push(format!(
        "storefront: {} rows compared with the ledger",
        view.len()
    ));
    Ok(true)
}
