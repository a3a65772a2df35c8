//! invsync on NATS JetStream, with the server as a child process and private NATS and
//! PostgreSQL servers: an outage of NATS under load, several instances on one
//! PostgreSQL and one NATS, and consumers running as their own processes.

// Tests fail loudly on anything unexpected.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::receiver::{
    args, assert_check_passes, assert_per_sku_order, postgres_nats_webhook_flags, webhook_flags,
    Receiver,
};
use common::{
    adjust, all_events, client, eventually, get, metric, post, private_nats, private_postgres,
    storefront_caught_up, Server,
};
use invsync_bus::{NatsBus, NatsConfig};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The Nats-Msg-Id of every message in the event stream, read with a NATS client.
async fn stream_message_ids(nats_url: &str) -> Vec<String> {
    let bus = NatsBus::connect(NatsConfig::new(nats_url)).await.unwrap();
    let mut stream = eventually("the stream answers", WAIT, || async {
        bus.stream().await.ok()
    })
    .await;
    let state = stream.info().await.unwrap().state.clone();
    let mut ids = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            ids.push(m.headers.get("Nats-Msg-Id").unwrap().as_str().to_owned());
        }
    }
    ids
}

/// Event ids of the ledger's log.
async fn logged_event_ids(http: &reqwest::Client, url: &str) -> Vec<String> {
    all_events(http, url)
        .await
        .into_iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every event is in the stream exactly once.
async fn assert_stream_holds_each_event_once(http: &reqwest::Client, url: &str, nats_url: &str) {
    let logged = logged_event_ids(http, url).await;
    let published = stream_message_ids(nats_url).await;
    assert_eq!(
        published.len(),
        logged.len(),
        "one stream message per logged event"
    );
    let published: HashSet<_> = published.into_iter().collect();
    assert_eq!(published, logged.into_iter().collect::<HashSet<_>>());
}

/// Reserves one unit of `sku` through `url`; the answer's status.
async fn reserve_one(http: &reqwest::Client, url: &str, order: &str, sku: &str) -> u16 {
    let body = json!({"order_id": order, "store_id": "S1", "lines": [{"sku": sku, "quantity": 1}]});
    post(http, &format!("{url}/v1/reservations"), body).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_stopped_under_load_writes_keep_answering_and_the_stream_gets_every_event_once() {
    let Some(mut nats) = private_nats().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--bus", &nats.url()]);
    let (http, url) = (client(), server.url.clone());
    // SKUs with dots: they must not split the subject.
    let skus: Vec<String> = (0..8).map(|k| format!("N.{k}")).collect();
    for sku in &skus {
        adjust(&http, &url, "S1", sku, 100_000).await;
    }
    eventually("the storefront follows the bus", WAIT, || async {
        storefront_caught_up(&http, &url).await.then_some(())
    })
    .await;
    let (_, health) = get(&http, &format!("{url}/readyz")).await;
    assert_eq!(health["bus"], "nats");

    // Load: reservations and adjustments from 6 clients until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(Mutex::new(HashMap::<u16, usize>::new()));
    let mut load = Vec::new();
    for client_no in 0..6 {
        let (http, url, skus) = (http.clone(), url.clone(), skus.clone());
        let (stop, answers, statuses) = (stop.clone(), answers.clone(), statuses.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let sku = &skus[i % skus.len()];
                let status = if i % 5 == 4 {
                    let body =
                        json!({"store_id": "S1", "sku": sku, "delta": 1, "reason": "stock_in"});
                    post(&http, &format!("{url}/v1/adjustments"), body).await.0
                } else {
                    reserve_one(&http, &url, &format!("L-{client_no}-{i}"), sku).await
                };
                *statuses.lock().unwrap().entry(status).or_default() += 1;
                answers.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    let answered = |n: usize| {
        let answers = answers.clone();
        move || {
            let answers = answers.clone();
            async move { (answers.load(Ordering::SeqCst) >= n).then_some(()) }
        }
    };
    eventually("load is running", WAIT, answered(200)).await;

    // NATS goes away (an orderly stop: NATS 2.9 may lose acknowledged messages in a
    // crash, which the architecture covers with gap fills from the ledger instead).
    let mut nats = tokio::task::spawn_blocking(move || {
        nats.shut_down();
        nats
    })
    .await
    .unwrap();
    let at_outage = answers.load(Ordering::SeqCst);
    eventually("the backlog grows while NATS is down", WAIT, || async {
        let backlog = metric(&http, &url, "invsync_outbox_backlog").await?;
        let up = metric(&http, &url, "invsync_bus_up").await?;
        (backlog > 0.0 && up == 0.0).then_some(())
    })
    .await;
    eventually(
        "writes keep being answered during the outage",
        WAIT,
        answered(at_outage + 300),
    )
    .await;
    let (status, _) = get(&http, &format!("{url}/v1/storefront/availability/N.0")).await;
    assert_eq!(status, 200, "the storefront stays readable");

    let nats = tokio::task::spawn_blocking(move || {
        nats.start_again();
        nats
    })
    .await
    .unwrap();
    let after = answers.load(Ordering::SeqCst);
    eventually("load continues", WAIT, answered(after + 100)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 201),
        "only successes, before, during and after the outage: {statuses:?}"
    );

    eventually("the backlog drains", WAIT, || async {
        (metric(&http, &url, "invsync_outbox_backlog").await? == 0.0).then_some(())
    })
    .await;
    assert_eq!(metric(&http, &url, "invsync_bus_up").await, Some(1.0));
    // The log → stream hop is measured for every event published.
    let published = metric(&http, &url, "invsync_bus_published_total").await;
    let timed = metric(&http, &url, "invsync_bus_publish_latency_seconds_count").await;
    assert!(published.is_some_and(|n| n > 0.0), "{published:?}");
    assert_eq!(timed, published, "one latency sample per event published");
    assert_stream_holds_each_event_once(&http, &url, &nats.url()).await;
    eventually("the storefront converges", WAIT, || async {
        storefront_caught_up(&http, &url).await.then_some(())
    })
    .await;
    for sku in &skus {
        let (_, stock) = get(&http, &format!("{url}/v1/stock/S1/{sku}")).await;
        let (_, view) = get(&http, &format!("{url}/v1/storefront/availability/{sku}")).await;
        let (_, consumers) = get(&http, &format!("{url}/v1/consumers")).await;
        assert_eq!(
            view["stores"][0]["version"], stock["version"],
            "{sku} {consumers}"
        );
        assert_eq!(view["available"], stock["available"], "{sku}");
    }
}

/// Races `n` single-unit reservations for `sku` through the given instances; returns
/// how many succeeded (any other status than 201 or 409 fails the test).
async fn race(http: &reqwest::Client, urls: &[String], sku: &str, n: usize) -> usize {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (http, url, sku) = (http.clone(), urls[i % urls.len()].clone(), sku.to_owned());
        tasks.push(tokio::spawn(async move {
            reserve_one(&http, &url, &format!("{sku}-{i}"), &sku).await
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
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_then_three_instances_on_postgres_and_nats_reserve_exactly_the_stock_and_deliver_each_event_once_in_order(
) {
    let (Some(pg), Some(nats)) = (private_postgres().await, private_nats().await) else {
        return;
    };
    let receiver = Receiver::default();
    let flags = postgres_nats_webhook_flags(&pg, &nats, &receiver).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers: Vec<Server> = dirs[..2]
        .iter()
        .map(|d| Server::start(d.path(), &args(&flags)))
        .collect();
    let http = client();
    let urls = |servers: &[Server]| servers.iter().map(|s| s.url.clone()).collect::<Vec<_>>();

    adjust(&http, &servers[0].url, "S1", "HOT.2", 40).await;
    assert_eq!(
        race(&http, &urls(&servers), "HOT.2", 160).await,
        40,
        "two instances reserve exactly the stock"
    );
    servers.push(Server::start(dirs[2].path(), &args(&flags)));
    adjust(&http, &servers[2].url, "S1", "HOT.3", 30).await;
    assert_eq!(
        race(&http, &urls(&servers), "HOT.3", 180).await,
        30,
        "three instances reserve exactly the stock"
    );

    for server in &servers {
        let url = server.url.clone();
        eventually("every instance's storefront converges", WAIT, || async {
            let (_, two) = get(&http, &format!("{url}/v1/storefront/availability/HOT.2")).await;
            let (_, three) = get(&http, &format!("{url}/v1/storefront/availability/HOT.3")).await;
            (two["available"] == 0
                && two["stores"][0]["version"] == 41
                && three["available"] == 0
                && three["stores"][0]["version"] == 31)
                .then_some(())
        })
        .await;
    }
    let logged: HashSet<String> = logged_event_ids(&http, &servers[1].url)
        .await
        .into_iter()
        .collect();
    assert_eq!(logged.len(), 2 + 40 + 30);
    eventually("the webhook received every event", WAIT, || async {
        (receiver.accepted_ids() == logged).then_some(())
    })
    .await;
    {
        let seen = receiver.seen.lock().unwrap();
        assert_per_sku_order(&seen);
        assert_eq!(
            seen.accepted.len(),
            logged.len(),
            "each event delivered once: one connector works at a time"
        );
    }
    assert_stream_holds_each_event_once(&http, &servers[2].url, &nats.url()).await;
    assert_check_passes(&servers[0].url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_runs_a_consumer_as_its_own_process() {
    let (Some(pg), Some(nats)) = (private_postgres().await, private_nats().await) else {
        return;
    };
    let receiver = Receiver::default();
    let hook = receiver.clone().start().await;
    let shared = [
        "--database-url".to_owned(),
        pg.url(),
        "--bus".to_owned(),
        nats.url(),
    ];
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let server = Server::start(dirs[0].path(), &args(&shared));
    let mut webhook_flags_all = shared.to_vec();
    webhook_flags_all.extend(webhook_flags(&hook));
    let connector = Server::consume("webhook", dirs[1].path(), &args(&webhook_flags_all));
    // A data dir that does not exist yet is created (the ledger is not there to).
    let fresh = dirs[2].path().join("not-yet");
    let projection = Server::consume("storefront", &fresh, &args(&shared));

    let http = client();
    adjust(&http, &server.url, "S1", "SEP-1", 10).await;
    assert_eq!(reserve_one(&http, &server.url, "C-1", "SEP-1").await, 201);
    // The relay moves committed events into the log asynchronously (PostgreSQL):
    // read the log again at each probe, or the last event may be missing from it.
    eventually(
        "the separate connector delivered every event",
        WAIT,
        || async {
            let logged: HashSet<String> = logged_event_ids(&http, &server.url)
                .await
                .into_iter()
                .collect();
            (logged.len() == 2 && receiver.accepted_ids() == logged).then_some(())
        },
    )
    .await;
    let url = projection.url.clone();
    eventually("the separate storefront converged", WAIT, || async {
        let (_, v) = get(&http, &format!("{url}/v1/storefront/availability/SEP-1")).await;
        (v["available"] == 9 && v["stores"][0]["version"] == 2).then_some(())
    })
    .await;

    // A consumer process serves its own status, not the ledger's write API.
    let (status, consumers) = get(&http, &format!("{}/v1/consumers", connector.url)).await;
    assert_eq!(status, 200);
    assert_eq!(consumers["items"][0]["name"], "webhook");
    let (status, _) = post(
        &http,
        &format!("{}/v1/reservations", projection.url),
        json!({"order_id": "X", "store_id": "S1", "lines": [{"sku": "SEP-1", "quantity": 1}]}),
    )
    .await;
    assert_eq!(status, 404, "no reservations through a consumer process");
    assert!(
        metric(
            &http,
            &connector.url,
            "invsync_consumer_lag_events{consumer=\"webhook\"}"
        )
        .await
        .is_some(),
        "the consumer's lag is on its /metrics"
    );
}

/// The leader publishes to NATS and runs the webhook connector; when it is killed the
/// other instance takes over both: the stream ends up with every event once, and the
/// receiver gets every event, each SKU's first arrivals in version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_is_killed_the_other_instance_publishes_and_delivers() {
    let (Some(pg), Some(nats)) = (private_postgres().await, private_nats().await) else {
        return;
    };
    let receiver = Receiver::default();
    let flags = postgres_nats_webhook_flags(&pg, &nats, &receiver).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A starts first and leads: it publishes and delivers before B exists.
    let mut a = Server::start(dir_a.path(), &args(&flags));
    let http = client();
    adjust(&http, &a.url, "S1", "LEAD", 10).await;
    eventually("A delivers", WAIT, || async {
        (receiver.accepted_ids().len() == 1).then_some(())
    })
    .await;
    let b = Server::start(dir_b.path(), &args(&flags));

    for i in 0..60 {
        if i == 20 {
            a.kill(); // SIGKILL mid-load: its session, and its leadership, go away
        }
        let body = json!({"store_id": "S1", "sku": format!("K.{}", i % 5), "delta": 1, "reason": "stock_in"});
        let (status, v) = post(&http, &format!("{}/v1/adjustments", b.url), body).await;
        assert_eq!(status, 200, "{v}");
    }
    let url = b.url.clone();
    let logged: HashSet<String> = eventually("B relays everything", WAIT, || async {
        let ids = logged_event_ids(&http, &url).await;
        (ids.len() == 61).then_some(ids.into_iter().collect())
    })
    .await;
    eventually("B's connector delivered every event", WAIT, || async {
        (receiver.accepted_ids() == logged).then_some(())
    })
    .await;
    let first_arrivals = {
        let seen = receiver.seen.lock().unwrap();
        let mut first = HashSet::new();
        seen.accepted
            .iter()
            .filter(|a| first.insert(a.0.clone()))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut last: HashMap<String, i64> = HashMap::new();
    for (_, _, sku, version) in first_arrivals {
        let previous = last.insert(sku.clone(), version).unwrap_or(0);
        assert!(
            version > previous,
            "{sku}: v{version} first arrived after v{previous}"
        );
    }
    eventually("the backlog drains on B", WAIT, || async {
        (metric(&http, &url, "invsync_outbox_backlog").await? == 0.0).then_some(())
    })
    .await;
    assert_stream_holds_each_event_once(&http, &url, &nats.url()).await;
    eventually("B's storefront converges", WAIT, || async {
        storefront_caught_up(&http, &url).await.then_some(())
    })
    .await;
    assert_check_passes(&url);
}
