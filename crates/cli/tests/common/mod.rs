//! The `invsync` binary as a child process, and helpers over its HTTP API.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod receiver;

pub const BIN: &str = env!("CARGO_BIN_EXE_invsync");

/// A server process on a free port; killed by its pid (through the handle) on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    /// Everything the process wrote to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::run(&["serve"], data_dir, extra)
    }

    /// `invsync consume NAME` as its own process.
    pub fn consume(name: &str, data_dir: &Path, extra: &[&str]) -> Self {
        Self::run(&["consume", name], data_dir, extra)
    }

    /// `invsync serve` with `RUST_LOG` set to `filter`.
    pub fn start_logging(data_dir: &Path, extra: &[&str], filter: &str) -> Self {
        Self::run_with(&["serve"], data_dir, extra, filter)
    }

    fn run(command: &[&str], data_dir: &Path, extra: &[&str]) -> Self {
        Self::run_with(command, data_dir, extra, "info")
    }

    fn run_with(command: &[&str], data_dir: &Path, extra: &[&str], filter: &str) -> Self {
        let mut child = Command::new(BIN)
            .args(command)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn invsync serve");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            // Keep draining stderr so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("addr=").nth(1) {
                    let _ = tx.send(
                        addr.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "the server did not start ({e}); its log:\n{}",
                    log.lock().unwrap().join("\n")
                )
            });
        Self {
            child,
            url: format!("http://{addr}"),
            log,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL on unix
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

pub async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let resp = http.get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let resp = http.post(url).json(&body).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn put(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let resp = http.put(url).json(&body).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn adjust(
    http: &reqwest::Client,
    url: &str,
    store: &str,
    sku: &str,
    delta: i64,
) -> Value {
    let body = json!({"store_id": store, "sku": sku, "delta": delta, "reason": "stock_in"});
    let (status, v) = post(http, &format!("{url}/v1/adjustments"), body).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Polls `probe` until it returns `Some`, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event of the log (from the oldest retained), as (offset, envelope).
pub async fn all_events(http: &reqwest::Client, url: &str) -> Vec<(i64, Value)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = get(http, &format!("{url}/v1/events?after={after}&limit=1000")).await;
        if status == 410 {
            after = page["oldest_offset"].as_i64().unwrap() - 1;
            continue;
        }
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        for e in events {
            after = e["offset"].as_i64().unwrap();
            out.push((after, e["event"].clone()));
        }
    }
}

/// The head of the log and the storefront consumer's position.
pub async fn storefront_caught_up(http: &reqwest::Client, url: &str) -> bool {
    let (_, consumers) = get(http, &format!("{url}/v1/consumers")).await;
    consumers["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "storefront")
        .all(|c| c["lag_events"] == 0)
}

/// The text of `/metrics`.
pub async fn metrics_text(http: &reqwest::Client, url: &str) -> String {
    let resp = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("request");
    resp.text().await.expect("metrics text")
}

/// The value of an unlabelled metric on `/metrics`.
pub async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A private NATS server with JetStream, or `None` to skip loudly.
pub async fn private_nats() -> Option<invsync_testkit::Nats> {
    tokio::task::spawn_blocking(invsync_testkit::Nats::start)
        .await
        .expect("start task")
}

/// A private PostgreSQL (started on a blocking thread), or `None` to skip the test
/// loudly when it is not installed and services are not required.
pub async fn private_postgres() -> Option<invsync_testkit::Postgres> {
    tokio::task::spawn_blocking(invsync_testkit::Postgres::start)
        .await
        .expect("start task")
}
