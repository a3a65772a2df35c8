//! `invsync check`: audits a running server. Every ledger level must equal the event
//! of its key with the same version, offsets must be gapless and versions consecutive
//! within the retained log, and the storefront projection, once caught up, must agree
//! with the ledger. Reads only; safe against a live server (it compares each row with
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

pub async fn run(client: &Client, wait: Duration) -> Result<Report, ClientError> {
    let mut report = Report::default();

    // 1. The snapshot, page by page, each with the offset it is consistent with.
    let mut rows: Vec<(Key, Value, i64)> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/stock/snapshot?limit=1000".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", crate::enc(a)));
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
    let snapshot_offset = rows.iter().map(|r| r.2).max().unwrap_or(0);

    // 2. The log up to (at least) the snapshot's offset, and then up to the versions
    //    the rows hold: on PostgreSQL a row may already reflect a change whose event
    //    the relay has not moved into the log yet, so keep reading (briefly) until
    //    every row's version is in the log.
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

    // 3. Each row against the event of its own version, and never behind the log as
    //    of its page's offset.
    let mut unverifiable = 0;
    for ((store, sku), row, page_offset) in &rows {
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
    for (k, h) in &histories {
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

    // 4. The storefront projection, once it has caught up with the snapshot.
    check_storefront(
        client,
        wait,
        snapshot_offset,
        &rows,
        &histories,
        &mut report,
    )
    .await?;
    Ok(report)
}

async fn check_storefront(
    client: &Client,
    wait: Duration,
    snapshot_offset: i64,
    rows: &[(Key, Value, i64)],
    histories: &HashMap<Key, History>,
    report: &mut Report,
) -> Result<(), ClientError> {
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
            return Ok(());
        };
        let position = storefront["position"].as_i64().unwrap_or(0);
        if position >= snapshot_offset {
            break;
        }
        if Instant::now() >= deadline {
            report.problem(format!(
                "storefront: still at offset {position}, behind the ledger's {snapshot_offset} after {wait:?}"
            ));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut view: HashMap<Key, Value> = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/storefront/rows?limit=1000".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", crate::enc(a)));
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
    Ok(())
}
