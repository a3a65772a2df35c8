//! The `invsync` binary as a child process: durability under SIGKILL, graceful
//! shutdown, exit codes for bad configuration, and the client commands.

// Tests fail loudly on anything unexpected.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{client, get, Server, BIN};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_reservation_survives_sigkill_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    // Every reservation acknowledged in any round (they accumulate in one data dir).
    let mut all_acked = 0;
    for round in 0..3 {
        let mut server = Server::start(dir.path(), &[]);
        let url = server.url.clone();
        let items: Vec<Value> = (0..20)
            .map(|k| json!({"store_id": "S1", "sku": format!("K{k}"), "delta": 1000, "reason": "stock_in"}))
            .collect();
        let seeded = http
            .post(format!("{url}/v1/adjustments/batch"))
            .json(&json!({"items": items}))
            .send()
            .await
            .unwrap();
        assert_eq!(seeded.status(), 200);

        // 32 clients reserve as fast as they can; the server is killed mid-flight.
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut tasks = Vec::new();
        for c in 0..32 {
            let (http, url, ack_tx) = (http.clone(), url.clone(), ack_tx.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let body = json!({"order_id": format!("R{round}-C{c}-N{n}"), "store_id": "S1",
                        "lines": [{"sku": format!("K{}", (c + n) % 20), "quantity": 1}]});
                    match http
                        .post(format!("{url}/v1/reservations"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(resp) if resp.status() == 201 => {
                            let v: Value = match resp.json().await {
                                Ok(v) => v,
                                Err(_) => return,
                            };
                            let _ = ack_tx
                                .send(v["reservation_id"].as_str().unwrap_or_default().to_owned());
                        }
                        Ok(_) => {}
                        Err(_) => return, // the server is gone
                    }
                }
            }));
        }
        drop(ack_tx);
        // Wait until a good number of reservations were acknowledged, then kill.
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.len() < 300 && Instant::now() < deadline {
            if let Ok(Some(id)) = tokio::time::timeout(Duration::from_secs(1), ack_rx.recv()).await
            {
                acked.push(id);
            }
        }
        server.kill();
        for t in tasks {
            let _ = t.await;
        }
        while let Ok(id) = ack_rx.try_recv() {
            acked.push(id);
        }
        assert!(
            acked.len() >= 300,
            "load was running when the server was killed"
        );
        all_acked += acked.len() as i64;

        let server = Server::start(dir.path(), &[]);
        let url = &server.url;
        for id in &acked {
            let resp = http
                .get(format!("{url}/v1/reservations/{id}"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                200,
                "acknowledged reservation {id} survived the kill"
            );
        }
        // Levels equal the fold of the log, and offsets are gapless.
        let mut folded = std::collections::BTreeMap::new();
        let mut after = 0;
        loop {
            let page: Value = get(&http, &format!("{url}/v1/events?after={after}&limit=1000"))
                .await
                .1;
            let events = page["events"].as_array().unwrap();
            if events.is_empty() {
                break;
            }
            for e in events {
                assert_eq!(e["offset"].as_i64(), Some(after + 1));
                after += 1;
                let d = &e["event"]["data"];
                folded.insert(
                    d["product_sku"].as_str().unwrap().to_owned(),
                    (
                        d["on_hand"].as_i64().unwrap(),
                        d["reserved"].as_i64().unwrap(),
                        d["version"].as_i64().unwrap(),
                    ),
                );
            }
        }
        let stock: Value = get(&http, &format!("{url}/v1/stock?store_id=S1&limit=1000"))
            .await
            .1;
        let mut reserved_total = 0;
        for row in stock["items"].as_array().unwrap() {
            let key = row["sku"].as_str().unwrap();
            let level = (
                row["on_hand"].as_i64().unwrap(),
                row["reserved"].as_i64().unwrap(),
                row["version"].as_i64().unwrap(),
            );
            assert_eq!(
                folded[key], level,
                "{key}: the row equals the fold of its events"
            );
            reserved_total += level.1;
        }
        // Each reservation holds one unit and none is released; a reservation committed
        // but not yet answered when the kill came may add to the total, never subtract.
        assert!(
            reserved_total >= all_acked,
            "no acknowledged reservation was lost"
        );
    }
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the server stops after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0));
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Runs a client command against `url` (`--url U`), which must succeed; its stdout.
fn succeeds(args: &[&str], url: &[&str]) -> String {
    let out = run(&[args, url].concat());
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bad_configuration_exits_2_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (args, key) in [
        (
            vec!["serve", "--data-dir", d, "--listen", "nowhere"],
            "listen",
        ),
        (
            vec!["serve", "--data-dir", d, "--retention", "forever"],
            "retention",
        ),
        (
            vec!["serve", "--data-dir", d, "--database-url", "mysql://x"],
            "database-url",
        ),
        (
            vec!["serve", "--data-dir", d, "--listen", "0.0.0.0:0"],
            "listen",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                d,
                "--tokens",
                "/nonexistent/tokens.toml",
            ],
            "tokens",
        ),
        (vec!["serve", "--no-such-flag"], "--no-such-flag"),
        (
            vec!["serve", "--data-dir", d, "--bus", "kafka://k:9092"],
            "bus",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                d,
                "--bus",
                "nats://h:4222",
                "--bus-stream",
                "a.b",
            ],
            "bus-stream",
        ),
        (
            vec![
                "consume",
                "webhook",
                "--data-dir",
                d,
                "--listen",
                "127.0.0.1:0",
            ],
            "webhook-url",
        ),
        (vec!["consume", "ledger", "--data-dir", d], "ledger"),
        (
            vec![
                "serve",
                "--data-dir",
                d,
                "--webhook-url",
                "http://127.0.0.1:9/hook",
                "--webhook-secret",
                "0123456789abcdef",
                "--webhook-dead-after",
                "forever",
            ],
            "webhook-dead-after",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                d,
                "--webhook-url",
                "http://127.0.0.1:9/hook",
                "--webhook-secret",
                "whsec_!!not base64!!",
            ],
            "webhook-secret",
        ),
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(key), "{args:?} names {key}: {stderr}");
    }
}

#[test]
fn client_commands_print_summaries_json_and_problem_details() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = ["--url", server.url.as_str()];
    let ok = |args: &[&str]| succeeds(args, &url);
    assert!(ok(&[
        "adjust", "--store", "S1", "--sku", "A", "--delta", "10", "--reason", "stock_in"
    ])
    .contains("on_hand 10"));
    let placed: Value = serde_json::from_str(&ok(&[
        "reserve", "--order", "O-1", "--store", "S1", "--line", "A=3", "--json",
    ]))
    .unwrap();
    let id = placed["reservation_id"].as_str().unwrap();
    assert!(ok(&["stock", "S1", "A"]).contains("available 7"));
    assert!(ok(&["release", id, "--line", "A=1"]).contains("1 released"));
    assert!(ok(&["fulfil", id]).contains("fulfilled"));
    assert!(ok(&["reservation", "--order", "O-1"]).contains(id));
    let tail = ok(&["events", "tail"]);
    assert_eq!(tail.lines().count(), 4, "{tail}");
    assert!(tail.contains("RESERVED") && tail.contains("RELEASED") && tail.contains("fulfilled"));
    // tail(1): the latest N, newest last; --from-start the oldest; --after from there.
    let offsets = |text: &str| -> Vec<i64> {
        text.lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    };
    assert_eq!(offsets(&ok(&["events", "tail", "-n", "2"])), [3, 4]);
    assert_eq!(
        offsets(&ok(&["events", "tail", "-n", "2", "--from-start"])),
        [1, 2]
    );
    assert_eq!(
        offsets(&ok(&["events", "tail", "--after", "1", "-n", "2"])),
        [2, 3]
    );
    // Real-world ids through the command line, the path encoding and back.
    assert!(ok(&[
        "adjust",
        "--store",
        "Store #1/Paris",
        "--sku",
        "TSHIRT RED/XL",
        "--delta",
        "4",
        "--reason",
        "stock_in"
    ])
    .contains("Store #1/Paris/TSHIRT RED/XL: on_hand 4"));
    assert!(ok(&["stock", "Store #1/Paris", "TSHIRT RED/XL"]).contains("available 4"));
    assert!(ok(&["stock", "--sku", "TSHIRT RED/XL"]).contains("Store #1/Paris"));
    let audit: Value = serde_json::from_str(&ok(&["check", "--json"])).unwrap();
    assert_eq!(audit["ok"], true, "{audit}");
    // A page that is the last one offers no cursor to a next one.
    assert!(!ok(&["stock", "--store", "S1", "--limit", "1"]).contains("more:"));

    let refused = run(&[
        &[
            "reserve", "--order", "O-2", "--store", "S1", "--line", "A=99",
        ][..],
        &url,
    ]
    .concat());
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not enough stock"));
    let token = run(&["token", "new", "--name", "ims", "--scope", "adjust"]);
    assert!(String::from_utf8_lossy(&token.stdout).contains("sha256 = \""));
}

#[tokio::test]
async fn the_server_releases_a_reservation_when_its_ttl_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client();
    let url = &server.url;
    let adjust = json!({"store_id": "S1", "sku": "A", "delta": 5, "reason": "stock_in"});
    assert_eq!(
        http.post(format!("{url}/v1/adjustments"))
            .json(&adjust)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let body = json!({"order_id": "O-ttl", "store_id": "S1", "ttl_seconds": 1, "lines": [{"sku": "A", "quantity": 3}]});
    let placed: Value = http
        .post(format!("{url}/v1/reservations"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = placed["reservation_id"].as_str().unwrap();
    // The expiry logic itself is tested with a manual clock in the ledger's tests; here
    // we only prove the sweeper runs inside `serve`: wait for the condition, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r: Value = get(&http, &format!("{url}/v1/reservations/{id}")).await.1;
        if r["status"] == "expired" {
            break;
        }
        assert!(Instant::now() < deadline, "the reservation expires: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let level: Value = get(&http, &format!("{url}/v1/stock/S1/A")).await.1;
    assert_eq!(level["reserved"], 0);
    let events: Value = get(&http, &format!("{url}/v1/events")).await.1;
    let last = &events["events"][2]["event"]["data"];
    assert_eq!(
        (last["event_type"].as_str(), last["reason"].as_str()),
        (Some("RELEASED"), Some("expired"))
    );
}

#[tokio::test]
async fn events_tail_follow_prints_new_events_as_they_happen() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client();
    let adjust = |sku: &'static str| {
        let (http, url) = (http.clone(), server.url.clone());
        async move {
            let body = json!({"store_id": "S1", "sku": sku, "delta": 1, "reason": "stock_in"});
            assert_eq!(
                http.post(format!("{url}/v1/adjustments"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
    };
    adjust("BEFORE").await;
    let mut tail = Command::new(BIN)
        .args(["events", "tail", "--follow", "--url", &server.url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The latest events first (here the one there is), then those made while following.
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(first.contains("S1/BEFORE"), "{first}");
    adjust("LIVE-1").await;
    adjust("LIVE-2").await;
    let next: Vec<String> = (0..2)
        .map(|_| rx.recv_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    assert!(
        next[0].contains("S1/LIVE-1") && next[1].contains("S1/LIVE-2"),
        "{next:?}"
    );
    let _ = tail.kill();
    let _ = tail.wait();
}

/// A reader that goes away (`invsync events tail --follow | head -1`) ends a client
/// command, or a generator (completions, the manual page), quietly with 0, as Unix
/// filters do: no panic, no message, and a follower does not go on reading a stream
/// it can no longer print.
#[tokio::test]
async fn a_closed_stdout_ends_a_client_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client();
    let body = json!({"store_id": "S1", "sku": "PIPE", "delta": 1, "reason": "stock_in"});
    let (status, _) = common::post(&http, &format!("{}/v1/adjustments", server.url), body).await;
    assert_eq!(status, 200);
    for command in [
        &["events", "tail", "--follow"][..],
        &["events", "tail", "--json"],
        &["stock", "--sku", "PIPE"],
        &["consumers"],
        &["completions", "bash"],
        &["man"],
    ] {
        // A pipe whose reading end is closed before the command writes.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        // Client commands talk to the server; the generators need none.
        let url = match command[0] {
            "completions" | "man" => None,
            _ => Some(["--url", &server.url]),
        };
        let child = Command::new(BIN)
            .args(command)
            .args(url.into_iter().flatten())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        exits_quietly(child, &format!("{command:?}")).await;
    }

    // The reader goes away between events: the follower, with nothing to write,
    // notices it all the same.
    let mut child = Command::new(BIN)
        .args(["events", "tail", "--follow", "--url", &server.url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.contains("S1/PIPE"), "{line}");
    drop(stdout);
    exits_quietly(
        child,
        "events tail --follow, its reader gone between events",
    )
    .await;
}

/// Waits (30 s at most) for `child` to exit, and requires 0 with nothing on stderr.
async fn exits_quietly(mut child: std::process::Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} went on with its stdout closed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{what}: {status}: {stderr}");
    assert_eq!(stderr, "", "{what}");
}

/// Runs `invsync bench --clients 4 --duration 1s --skus 50 --json` with `extra`
/// flags; requires success and a passing oversell check, and returns the summary.
fn bench(url: &str, extra: &[&str]) -> Value {
    let mut argv = vec![
        "bench",
        "--url",
        url,
        "--clients",
        "4",
        "--duration",
        "1s",
        "--skus",
        "50",
        "--json",
    ];
    argv.extend_from_slice(extra);
    let out = run(&argv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["oversell_check"]
            .as_str()
            .unwrap()
            .starts_with("ok"),
        "{extra:?}: {summary}"
    );
    summary
}

/// `invsync bench` drives each workload against a real server and its own oversell
/// check passes (it would fail if the bench or the server miscounted a reservation).
#[test]
fn bench_runs_every_workload_and_its_oversell_check_passes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for workload in ["spread", "hot", "mix"] {
        let summary = bench(&server.url, &["--workload", workload]);
        assert!(
            summary["answers"]["reserve 201"].as_u64().unwrap() > 0,
            "{summary}"
        );
        assert!(summary["latency_ms"]["p99.9"].as_f64().unwrap() > 0.0);
        if workload == "mix" {
            let answers = summary["answers"].as_object().unwrap();
            for op in ["release 200", "fulfil 200", "adjust 200"] {
                assert!(answers.contains_key(op), "mix has {op}: {summary}");
            }
        }
        if workload == "spread" {
            assert!(summary["visibility_ms"]["samples"].as_f64().unwrap() > 0.0);
        }
    }
    // `--no-seed` reuses the catalog the spread run seeded; on an empty server the same
    // run finds no stock at all, so it really did not seed.
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = Server::start(empty_dir.path(), &[]);
    for (url, seeded) in [(&server.url, true), (&empty.url, false)] {
        let summary = bench(url, &["--no-seed", "--no-visibility"]);
        let reserved = summary["answers"]["reserve 201"].as_u64().unwrap_or(0);
        assert_eq!(reserved > 0, seeded, "{summary}");
    }
    // Last, since its seeding counts the catalog down to 3 a row: channel
    // reservations racing till sales. The first store is short already (earlier
    // runs hold more than 3 there), and the safety stock (2 and 1) leaves the channel
    // 1 + 2 units of each of 50 SKUs: 150 in all, which even a slow run (~400
    // reservations a second here) sells out, so it gets refusals. Sales take held
    // units, and the check read every RESERVED event.
    let summary = bench(
        &server.url,
        &[
            "--workload",
            "channels",
            "--stock",
            "3",
            "--till-sales",
            "25",
        ],
    );
    let answers = summary["answers"].as_object().unwrap();
    for op in ["reserve 201", "reserve 409 insufficient_stock", "sale 200"] {
        assert!(answers.contains_key(op), "channels has {op}: {summary}");
    }
    let check = summary["oversell_check"].as_str().unwrap();
    assert!(
        check.contains("RESERVED events took a row below 0"),
        "{check}"
    );
}

/// Every client command the README shows in a `sh` block runs, exactly as written
/// (through bash, with `invsync` standing for this build), against a live server, in
/// the README's order, and exits 0.
#[test]
fn every_readme_command_works_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        match line.trim_end() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && l.starts_with("invsync ") && !l.ends_with('\\') => {
                let sub = l.split_whitespace().nth(1).unwrap_or_default();
                // Servers and load are started differently here; the rest are clients.
                if !matches!(sub, "serve" | "consume" | "bench" | "token") {
                    commands.push(l.to_owned());
                }
            }
            _ => {}
        }
    }
    for needed in [
        "invsync adjust ",
        "invsync reserve ",
        "invsync replay storefront",
        "invsync events tail",
        "invsync check",
    ] {
        assert!(
            commands.iter().any(|c| c.starts_with(needed)),
            "the README shows `{needed}…`: {commands:#?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for command in &commands {
        let out = Command::new("bash")
            .args([
                "-c",
                &format!("invsync() {{ \"$INVSYNC_BIN\" \"$@\"; }}\n{command}"),
            ])
            .env("INVSYNC_BIN", BIN)
            .env("INVSYNC_URL", &server.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`{command}` exited {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Exit codes as documented: 1 the server said no (with the short lines printed, and
/// the problem as JSON with --json), 2 usage, 3 unreachable (with the cause).
#[test]
fn exit_codes_and_error_output_follow_the_readme() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = ["--url", server.url.as_str()];
    let short = run(&[
        &[
            "reserve", "--order", "O-9", "--store", "S1", "--line", "NOPE=3",
        ][..],
        &url,
    ]
    .concat());
    assert_eq!(short.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(
        stderr.contains("NOPE: requested 3, available 0"),
        "{stderr}"
    );
    let json = run(&[
        &[
            "reserve", "--order", "O-9", "--store", "S1", "--line", "NOPE=3", "--json",
        ][..],
        &url,
    ]
    .concat());
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        doc["lines"][0]["sku"], "NOPE",
        "the problem document on stdout"
    );
    assert_eq!(
        run(&["events", "tail", "--url", "localhost:1"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&[&["events", "tail", "-n", "0"][..], &url].concat())
            .status
            .code(),
        Some(2)
    );
    let port = invsync_testkit::free_port();
    let down = run(&["consumers", "--url", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(down.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        stderr.to_lowercase().contains("refused"),
        "the cause is named: {stderr}"
    );
}

/// `events tail --after 0 --follow` once retention purged those events: it says what
/// was lost, goes on from the oldest retained, and keeps following.
#[tokio::test]
async fn tail_follows_on_past_events_purged_by_retention() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--retention", "1s"]);
    let http = client();
    common::adjust(&http, &server.url, "S1", "OLD", 1).await;
    common::eventually(
        "retention purges the first event",
        Duration::from_secs(30),
        || async {
            let (status, _) = get(&http, &format!("{}/v1/events?after=0", server.url)).await;
            (status == 410).then_some(())
        },
    )
    .await;
    let mut tail = Command::new(BIN)
        .args([
            "events",
            "tail",
            "--after",
            "0",
            "--follow",
            "--url",
            &server.url,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for pipe in [
        Box::new(tail.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(tail.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let warned = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(warned.contains("purged by retention"), "{warned}");
    common::adjust(&http, &server.url, "S1", "NEW", 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap();
        if line.contains("S1/NEW") {
            break;
        }
    }
    assert!(tail.try_wait().unwrap().is_none(), "still following");
    let _ = tail.kill();
    let _ = tail.wait();
}

#[test]
fn channels_are_set_from_toml_and_json_files_and_reserved_through() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = ["--url", server.url.as_str()];
    let ok = |args: &[&str]| succeeds(args, &url);
    let toml_file = dir.path().join("online.toml");
    std::fs::write(
        &toml_file,
        r#"name = "Online shop"
allocation = "priority"
split = "by_unit"
locations = [
  { store_id = "WH1", priority = 1 },
  { store_id = "Store #1", priority = 2, safety_stock = 2 },
]
"#,
    )
    .unwrap();
    let file = toml_file.to_str().unwrap();
    let set = ok(&[
        "channels",
        "set",
        "online",
        "--file",
        file,
        "--if-version",
        "0",
    ]);
    assert!(
        set.contains("channel online (version 1): priority, split by_unit"),
        "{set}"
    );
    assert!(set.contains("Store #1 priority 2 safety stock 2"), "{set}");
    // Compare-and-set: version 0 again is refused, exit 1 naming the conflict.
    let stale = run(&[
        &[
            "channels",
            "set",
            "online",
            "--file",
            file,
            "--if-version",
            "0",
        ][..],
        &url,
    ]
    .concat());
    assert_eq!(stale.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stale.stderr).contains("version"));
    let json_file = dir.path().join("pos.json");
    std::fs::write(
        &json_file,
        r#"{"allocation": "priority", "split": "none", "locations": [{"store_id": "Store #1"}]}"#,
    )
    .unwrap();
    ok(&[
        "channels",
        "set",
        "pos-S1",
        "--file",
        json_file.to_str().unwrap(),
    ]);
    let listed = ok(&["channels", "list"]);
    assert!(
        listed.contains("channel online") && listed.contains("channel pos-S1"),
        "{listed}"
    );
    // A bad file is refused by the server, naming the field; nothing changes.
    std::fs::write(
        &json_file,
        r#"{"allocation": "priority", "split": "none", "locations": []}"#,
    )
    .unwrap();
    let bad = run(&[
        &[
            "channels",
            "set",
            "pos-S1",
            "--file",
            json_file.to_str().unwrap(),
        ][..],
        &url,
    ]
    .concat());
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("locations"));

    ok(&[
        "adjust", "--store", "WH1", "--sku", "A", "--delta", "1", "--reason", "stock_in",
    ]);
    ok(&[
        "adjust", "--store", "Store #1", "--sku", "A", "--delta", "4", "--reason", "stock_in",
    ]);
    let placed = ok(&[
        "reserve",
        "--order",
        "O-1",
        "--channel",
        "online",
        "--line",
        "A=3",
    ]);
    assert!(placed.contains("channel online"), "{placed}");
    assert!(
        placed.contains("at WH1: 1 reserved") && placed.contains("at Store #1: 2 reserved"),
        "{placed}"
    );
    let short = run(&[
        &[
            "reserve",
            "--order",
            "O-2",
            "--channel",
            "online",
            "--line",
            "A=1",
        ][..],
        &url,
    ]
    .concat());
    assert_eq!(
        short.status.code(),
        Some(1),
        "the shelf keeps its safety stock"
    );
    let changed = ok(&[
        "safety-stock",
        "set",
        "--channel",
        "online",
        "--store",
        "Store #1",
        "--sku",
        "A",
        "--units",
        "0",
    ]);
    assert!(changed.contains("1 override(s) changed"), "{changed}");
    let second: Value = serde_json::from_str(&ok(&[
        "reserve",
        "--order",
        "O-2",
        "--channel",
        "online",
        "--line",
        "A=1",
        "--json",
    ]))
    .unwrap();
    let id = second["reservation_id"].as_str().unwrap();
    let shipped = ok(&["fulfil", id, "--line", "A=1", "--store", "Store #1"]);
    assert!(
        shipped.contains("at Store #1: 1 reserved, 0 released, 1 fulfilled"),
        "{shipped}"
    );
    ok(&[
        "safety-stock",
        "set",
        "--channel",
        "online",
        "--store",
        "Store #1",
        "--sku",
        "A",
        "--remove",
    ]);
    let both = run(&[
        &[
            "reserve",
            "--order",
            "O-3",
            "--store",
            "S1",
            "--channel",
            "online",
            "--line",
            "A=1",
        ][..],
        &url,
    ]
    .concat());
    assert_eq!(
        both.status.code(),
        Some(2),
        "--store and --channel exclude each other"
    );
}
