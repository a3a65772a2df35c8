//! The event pipeline end to end, with the server as a child process: storefront
//! visibility, the webhook connector against a real receiver (signatures, per-SKU
//! order, transient and permanent failures, dead letters, redrive), SIGKILL in the
//! middle of delivery, replay, retention, SSE resumption, and `invsync check`.

// Tests fail loudly on anything unexpected.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::receiver::{
    args, assert_check_passes, assert_per_sku_order, webhook_flags, Receiver, Seen,
};
use common::{
    adjust, all_events, client, eventually, get, post, private_postgres, put, storefront_caught_up,
    Server, BIN,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_becomes_visible_in_the_storefront() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (http, url) = (client(), server.url.clone());
    adjust(&http, &url, "S1", "VIS", 1000).await;
    adjust(&http, &url, "S2", "VIS", 5).await;
    let mut latencies = Vec::new();
    for i in 0..300 {
        let body = json!({"order_id": format!("V-{i}"), "store_id": "S1", "lines": [{"sku": "VIS", "quantity": 1}]});
        let (status, _) = post(&http, &format!("{url}/v1/reservations"), body).await;
        assert_eq!(status, 201);
        let acknowledged = Instant::now();
        let expected = 1000 - i - 1;
        let view = eventually("the storefront shows the reservation", WAIT, || async {
            let (_, v) = get(&http, &format!("{url}/v1/storefront/availability/VIS")).await;
            (v["stores"][0]["available"] == expected).then_some(v)
        })
        .await;
        latencies.push(acknowledged.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(
            view["available"],
            expected + 5,
            "the top-level sum covers every store"
        );
        assert_eq!(view["stores"][1]["available"], 5);
    }
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "storefront visibility over {} reservations: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    // Caught up is reported just after the view commits: wait for it, then for the
    // gauge that follows it.
    eventually("the storefront reports it caught up", WAIT, || async {
        storefront_caught_up(&http, &url).await.then_some(())
    })
    .await;
    let metrics = eventually("the lag gauge reaches 0", WAIT, || async {
        let m = common::metrics_text(&http, &url).await;
        m.contains("invsync_consumer_lag_events{consumer=\"storefront\"} 0")
            .then_some(m)
    })
    .await;
    for name in [
        "invsync_reservations_total",
        "invsync_request_duration_seconds",
        "invsync_outbox_backlog",
        "invsync_outbox_oldest_age_seconds",
        "invsync_consumer_lag_events",
        "invsync_consumer_lag_seconds",
        "invsync_sync_latency_seconds",
        "invsync_sla_breaches_total",
        "invsync_dead_letters",
        "invsync_stock_shortages",
        "invsync_bus_up",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "/metrics has {name}"
        );
    }
    let (_, consumers) = get(&http, &format!("{url}/v1/consumers")).await;
    let storefront = &consumers["items"][0];
    assert_eq!(storefront["name"], "storefront");
    assert!(storefront["sync_latency_p99_ms"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_delivers_every_event_signed_in_per_sku_order_through_an_outage() {
    let receiver = Receiver::default();
    // The receiver answers 503 for the first 1.5 s: everything must still arrive.
    receiver.behaviour.lock().unwrap().unavailable_until =
        Some(Instant::now() + Duration::from_millis(1500));
    let hook = receiver.clone().start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &args(&webhook_flags(&hook)));
    let (http, url) = (client(), server.url.clone());
    for k in 0..10 {
        adjust(&http, &url, "S1", &format!("W{k}"), 100).await;
    }
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"order_id": format!("W-{i}"), "store_id": "S1", "lines": [{"sku": format!("W{}", i % 10), "quantity": 1}]});
            post(&http, &format!("{url}/v1/reservations"), body).await.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    // While the receiver refuses, the consumer shows its lag and why.
    let stuck = eventually("the webhook consumer reports the outage", WAIT, || async {
        let (_, v) = get(&http, &format!("{url}/v1/consumers")).await;
        let webhook = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "webhook")
            .cloned()
            .unwrap();
        webhook["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503"))
            .then_some(webhook)
    })
    .await;
    assert!(stuck["lag_events"].as_i64().unwrap() > 0, "{stuck}");
    let logged: HashSet<String> = all_events(&http, &url)
        .await
        .into_iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(logged.len(), 210);
    eventually("every event reaches the receiver", WAIT, || async {
        (receiver.accepted_ids() == logged).then_some(())
    })
    .await;
    let seen = receiver.seen.lock().unwrap();
    assert!(
        seen.requests > seen.accepted.len(),
        "the outage was exercised ({} requests)",
        seen.requests
    );
    assert_eq!(
        seen.bad_signatures, 0,
        "every request carried a valid signature"
    );
    assert_eq!(
        seen.accepted.len(),
        210,
        "nothing lost, nothing accepted twice"
    );
    assert_per_sku_order(&seen);
}

/// A receiver answering a redirect never gets the event re-sent elsewhere (307/308)
/// or turned into a body-less GET that "succeeds" (301/302/303): each is a permanent
/// failure, dead-lettered with a clear error, and later events still flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_never_followed_and_are_dead_lettered() {
    let receiver = Receiver::default();
    let codes = [301u16, 302, 303, 307, 308];
    receiver.behaviour.lock().unwrap().redirect_refs =
        codes.iter().map(|c| (format!("R{c}"), *c)).collect();
    let hook = receiver.clone().start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &args(&webhook_flags(&hook)));
    let (http, url) = (client(), server.url.clone());
    for c in codes {
        let body = json!({"store_id": "S1", "sku": format!("K{c}"), "delta": 1, "reason": "stock_in", "external_ref": format!("R{c}")});
        assert_eq!(
            post(&http, &format!("{url}/v1/adjustments"), body).await.0,
            200
        );
    }
    adjust(&http, &url, "S1", "FINE", 1).await;
    let letters = eventually("every redirected event is dead-lettered", WAIT, || async {
        let (_, v) = get(&http, &format!("{url}/v1/dead-letters?consumer=webhook")).await;
        let items = v["items"].as_array().unwrap().clone();
        (items.len() == codes.len()).then_some(items)
    })
    .await;
    for letter in &letters {
        let error = letter["last_error"].as_str().unwrap();
        assert!(
            error.contains("redirect") && error.contains("not followed"),
            "{error}"
        );
    }
    eventually("the next event still arrives", WAIT, || async {
        let seen = receiver.seen.lock().unwrap();
        seen.accepted.iter().any(|a| a.2 == "FINE").then_some(())
    })
    .await;
    assert_eq!(
        receiver.seen.lock().unwrap().redirected_hits,
        0,
        "nothing was re-sent elsewhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_goes_to_the_dead_letters_alone_and_redrive_delivers_it() {
    let receiver = Receiver::default();
    receiver.behaviour.lock().unwrap().reject_ref = Some("POISON".into());
    let hook = receiver.clone().start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &args(&webhook_flags(&hook)));
    let (http, url) = (client(), server.url.clone());
    adjust(&http, &url, "S1", "P", 10).await;
    let poison = json!({"store_id": "S1", "sku": "P", "delta": 1, "reason": "stock_in", "external_ref": "POISON"});
    assert_eq!(
        post(&http, &format!("{url}/v1/adjustments"), poison)
            .await
            .0,
        200
    );
    adjust(&http, &url, "S1", "P", 2).await; // the same SKU, after the poison
    adjust(&http, &url, "Store #1", "TSHIRT RED/XL", 3).await; // another SKU, a real-world id

    let letters = eventually("the refused event is dead-lettered", WAIT, || async {
        let (_, v) = get(&http, &format!("{url}/v1/dead-letters?consumer=webhook")).await;
        let items = v["items"].as_array().unwrap().clone();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(letters.len(), 1, "exactly that event");
    assert_eq!(letters[0]["event"]["data"]["external_ref"], "POISON");
    assert_eq!(
        letters[0]["attempts"], 3,
        "a permanent failure gets 3 attempts"
    );
    assert!(letters[0]["last_error"].as_str().unwrap().contains("422"));
    eventually("the following events still arrive", WAIT, || async {
        (receiver.seen.lock().unwrap().accepted.len() == 3).then_some(())
    })
    .await;
    // The webhook carries ids exactly as they were given.
    assert!(receiver
        .seen
        .lock()
        .unwrap()
        .accepted
        .iter()
        .any(|(_, store, sku, _)| { store == "Store #1" && sku == "TSHIRT RED/XL" }));
    // The status count follows the commit the listing reads: wait for it.
    eventually(
        "the webhook consumer counts the dead letter",
        WAIT,
        || async {
            let (_, v) = get(&http, &format!("{url}/v1/consumers")).await;
            let items = v["items"].as_array().unwrap().clone();
            items
                .iter()
                .any(|c| c["name"] == "webhook" && c["dead_letters"] == 1)
                .then_some(())
        },
    )
    .await;
    let (_, storefront_letters) =
        get(&http, &format!("{url}/v1/dead-letters?consumer=storefront")).await;
    assert_eq!(storefront_letters["items"].as_array().unwrap().len(), 0);

    // The receiver already got a newer version of S1/P (the adjustment after the
    // poison): a plain redrive is refused, saying so (exit 1, nothing sent).
    let id = letters[0]["id"].as_str().unwrap();
    let cli = |force: bool| {
        let mut args = vec!["dead-letters", "redrive", id, "--url", &url];
        if force {
            args.push("--force");
        }
        std::process::Command::new(common::BIN)
            .args(args)
            .output()
            .unwrap()
    };
    let requests = receiver.seen.lock().unwrap().requests;
    let refused = tokio::task::block_in_place(|| cli(false));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already received version 3 of S1/P")
            && stderr.contains("version 2")
            && stderr.contains("force"),
        "{stderr}"
    );
    assert_eq!(
        receiver.seen.lock().unwrap().requests,
        requests,
        "nothing sent"
    );

    // Forced while the receiver still refuses it, `invsync dead-letters redrive`
    // waits for the outcome and says it failed (exit 1), with the receiver's answer.
    let redrive = || cli(true);
    let failed = tokio::task::block_in_place(redrive);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("failed") && stderr.contains("422"),
        "{stderr}"
    );

    // The receiver learns the location; a redrive delivers the event and clears it.
    receiver.behaviour.lock().unwrap().reject_ref = None;
    let delivered = tokio::task::block_in_place(redrive);
    assert_eq!(
        delivered.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&delivered.stderr)
    );
    assert!(String::from_utf8_lossy(&delivered.stdout).contains("delivered"));
    eventually("the redriven event arrives", WAIT, || async {
        (receiver.seen.lock().unwrap().accepted.len() == 4).then_some(())
    })
    .await;
    eventually("the dead letter is gone", WAIT, || async {
        let (_, v) = get(&http, &format!("{url}/v1/dead-letters")).await;
        v["items"].as_array().unwrap().is_empty().then_some(())
    })
    .await;
    let (status, _) = post(
        &http,
        &format!("{url}/v1/dead-letters/{id}/redrive"),
        json!(null),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_delivery_skips_nothing_and_applies_nothing_twice() {
    let receiver = Receiver::default();
    receiver.behaviour.lock().unwrap().delay = Duration::from_millis(3);
    let hook = receiver.clone().start().await;
    let dir = tempfile::tempdir().unwrap();
    let flags = webhook_flags(&hook);
    let mut server = Server::start(dir.path(), &args(&flags));
    let (http, url) = (client(), server.url.clone());
    let items: Vec<Value> = (0..600)
        .map(|i| json!({"store_id": "S1", "sku": format!("K{}", i % 40), "delta": 1, "reason": "stock_in"}))
        .collect();
    assert_eq!(
        post(
            &http,
            &format!("{url}/v1/adjustments/batch"),
            json!({"items": items})
        )
        .await
        .0,
        200
    );
    // Kill while the slow receiver is part-way through the backlog.
    eventually("delivery is under way", WAIT, || async {
        (receiver.seen.lock().unwrap().accepted.len() >= 100).then_some(())
    })
    .await;
    server.kill();
    let before_restart = receiver.seen.lock().unwrap().accepted.len();
    assert!(
        before_restart < 600,
        "killed mid-delivery ({before_restart} of 600)"
    );

    receiver.behaviour.lock().unwrap().delay = Duration::ZERO;
    let server = Server::start(dir.path(), &args(&flags));
    let url = server.url.clone();
    let logged: HashSet<String> = all_events(&http, &url)
        .await
        .into_iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_owned())
        .collect();
    eventually(
        "every event is delivered after the restart",
        WAIT,
        || async { (receiver.accepted_ids() == logged).then_some(()) },
    )
    .await;
    let accepted = receiver.seen.lock().unwrap().accepted.clone();
    // At least once: only the batch in flight at the kill may be delivered again, and a
    // receiver deduplicating by X-Invsync-Event-Id applies each event exactly once.
    let duplicates = accepted.len() - logged.len();
    assert!(duplicates <= 1000, "{duplicates} duplicates");
    let mut first_seen = HashSet::new();
    let deduplicated: Vec<_> = accepted
        .iter()
        .filter(|a| first_seen.insert(a.0.clone()))
        .cloned()
        .collect();
    assert_per_sku_order(&Seen {
        accepted: deduplicated,
        ..Seen::default()
    });
    // The storefront, in the same process, converged exactly.
    eventually("the storefront catches up", WAIT, || async {
        storefront_caught_up(&http, &url).await.then_some(())
    })
    .await;
    assert_check_passes(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_an_identical_storefront_and_redelivers_webhook_events() {
    let receiver = Receiver::default();
    let hook = receiver.clone().start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &args(&webhook_flags(&hook)));
    let (http, url) = (client(), server.url.clone());
    for k in 0..20 {
        adjust(
            &http,
            &url,
            &format!("S{}", k % 3),
            &format!("R{k}"),
            10 + k,
        )
        .await;
    }
    eventually("caught up", WAIT, || async {
        (storefront_caught_up(&http, &url).await
            && receiver.seen.lock().unwrap().accepted.len() == 20)
            .then_some(())
    })
    .await;
    let view = |http: reqwest::Client, url: String| async move {
        let (_, v) = get(&http, &format!("{url}/v1/storefront/rows?limit=1000")).await;
        v["items"].clone()
    };
    let original = view(http.clone(), url.clone()).await;
    assert_eq!(original.as_array().unwrap().len(), 20);

    // Damage the view behind the projection's back; a replay must rebuild it.
    let db = rusqlite_free_update(
        &dir.path().join("storefront.db"),
        "UPDATE availability SET available = -999",
    );
    assert!(db > 0);
    assert_ne!(view(http.clone(), url.clone()).await, original);
    let (status, _) = post(
        &http,
        &format!("{url}/v1/consumers/storefront/replay"),
        json!({"from_offset": 1}),
    )
    .await;
    assert_eq!(status, 202);
    eventually(
        "the rebuilt storefront equals the original",
        WAIT,
        || async { (view(http.clone(), url.clone()).await == original).then_some(()) },
    )
    .await;

    // The webhook re-delivers from offset 15: events 15..=20 arrive again.
    let (status, _) = post(
        &http,
        &format!("{url}/v1/consumers/webhook/replay"),
        json!({"from_offset": 15}),
    )
    .await;
    assert_eq!(status, 202);
    eventually("the webhook replays from offset 15", WAIT, || async {
        (receiver.seen.lock().unwrap().accepted.len() == 26).then_some(())
    })
    .await;
    let accepted = receiver.seen.lock().unwrap().accepted.clone();
    // Different SKUs are delivered in parallel, so compare as sets.
    let replayed: std::collections::BTreeSet<String> =
        accepted[20..].iter().map(|a| a.2.clone()).collect();
    let expected: std::collections::BTreeSet<String> = (14..20).map(|k| format!("R{k}")).collect();
    assert_eq!(replayed, expected);
    // By time: from the first event at or after event 18's time, 18..=20 come again.
    let events = all_events(&http, &url).await;
    let since = events[17].1["time"].as_str().unwrap().to_owned();
    let (status, _) = post(
        &http,
        &format!("{url}/v1/consumers/webhook/replay"),
        json!({"since": since}),
    )
    .await;
    assert_eq!(status, 202);
    eventually("the webhook replays since a time", WAIT, || async {
        (receiver.seen.lock().unwrap().accepted.len() == 29).then_some(())
    })
    .await;
    let again: std::collections::BTreeSet<String> = receiver.seen.lock().unwrap().accepted[26..]
        .iter()
        .map(|a| a.2.clone())
        .collect();
    assert_eq!(again, (17..20).map(|k| format!("R{k}")).collect());
    let (status, body) = post(
        &http,
        &format!("{url}/v1/consumers/nobody/replay"),
        json!({"from_offset": 1}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = post(
        &http,
        &format!("{url}/v1/consumers/webhook/replay"),
        json!({"from_offset": 0}),
    )
    .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("from_offset")));
}

/// Writes to a SQLite file with the `sqlite3`-compatible Python module (the test does
/// not link SQLite itself); returns the number of changed rows.
fn rusqlite_free_update(path: &std::path::Path, sql: &str) -> i64 {
    let script = format!(
        "import sqlite3; c = sqlite3.connect({:?}, timeout=10); n = c.execute({:?}).rowcount; c.commit(); print(n)",
        path.to_str().unwrap(),
        sql
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_old_events_and_a_new_storefront_bootstraps_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--retention", "1s"]);
    let (http, url) = (client(), server.url.clone());
    // A channel and an override: their events pass retention too, and the rebuilt
    // storefront must still know them (offsets 1 and 2).
    let online = json!({"allocation": "priority", "split": "by_unit",
        "locations": [{"store_id": "S1", "safety_stock": 1}, {"store_id": "S2", "priority": 2}]});
    assert_eq!(
        put(&http, &format!("{url}/v1/channels/online"), online)
            .await
            .0,
        200
    );
    let buffer = json!({"items": [{"store_id": "S1", "sku": "T3", "safety_stock": 3}]});
    let path = format!("{url}/v1/channels/online/safety-stock");
    assert_eq!(put(&http, &path, buffer).await.0, 200);
    for k in 0..5 {
        adjust(&http, &url, "S1", &format!("T{k}"), 1 + k).await;
    }
    // The janitor purges events as they pass retention; wait until all seven have.
    let gone = eventually("the janitor purges past retention", WAIT, || async {
        let (status, body) = get(&http, &format!("{url}/v1/events?after=0")).await;
        (status == 410 && body["oldest_offset"] == 8).then_some(body)
    })
    .await;
    assert_eq!(gone["code"], "gone");
    adjust(&http, &url, "S1", "T0", 1).await;
    let (status, page) = get(&http, &format!("{url}/v1/events?after=7")).await;
    assert_eq!(
        (status, page["events"][0]["offset"].as_i64()),
        (200, Some(8))
    );

    // A storefront that starts from nothing while the log no longer reaches back to
    // offset 1 must bootstrap from the snapshot.
    server.kill();
    for f in ["storefront.db", "storefront.db-wal", "storefront.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let server = Server::start(dir.path(), &["--retention", "1s"]);
    let url = server.url.clone();
    let view = eventually("the storefront is rebuilt", WAIT, || async {
        let (_, v) = get(&http, &format!("{url}/v1/storefront/rows")).await;
        (v["items"].as_array().is_some_and(|a| a.len() == 5)).then_some(v)
    })
    .await;
    let t0 = view["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["sku"] == "T0")
        .unwrap()
        .clone();
    assert_eq!(
        (t0["on_hand"].as_i64(), t0["version"].as_i64()),
        (Some(2), Some(2))
    );
    // The channel and its override came with the snapshot: S1 keeps 1 of T0's 2 and
    // 3 of T3's 4 for walk-in customers; S2 has no rows.
    let (_, listed) = get(
        &http,
        &format!("{url}/v1/storefront/availability?skus=T0,T3&channel=online"),
    )
    .await;
    let available: Vec<(i64, i64)> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let s1 = &i["stores"][0];
            assert_eq!(s1["store_id"], "S1", "{i}");
            (
                i["available"].as_i64().unwrap(),
                s1["available"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(available, [(1, 1), (1, 1)], "{listed}");
    let report = assert_check_passes(&url);
    assert!(
        report.contains(
            "channels: 10 location figures compared with the formula (1 channel, 5 SKUs)"
        ),
        "{report}"
    );
}

/// Reads SSE messages until `n` events arrived; returns their offsets. The deadline
/// covers the whole read (keep-alive comments must not extend it).
async fn read_sse(resp: reqwest::Response, n: usize) -> Vec<i64> {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ids = Vec::new();
    let mut buffer = String::new();
    let mut stream = resp.bytes_stream();
    while ids.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("SSE data in time")
            .unwrap()
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            if let Some(id) = message.lines().find_map(|l| l.strip_prefix("id:")) {
                ids.push(id.trim().parse().unwrap());
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_resumes_from_last_event_id_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (http, url) = (client(), server.url.clone());
    for k in 0..10 {
        adjust(&http, &url, "S1", &format!("E{k}"), 1).await;
    }
    let first = http
        .get(format!("{url}/v1/events/stream?after=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.headers()["content-type"], "text/event-stream");
    let got = read_sse(first, 4).await;
    assert_eq!(got, vec![1, 2, 3, 4]);
    // Disconnected; more events happen; the client resumes from the last id it saw.
    for k in 10..15 {
        adjust(&http, &url, "S1", &format!("E{k}"), 1).await;
    }
    let resumed = http
        .get(format!("{url}/v1/events/stream?after=0"))
        .header("Last-Event-ID", "4")
        .send()
        .await
        .unwrap();
    // 6 + 5 logged events after offset 4, then one that happens while streaming.
    let pending = tokio::spawn(read_sse(resumed, 12));
    adjust(&http, &url, "S1", "LIVE", 1).await;
    assert_eq!(pending.await.unwrap(), (5..=16).collect::<Vec<_>>());
    let (status, body) = get(&http, &format!("{url}/v1/events/stream?after=-3")).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("after")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_consistent_server_and_fails_on_a_row_altered_behind_its_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (http, url) = (client(), server.url.clone());
    adjust(&http, &url, "S1", "C1", 10).await;
    adjust(&http, &url, "S1", "C2", 10).await;
    let body =
        json!({"order_id": "O-1", "store_id": "S1", "lines": [{"sku": "C1", "quantity": 4}]});
    assert_eq!(
        post(&http, &format!("{url}/v1/reservations"), body).await.0,
        201
    );
    let check = || {
        std::process::Command::new(BIN)
            .args(["check", "--url", &url])
            .output()
            .unwrap()
    };
    let ok = check();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("check: OK"));

    let changed = rusqlite_free_update(
        &dir.path().join("ledger.db"),
        "UPDATE stock SET reserved = 0 WHERE sku = 'C1'",
    );
    assert_eq!(changed, 1);
    let bad = check();
    assert_eq!(bad.status.code(), Some(1));
    let report = String::from_utf8_lossy(&bad.stdout);
    assert!(
        report.contains("S1/C1") && report.contains("PROBLEM"),
        "{report}"
    );
    assert!(
        !report.contains("S1/C2"),
        "only the altered row is reported: {report}"
    );
    let mut by_problem: BTreeMap<&str, usize> = BTreeMap::new();
    for line in report.lines().filter(|l| l.starts_with("PROBLEM")) {
        *by_problem
            .entry(if line.contains("storefront") {
                "storefront"
            } else {
                "ledger"
            })
            .or_default() += 1;
    }
    assert_eq!(by_problem.get("ledger"), Some(&1));
}

/// What the storefront shows: every row, and each SKU's availability through every
/// channel, without the fields that say when it was asked (`as_of`, `lag_ms`).
async fn storefront_view(http: &reqwest::Client, url: &str, skus: &[&str]) -> Value {
    let (_, rows) = get(http, &format!("{url}/v1/storefront/rows?limit=1000")).await;
    let mut view = json!({"rows": rows["items"]});
    for channel in ["online", "pos-1"] {
        let path = format!(
            "{url}/v1/storefront/availability?skus={}&channel={channel}",
            skus.join(",")
        );
        let (status, mut listed) = get(http, &path).await;
        assert_eq!(status, 200, "{listed}");
        for item in listed["items"].as_array_mut().unwrap() {
            let item = item.as_object_mut().unwrap();
            item.remove("as_of");
            item.remove("lag_ms");
        }
        view[channel] = listed["items"].clone();
    }
    view
}

/// A storefront that starts from nothing while the log still reaches back to offset
/// 1 follows the log from its start: channel configuration, overrides, channel
/// reservations, till sales and their reallocations. It must end up equal to the
/// live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storefront_rebuilt_from_the_log_equals_the_live_one_channels_included() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let (http, url) = (client(), server.url.clone());
    let online = json!({"allocation": "most_available", "split": "by_unit", "locations": [
        {"store_id": "WH1"}, {"store_id": "S1", "safety_stock": 1}, {"store_id": "S2", "safety_stock": 2}]});
    assert_eq!(
        put(&http, &format!("{url}/v1/channels/online"), online)
            .await
            .0,
        200
    );
    let pos = json!({"allocation": "priority", "split": "none", "locations": [{"store_id": "S1"}]});
    assert_eq!(
        put(&http, &format!("{url}/v1/channels/pos-1"), pos).await.0,
        200
    );
    let skus = ["A", "B", "C", "D"];
    for (i, sku) in skus.iter().enumerate() {
        for st in ["WH1", "S1", "S2"] {
            adjust(&http, &url, st, sku, 3 + i as i64).await;
        }
    }
    // Overrides set, changed and removed: the view must end with the last of each.
    let path = format!("{url}/v1/channels/online/safety-stock");
    for value in [json!(4), json!(0), Value::Null] {
        let items = json!({"items": [{"store_id": "S1", "sku": "A", "safety_stock": value},
            {"store_id": "WH1", "sku": "B", "safety_stock": 2}]});
        assert_eq!(put(&http, &path, items).await.0, 200);
    }
    // The channel changes after the first orders.
    for round in 0..2 {
        for i in 0..12 {
            let sku = skus[i % 4];
            let order = json!({"order_id": format!("O-{round}-{i}"), "channel": "online",
                "lines": [{"sku": sku, "quantity": 1 + i % 3}]});
            post(&http, &format!("{url}/v1/reservations"), order).await;
            let till = ["WH1", "S1", "S2"][i % 3];
            let sale = json!({"store_id": till, "sku": sku, "delta": -1,
                "reason": "sale", "channel": "pos-1"});
            post(&http, &format!("{url}/v1/adjustments"), sale).await;
        }
        let changed = json!({"allocation": "priority", "split": "by_line", "locations": [
            {"store_id": "S2", "priority": 1}, {"store_id": "WH1", "priority": 2, "safety_stock": 1}]});
        assert_eq!(
            put(&http, &format!("{url}/v1/channels/online"), changed)
                .await
                .0,
            200
        );
    }
    let moved = all_events(&http, &url)
        .await
        .iter()
        .filter(|(_, e)| e["data"]["reason"] == "reallocated")
        .count();
    assert!(moved > 0, "some sales took held units and moved them");
    eventually("the storefront catches up", WAIT, || async {
        storefront_caught_up(&http, &url).await.then_some(())
    })
    .await;
    let live = storefront_view(&http, &url, &skus).await;
    assert_eq!(live["rows"].as_array().unwrap().len(), 12, "{live}");

    server.kill();
    for f in ["storefront.db", "storefront.db-wal", "storefront.db-shm"] {
        std::fs::remove_file(dir.path().join(f)).ok();
    }
    let server = Server::start(dir.path(), &[]);
    let url = server.url.clone();
    eventually("the new storefront catches up", WAIT, || async {
        storefront_caught_up(&http, &url).await.then_some(())
    })
    .await;
    let rebuilt = storefront_view(&http, &url, &skus).await;
    assert_eq!(rebuilt, live);
    assert_check_passes(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_compares_every_channels_availability_with_the_formula() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (http, url) = (client(), server.url.clone());
    let channels = [
        json!({"allocation": "priority", "split": "by_unit", "locations": [
            {"store_id": "WH1", "priority": 1}, {"store_id": "Store #1", "priority": 2, "safety_stock": 2}]}),
        json!({"allocation": "most_available", "split": "none",
            "locations": [{"store_id": "Store #1"}]}),
    ];
    for (id, body) in ["online", "pos-1"].iter().zip(channels) {
        let (status, v) = put(&http, &format!("{url}/v1/channels/{id}"), body).await;
        assert_eq!(status, 200, "{v}");
    }
    let buffer = json!({"items": [{"store_id": "WH1", "sku": "TEE, RED", "safety_stock": 4}]});
    let path = format!("{url}/v1/channels/online/safety-stock");
    assert_eq!(put(&http, &path, buffer).await.0, 200);
    // A SKU with a comma, one with a slash, 120 plain ones (two listing pages).
    let mut skus = vec!["TEE, RED".to_owned(), "CAP/XL".to_owned()];
    skus.extend((0..120).map(|i| format!("K{i:03}")));
    let items: Vec<Value> = skus
        .iter()
        .flat_map(|sku| {
            ["WH1", "Store #1"]
                .map(|st| json!({"store_id": st, "sku": sku, "delta": 5, "reason": "stock_in"}))
        })
        .collect();
    let (status, v) = post(
        &http,
        &format!("{url}/v1/adjustments/batch"),
        json!({"items": items}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let order = json!({"order_id": "O-1", "channel": "online",
        "lines": [{"sku": "TEE, RED", "quantity": 2}]});
    assert_eq!(
        post(&http, &format!("{url}/v1/reservations"), order)
            .await
            .0,
        201
    );

    let report = assert_check_passes(&url);
    assert!(
        report.contains(
            "channels: 366 location figures compared with the formula (2 channels, 122 SKUs)"
        ),
        "{report}"
    );
    // The projection's safety stock altered behind its back: check names the SKU
    // and location whose channel availability no longer follows the formula.
    let changed = rusqlite_free_update(
        &dir.path().join("storefront.db"),
        "UPDATE view_safety SET safety_stock = 0",
    );
    assert_eq!(changed, 1);
    let bad = std::process::Command::new(BIN)
        .args(["check", "--url", &url])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{report}");
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("PROBLEM"))
        .collect();
    assert_eq!(problems.len(), 1, "{report}");
    assert!(
        problems[0].contains("storefront channel online TEE, RED at WH1: shows 4")
            && problems[0].contains("gives 0"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_postgres_reserves_exactly_the_stock_and_the_storefront_converges() {
    let Some(pg) = private_postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--database-url", &pg.url()]);
    let (http, url) = (client(), server.url.clone());
    adjust(&http, &url, "S1", "HOT", 40).await;
    adjust(&http, &url, "S1", "OTHER", 1000).await;
    let mut tasks = Vec::new();
    for i in 0..120 {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            // Two lines, in either order: row locks are taken in (store, sku) order.
            let lines = if i % 2 == 0 {
                json!([{"sku": "HOT", "quantity": 1}, {"sku": "OTHER", "quantity": 1}])
            } else {
                json!([{"sku": "OTHER", "quantity": 1}, {"sku": "HOT", "quantity": 1}])
            };
            let body = json!({"order_id": format!("PG-{i}"), "store_id": "S1", "lines": lines});
            post(&http, &format!("{url}/v1/reservations"), body).await.0
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => created += 1,
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 40, "exactly the stock is reserved");
    let (_, hot) = get(&http, &format!("{url}/v1/stock/S1/HOT")).await;
    assert_eq!(
        (hot["reserved"].as_i64(), hot["available"].as_i64()),
        (Some(40), Some(0))
    );
    // Outbox → relay → log → storefront.
    let view = eventually("the storefront converges", WAIT, || async {
        let (_, v) = get(&http, &format!("{url}/v1/storefront/availability/HOT")).await;
        (v["available"] == 0 && v["stores"][0]["version"] == 41).then_some(v)
    })
    .await;
    assert_eq!(view["stores"][0]["store_id"], "S1");
    let events = all_events(&http, &url).await;
    assert_eq!(
        events.len(),
        2 + 2 * 40,
        "one event per change, nothing lost or doubled"
    );
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, (offset, _))| *offset == i as i64 + 1),
        "gapless"
    );
    assert_check_passes(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_postgres_reserve_exactly_the_stock() {
    let Some(pg) = private_postgres().await else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers: Vec<Server> = dirs
        .iter()
        .map(|d| Server::start(d.path(), &["--database-url", &pg.url()]))
        .collect();
    let http = client();
    adjust(&http, &servers[0].url, "S1", "HOT3", 60).await;
    let mut tasks = Vec::new();
    for i in 0..240 {
        let (http, url) = (http.clone(), servers[i % 3].url.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"order_id": format!("M-{i}"), "store_id": "S1", "lines": [{"sku": "HOT3", "quantity": 1}]});
            post(&http, &format!("{url}/v1/reservations"), body).await.0
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => created += 1,
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        created, 60,
        "three instances together reserve exactly the stock"
    );
    for server in &servers {
        let url = server.url.clone();
        eventually("every instance's storefront converges", WAIT, || async {
            let (_, v) = get(&http, &format!("{url}/v1/storefront/availability/HOT3")).await;
            (v["available"] == 0 && v["stores"][0]["version"] == 61).then_some(())
        })
        .await;
    }
    assert_check_passes(&servers[1].url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_answers_503_and_service_resumes_without_a_restart() {
    let Some(mut pg) = private_postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--database-url", &pg.url()]);
    let (http, url) = (client(), server.url.clone());
    adjust(&http, &url, "S1", "OUT", 1_000_000).await;

    // Load runs throughout; every 201 is remembered.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let statuses = Arc::new(Mutex::new(Vec::<(Instant, u16)>::new()));
    let mut load = Vec::new();
    for c in 0..8 {
        let (http, url, stop, acked, statuses) = (
            http.clone(),
            url.clone(),
            stop.clone(),
            acked.clone(),
            statuses.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let body = json!({"order_id": format!("L-{c}-{n}"), "store_id": "S1", "lines": [{"sku": "OUT", "quantity": 1}]});
                let resp = http.post(format!("{url}/v1/reservations")).json(&body).send().await.unwrap();
                let status = resp.status().as_u16();
                statuses.lock().unwrap().push((Instant::now(), status));
                if status == 201 {
                    let v: Value = resp.json().await.unwrap();
                    acked.lock().unwrap().push(v["reservation_id"].as_str().unwrap().to_owned());
                } else {
                    assert_eq!(status, 503, "only 201 or 503, never a 500 or a hang");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    eventually("load is flowing", WAIT, || async {
        (acked.lock().unwrap().len() > 50).then_some(())
    })
    .await;

    let stopped_at = Instant::now();
    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let first_503 = eventually("requests answer 503 during the outage", WAIT, || async {
        statuses
            .lock()
            .unwrap()
            .iter()
            .find(|(t, s)| *t > stopped_at && *s == 503)
            .map(|(t, _)| *t)
    })
    .await;
    assert!(
        first_503 - stopped_at < Duration::from_secs(10),
        "503 within seconds"
    );
    let (status, _) = get(&http, &format!("{url}/readyz")).await;
    assert_eq!(status, 503);

    let restarted_at = Instant::now();
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    eventually(
        "service resumes without restarting invsync",
        WAIT,
        || async {
            statuses
                .lock()
                .unwrap()
                .iter()
                .any(|(t, s)| *t > restarted_at && *s == 201)
                .then_some(())
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    for id in &acked {
        let (status, _) = get(&http, &format!("{url}/v1/reservations/{id}")).await;
        assert_eq!(
            status, 200,
            "acknowledged reservation {id} survived the outage"
        );
    }
    let (_, level) = get(&http, &format!("{url}/v1/stock/S1/OUT")).await;
    assert!(level["reserved"].as_i64().unwrap() >= acked.len() as i64);
    // Right after the outage, without waiting for anything first: a row and its
    // event commit together, so the snapshot and the log agree by construction and
    // nothing can look behind (with the old outbox, rows could be ahead of the
    // log's offset until the relay caught up, and check reported them).
    assert_check_passes(&url);
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_relay_leader_is_killed_another_instance_takes_over() {
    let Some(pg) = private_postgres().await else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A starts first and takes the relay lock; B waits as a follower.
    let mut a = Server::start(dir_a.path(), &["--database-url", &pg.url()]);
    let http = client();
    adjust(&http, &a.url, "S1", "LEAD", 10).await;
    eventually("A relays", WAIT, || async {
        (all_events(&http, &a.url).await.len() == 1).then_some(())
    })
    .await;
    let b = Server::start(dir_b.path(), &["--database-url", &pg.url()]);

    let mut acked = Vec::new();
    for i in 0..60 {
        if i == 20 {
            a.kill(); // SIGKILL: its session, and with it the advisory lock, goes away
        }
        let body = json!({"store_id": "S1", "sku": format!("K{}", i % 5), "delta": 1, "reason": "stock_in"});
        let (status, v) = post(&http, &format!("{}/v1/adjustments", b.url), body).await;
        assert_eq!(status, 200, "{v}");
        acked.push(v["event_id"].as_str().unwrap().to_owned());
    }
    let url = b.url.clone();
    let events = eventually("B relays everything after A died", WAIT, || async {
        let events = all_events(&http, &url).await;
        (events.len() == 61).then_some(events)
    })
    .await;
    let logged: HashSet<String> = events
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(acked.iter().all(|id| logged.contains(id)), "nothing lost");
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, (offset, _))| *offset == i as i64 + 1),
        "gapless"
    );
    let mut versions: HashMap<String, i64> = HashMap::new();
    for (_, e) in &events {
        let d = &e["data"];
        let previous = versions.insert(
            d["product_sku"].as_str().unwrap().to_owned(),
            d["version"].as_i64().unwrap(),
        );
        assert_eq!(
            d["version"].as_i64().unwrap(),
            previous.unwrap_or(0) + 1,
            "per-key order kept"
        );
    }
    eventually("B's storefront catches up", WAIT, || async {
        storefront_caught_up(&http, &url).await.then_some(())
    })
    .await;
    assert_check_passes(&url);
}
