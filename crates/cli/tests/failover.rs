//! The webhook connector across failures of what it runs on: changes of leader on
//! PostgreSQL (clean restarts of the database, kill -9 of the leading instance) and a
//! kill -9 of NATS. Each change of leader may re-deliver at most the batch in flight;
//! after NATS comes back, delivery resumes within seconds.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::receiver::{self, Receiver};
use common::{client, eventually, metric, private_nats, private_postgres, Server};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// Posts `n` adjustments to whichever of `urls` answers, each under its own
/// Idempotency-Key so a retry across an outage never applies one twice.
async fn changes(http: &reqwest::Client, urls: &[String], round: usize, n: usize) {
    for i in 0..n {
        let body = json!({"store_id": "S1", "sku": format!("F-{}", i % 10), "delta": 1, "reason": "stock_in"});
        let key = format!("round-{round}-{i}");
        let deadline = Instant::now() + WAIT;
        'retry: loop {
            for url in urls {
                let answer = http
                    .post(format!("{url}/v1/adjustments"))
                    .header("Idempotency-Key", &key)
                    .json(&body)
                    .send()
                    .await;
                if answer.is_ok_and(|a| a.status().is_success()) {
                    break 'retry;
                }
            }
            assert!(Instant::now() < deadline, "no instance took change {key}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until the receiver has every event of the log.
async fn all_delivered(http: &reqwest::Client, url: &str, receiver: &Receiver) -> usize {
    let events = common::all_events(http, url).await;
    let ids: HashSet<String> = events
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_owned())
        .collect();
    eventually("every event delivered", WAIT, || async {
        receiver.accepted_ids().is_superset(&ids).then_some(())
    })
    .await;
    ids.len()
}

async fn leads(http: &reqwest::Client, url: &str) -> bool {
    metric(http, url, "invsync_relay_leader").await == Some(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_changes_redeliver_at_most_the_batch_in_flight() {
    let (Some(mut pg), Some(nats)) = (private_postgres().await, private_nats().await) else {
        return;
    };
    let receiver = Receiver::default();
    let flags = receiver::postgres_nats_webhook_flags(&pg, &nats, &receiver).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let http = client();
    let mut servers = vec![Server::start(dirs[0].path(), &receiver::args(&flags))];
    changes(&http, &[servers[0].url.clone()], 0, 20).await;
    all_delivered(&http, &servers[0].url, &receiver).await;
    servers.push(Server::start(dirs[1].path(), &receiver::args(&flags)));

    let rounds = 6;
    for round in 1..=rounds {
        let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
        changes(&http, &urls, round, 40).await;
        if round % 2 == 1 {
            // A clean restart of PostgreSQL: every session, and the leadership, goes.
            pg = tokio::task::spawn_blocking(move || {
                pg.restart();
                pg
            })
            .await
            .unwrap();
        } else {
            // kill -9 of the leader, which then comes back (with its own, older
            // consumer store) as a follower.
            let mut leader = None;
            for (i, s) in servers.iter().enumerate() {
                if leads(&http, &s.url).await {
                    leader = Some(i);
                }
            }
            let i = leader.unwrap_or(0);
            servers[i].kill();
            servers[i] = Server::start(dirs[i].path(), &receiver::args(&flags));
        }
        changes(
            &http,
            &[servers[0].url.clone(), servers[1].url.clone()],
            round + 100,
            20,
        )
        .await;
    }
    let url = servers[0].url.clone();
    let logged = all_delivered(&http, &url, &receiver).await;
    let seen = receiver.seen.lock().unwrap();
    let duplicates = seen.accepted.len() - receiver_unique(&seen);
    receiver::assert_first_arrivals_in_order(&seen);
    println!("failover: {logged} events, {rounds} changes of leader, {duplicates} re-deliveries");
    // Before the shared position, a new leader re-delivered from its own old position:
    // hundreds of events per change. Now at most the batch in flight.
    assert!(
        duplicates <= rounds * 10,
        "{duplicates} re-deliveries over {rounds} changes of leader"
    );
}

fn receiver_unique(seen: &receiver::Seen) -> usize {
    seen.accepted
        .iter()
        .map(|a| a.0.as_str())
        .collect::<HashSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_nats_kill_9_webhook_delivery_resumes_within_seconds() {
    let Some(mut nats) = private_nats().await else {
        return;
    };
    let receiver = Receiver::default();
    let hook = receiver.clone().start().await;
    let mut flags = vec!["--bus".to_owned(), nats.url()];
    flags.extend(receiver::webhook_flags(&hook));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &receiver::args(&flags));
    let http = client();
    changes(&http, std::slice::from_ref(&server.url), 0, 5).await;
    all_delivered(&http, &server.url, &receiver).await;

    let mut resumed = Vec::new();
    for round in 1..=3 {
        nats = tokio::task::spawn_blocking(move || {
            nats.stop(); // SIGKILL
            nats.start_again();
            nats
        })
        .await
        .unwrap();
        let back = Instant::now();
        changes(&http, std::slice::from_ref(&server.url), round, 1).await;
        all_delivered(&http, &server.url, &receiver).await;
        resumed.push(back.elapsed());
    }
    println!("after a NATS kill -9, the webhook resumed in {resumed:?}");
    let worst = resumed.iter().max().unwrap();
    assert!(
        *worst < Duration::from_secs(10),
        "delivery resumed only after {worst:?}"
    );
}

/// Polls `invsync_bus_up` until it reads `want`; how long that took.
async fn bus_up_reads(http: &reqwest::Client, url: &str, want: f64) -> Duration {
    let started = Instant::now();
    eventually(&format!("invsync_bus_up {want}"), WAIT, || async {
        (metric(http, url, "invsync_bus_up").await == Some(want)).then_some(())
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_up_is_right_from_the_first_second() {
    let Some(mut nats) = private_nats().await else {
        return;
    };
    let http = client();
    // NATS up at start: the gauge says so within a second of the server listening.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--bus", &nats.url()]);
    let up_at_start = bus_up_reads(&http, &server.url, 1.0).await;
    drop(server);

    // NATS down at start: 0 at once (not absent, not a stale 1), then 1 when it
    // comes, and 0 again when it is killed.
    nats = tokio::task::spawn_blocking(move || {
        nats.stop();
        nats
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--bus", &nats.url()]);
    let down_at_start = bus_up_reads(&http, &server.url, 0.0).await;
    nats = tokio::task::spawn_blocking(move || {
        nats.start_again();
        nats
    })
    .await
    .unwrap();
    let came_up = bus_up_reads(&http, &server.url, 1.0).await;
    let _nats = tokio::task::spawn_blocking(move || {
        nats.stop();
        nats
    })
    .await
    .unwrap();
    let went_down = bus_up_reads(&http, &server.url, 0.0).await;
    println!(
        "invsync_bus_up: 1 after {up_at_start:?} at start; with NATS down 0 after {down_at_start:?}, \
         1 {came_up:?} after NATS came, 0 {went_down:?} after a kill -9"
    );
    for (what, took) in [
        ("up at start", up_at_start),
        ("down at start", down_at_start),
        ("came up", came_up),
        ("went down", went_down),
    ] {
        assert!(
            took < Duration::from_secs(3),
            "invsync_bus_up was wrong for {took:?} ({what})"
        );
    }
}
