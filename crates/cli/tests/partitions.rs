//! Several `invsync consume NAME --partitioned` processes sharing one webhook
//! endpoint's 16 partitions on PostgreSQL: the partitions split evenly, each is worked
//! by one process at a time, a killed process's partitions are taken over, and every
//! SKU's events still first arrive in version order, each one at least once.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use common::receiver::{self, Receiver};
use common::{client, eventually, get, private_postgres, Server};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: usize = 16;

/// The partitions a `consume --partitioned` process works now, from its own
/// `/v1/consumers` (which lists only those).
async fn owned(http: &reqwest::Client, url: &str) -> BTreeSet<usize> {
    let (status, consumers) = get(http, &format!("{url}/v1/consumers")).await;
    assert_eq!(status, 200, "{consumers}");
    consumers["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap();
            let index = name
                .strip_prefix("webhook.p")
                .unwrap_or_else(|| panic!("{name}"));
            index.parse().unwrap()
        })
        .collect()
}

/// Waits until the processes at `urls` hold every partition between them, each
/// exactly once, split as evenly as their number allows.
async fn split_evenly(http: &reqwest::Client, urls: &[&str]) -> Vec<BTreeSet<usize>> {
    let fair = PARTITIONS.div_ceil(urls.len());
    eventually(
        &format!("16 partitions split over {} processes", urls.len()),
        WAIT,
        || async {
            let mut shares = Vec::new();
            for url in urls {
                shares.push(owned(http, url).await);
            }
            let total: usize = shares.iter().map(BTreeSet::len).sum();
            let union: BTreeSet<usize> = shares.iter().flatten().copied().collect();
            (total == PARTITIONS
                && union.len() == PARTITIONS
                && shares
                    .iter()
                    .all(|s| s.len() <= fair && s.len() + 1 >= fair))
            .then_some(shares)
        },
    )
    .await
}

/// `n` stock-ins over 48 SKUs, through the server.
async fn changes(http: &reqwest::Client, url: &str, round: usize, n: usize) {
    for i in 0..n {
        let body = json!({"store_id": "S1", "sku": format!("P-{}", (i * 7 + round) % 48), "delta": 1, "reason": "stock_in"});
        let (status, answer) = common::post(http, &format!("{url}/v1/adjustments"), body).await;
        assert_eq!(status, 200, "{answer}");
    }
}

/// How many events this process delivered (summed over its partitions).
async fn delivered_by(http: &reqwest::Client, url: &str) -> f64 {
    common::metrics_text(http, url)
        .await
        .lines()
        .filter(|l| l.starts_with("invsync_sync_latency_seconds_count{consumer=\"webhook.p"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_consumers_split_the_partitions_and_take_over_a_dead_ones() {
    let Some(pg) = private_postgres().await else {
        return;
    };
    let receiver = Receiver::default();
    let hook = receiver.clone().start().await;
    let database = ["--database-url".to_owned(), pg.url()];
    let mut endpoint = database.to_vec();
    endpoint.extend(receiver::webhook_flags(&hook));
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let http = client();
    // The server takes the writes; the endpoint runs only in the consume processes.
    let server = Server::start(dirs[0].path(), &receiver::args(&database));
    let consume = |dir: &tempfile::TempDir| {
        let mut flags = vec!["--partitioned".to_owned()];
        flags.extend(endpoint.iter().cloned());
        Server::consume("webhook", dir.path(), &receiver::args(&flags))
    };

    // One process: it works all 16.
    let mut a = consume(&dirs[1]);
    split_evenly(&http, &[&a.url]).await;
    changes(&http, &server.url, 0, 60).await;

    // A second: 8 each, disjoint, and both deliver.
    let b = consume(&dirs[2]);
    let shares = split_evenly(&http, &[&a.url, &b.url]).await;
    println!("two processes: {shares:?}");
    changes(&http, &server.url, 1, 120).await;
    eventually("both processes deliver", WAIT, || async {
        (delivered_by(&http, &a.url).await > 0.0 && delivered_by(&http, &b.url).await > 0.0)
            .then_some(())
    })
    .await;

    // kill -9 of one while events flow: the other takes its partitions over.
    changes(&http, &server.url, 2, 20).await;
    a.kill();
    let killed = std::time::Instant::now();
    split_evenly(&http, &[&b.url]).await;
    println!(
        "the survivor held all 16 partitions {:?} after the kill",
        killed.elapsed()
    );
    changes(&http, &server.url, 3, 60).await;

    // A third joins: the survivor gives half up (after stopping them) to it.
    let c = consume(&dirs[3]);
    changes(&http, &server.url, 4, 60).await;
    let shares = split_evenly(&http, &[&b.url, &c.url]).await;
    println!("after the kill and a new process: {shares:?}");
    changes(&http, &server.url, 5, 60).await;

    let events = common::all_events(&http, &server.url).await;
    let ids: HashSet<String> = events
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 380, "every change has its event");
    eventually("every event delivered", WAIT, || async {
        receiver.accepted_ids().is_superset(&ids).then_some(())
    })
    .await;
    let seen = receiver.seen.lock().unwrap();
    receiver::assert_first_arrivals_in_order(&seen);
    let duplicates = seen.accepted.len() - ids.len();
    println!(
        "{} events, {} deliveries, {duplicates} re-deliveries over a kill and three rebalances",
        ids.len(),
        seen.accepted.len()
    );
    // A change of owner re-delivers at most the batch in flight in each partition it
    // moves; re-delivering from an old position would be hundreds.
    assert!(duplicates <= 48, "{duplicates} re-deliveries");
}

#[test]
fn partitioned_needs_a_webhook_endpoint_on_postgresql() {
    for (args, key) in [
        (
            vec!["consume", "storefront", "--partitioned"],
            "partitioned",
        ),
        (
            vec![
                "consume",
                "webhook",
                "--partitioned",
                "--webhook-url",
                "http://127.0.0.1:9/hook",
                "--webhook-secret",
                "0123456789abcdef0123",
            ],
            "partitioned",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(common::BIN)
            .args(&args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(key), "{args:?}: {stderr}");
    }
}
