//! `invsync demo` as a newcomer runs it: it prints the console's URL, and within a
//! minute or two the server has a catalogue, channels, every kind of traffic the demo
//! promises (orders, cancellations, expiries, fulfilments, till sales, deliveries,
//! counts), a dead letter from the receiver that refuses one SKU, and an overview
//! with data.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{client, eventually, get, BIN};

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `invsync demo` on a free loopback port, its data under `dir`.
fn demo(dir: &std::path::Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("demo"));
    command
}

/// The lines `from` gives, as they come (read on a thread of their own, to the end,
/// so that the demo never blocks on a full pipe).
fn lines(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_its_url_and_runs_a_whole_shop() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = demo(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read stdout as a terminal would: the first line, then the rest as it comes.
    let rx = lines(child.stdout.take().unwrap());
    let _demo = Demo(child);
    let first = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the demo printed nothing");
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .trim_end_matches('/')
        .to_owned();
    let http = client();

    // The console is there.
    let page = http.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("invsync console"));

    // The catalogue: five locations of each SKU, and two channels.
    let stock = eventually("the catalogue", Duration::from_secs(60), || async {
        let (status, rows) = get(&http, &format!("{url}/v1/stock?sku=TEE-BLK-01")).await;
        (status == 200 && rows["items"].as_array()?.len() == 5).then_some(rows)
    })
    .await;
    assert_eq!(stock["items"][0]["store_id"], "S1");
    let names = eventually("the channels", Duration::from_secs(60), || async {
        let (_, channels) = get(&http, &format!("{url}/v1/channels")).await;
        let names: Vec<String> = channels["items"]
            .as_array()?
            .iter()
            .filter_map(|c| Some(c["channel_id"].as_str()?.to_owned()))
            .collect();
        (names.len() == 2).then_some(names)
    })
    .await;
    assert_eq!(names, ["online", "pos-S1"]);

    // Every kind of traffic shows up in the log.
    let wanted: HashSet<&str> = [
        "order_placed",
        "order_cancelled",
        "expired",
        "fulfilled",
        "sale",
        "stock_in",
        "cycle_count",
    ]
    .into();
    eventually(
        "every kind of traffic",
        Duration::from_secs(150),
        || async {
            let seen: HashSet<String> = common::all_events(&http, &url)
                .await
                .iter()
                .filter_map(|(_, e)| Some(e["data"]["reason"].as_str()?.to_owned()))
                .collect();
            wanted.iter().all(|w| seen.contains(*w)).then_some(())
        },
    )
    .await;

    // The receiver refuses the recalled SKU: a dead letter to redrive.
    eventually("a dead letter", Duration::from_secs(60), || async {
        let (_, letters) = get(&http, &format!("{url}/v1/dead-letters")).await;
        letters["items"]
            .as_array()?
            .iter()
            .any(|d| d["event"]["data"]["product_sku"] == "MUG-RECALLED")
            .then_some(())
    })
    .await;

    // The overview has data: outcomes, both consumers, points for the charts.
    let (_, overview) = get(&http, &format!("{url}/v1/overview")).await;
    assert!(
        overview["reservations"]["reserved"].as_u64().unwrap() > 0,
        "{overview}"
    );
    let consumers: Vec<&str> = overview["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(consumers, ["storefront", "webhook"]);
    assert!(
        !overview["points"].as_array().unwrap().is_empty(),
        "{overview}"
    );
}

/// A closed stdout (`invsync demo | head -1`, a terminal that went away) does not stop
/// the demo: the banner cannot be printed, and the server and the shop go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_when_its_stdout_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    // A pipe whose reading end is closed before the demo writes its banner.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = demo(dir.path())
        .env("RUST_LOG", "invsync=info")
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(child.stderr.take().unwrap());
    let running = Demo(child);
    let lines = tokio::task::spawn_blocking(move || {
        // The address from the log, then the note on the banner (both come early).
        let mut seen = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
            seen.push(line);
            if seen.iter().any(|l| l.contains("addr="))
                && seen.iter().any(|l| l.contains("cannot print to stdout"))
            {
                break;
            }
        }
        seen
    })
    .await
    .unwrap();
    let address = lines
        .iter()
        .find_map(|l| l.split("addr=").nth(1)?.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address logged: {lines:#?}"));
    assert!(
        lines.iter().any(|l| l.contains("cannot print to stdout")),
        "{lines:#?}"
    );
    let url = format!("http://{address}");
    let http = client();
    // The shop still sets up its catalogue, and the server still answers.
    eventually("the catalogue", Duration::from_secs(60), || async {
        let (status, rows) = get(&http, &format!("{url}/v1/stock?sku=TEE-BLK-01")).await;
        (status == 200 && rows["items"].as_array()?.len() == 5).then_some(())
    })
    .await;
    let mut running = running;
    assert!(
        running.0.try_wait().unwrap().is_none(),
        "the demo exited with its stdout closed"
    );
}
