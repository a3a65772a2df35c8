//! Spawns the real application on a free loopback port over a private SQLite ledger.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use invsync_api::{Access, AppState, Scope, TokenEntry};
use invsync_ledger::{Ledger, PgConfig, PgLedger, SqliteConfig, SqliteLedger, SystemClock};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub struct App {
    pub url: String,
    pub http: reqwest::Client,
    pub ledger: Arc<dyn Ledger>,
    pub token: Option<String>,
    _dir: tempfile::TempDir,
    /// The private PostgreSQL server, when the app runs on one.
    _pg: Option<invsync_testkit::Postgres>,
}

/// The ledger back ends the HTTP suite runs against.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// An anonymous app on `backend`; `None` (the test skips loudly) when PostgreSQL is
/// not installed and services are not required.
pub async fn spawn_on(backend: Backend) -> Option<App> {
    match backend {
        Backend::Sqlite => Some(spawn().await),
        Backend::Postgres => {
            let pg = tokio::task::spawn_blocking(invsync_testkit::Postgres::start)
                .await
                .ok()??;
            let url = pg.url();
            let ledger: Arc<dyn Ledger> = Arc::new(
                tokio::task::spawn_blocking(move || {
                    PgLedger::open(PgConfig::new(url), Arc::new(SystemClock))
                })
                .await
                .expect("open task")
                .expect("open PostgreSQL ledger"),
            );
            let dir = tempfile::tempdir().expect("temp dir");
            let state = AppState::new(ledger.clone(), Access::Anonymous);
            let mut app = serve(state, ledger, None, dir).await;
            app._pg = Some(pg);
            Some(app)
        }
    }
}

pub async fn spawn() -> App {
    spawn_with(Access::Anonymous, None).await
}

/// An app with the storefront consumer running, as `invsync serve` has it.
pub async fn spawn_with_storefront() -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = open_ledger(&dir);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    std::mem::forget(_stop); // runs for the whole test
    let config =
        invsync_consumers::ConsumerConfig::new("storefront", dir.path().join("storefront.db"));
    let (handle, run) = invsync_consumers::start(
        config,
        Arc::new(invsync_consumers::storefront::Storefront),
        ledger.clone(),
        Arc::new(invsync_consumers::LedgerSource(ledger.clone())),
        stop_rx,
    )
    .expect("start storefront");
    tokio::spawn(run);
    let pipeline = invsync_api::Pipeline {
        sla: std::time::Duration::from_secs(30),
        consumers: vec![handle.clone()],
        storefront: Some((
            invsync_consumers::storefront::StorefrontReader::new(handle.reader().clone()),
            handle,
        )),
    };
    let state = AppState::with_pipeline(
        ledger.clone() as Arc<dyn Ledger>,
        Access::Anonymous,
        pipeline,
    );
    serve(state, ledger, None, dir).await
}

/// An app with three tokens: `reader` (read), `orders` (reserve, read), `admin`.
pub async fn spawn_with_tokens() -> App {
    let entry = |name: &str, scopes: Vec<Scope>| TokenEntry {
        name: name.to_owned(),
        scopes,
        sha256: Sha256::digest(format!("{name}-secret-token").as_bytes()).into(),
    };
    let access = Access::Tokens(vec![
        entry("reader", vec![Scope::Read]),
        entry("orders", vec![Scope::Reserve, Scope::Read]),
        entry("admin", vec![Scope::Admin]),
    ]);
    spawn_with(access, Some("admin-secret-token".to_owned())).await
}

async fn spawn_with(access: Access, token: Option<String>) -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = open_ledger(&dir);
    let state = AppState::new(ledger.clone(), access);
    serve(state, ledger, token, dir).await
}

fn open_ledger(dir: &tempfile::TempDir) -> Arc<dyn Ledger> {
    let config = SqliteConfig::new(dir.path().join("ledger.db"));
    Arc::new(SqliteLedger::open(config, Arc::new(SystemClock)).expect("open ledger"))
}

/// Serves `state` on a free loopback port for the rest of the test.
async fn serve(
    state: AppState,
    ledger: Arc<dyn Ledger>,
    token: Option<String>,
    dir: tempfile::TempDir,
) -> App {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(invsync_api::serve(
        listener,
        invsync_api::router(state),
        std::future::pending(),
        invsync_api::ServeLimits::default(),
    ));
    App {
        url,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client"),
        ledger,
        token,
        _dir: dir,
        _pg: None,
    }
}

/// One answer: status, content type and the JSON body (Null when there is none).
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

impl App {
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{}", self.url, path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = resp.bytes().await.expect("body read");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            content_type,
            body,
        }
    }

    /// A POST declaring a body over the limit but sending none: the server must answer
    /// from the `Content-Length` alone. (A client that is still writing a large body
    /// can lose the early answer when the server closes, so raw TCP keeps it exact.)
    pub async fn post_declaring_oversized_body(&self, path: &str) -> Answer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            2 * 1024 * 1024
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            stream.read_to_end(&mut raw),
        )
        .await
        .expect("the server answers without waiting for the body")
        .expect("read");
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        Answer {
            status: StatusCode::from_u16(status).expect("valid status"),
            content_type,
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.request(Method::POST, path).json(&body))
            .await
    }

    pub async fn adjust(&self, store: &str, sku: &str, delta: i64) -> Answer {
        let a = self
            .post(
                "/v1/adjustments",
                serde_json::json!({"store_id": store, "sku": sku, "delta": delta, "reason": "stock_in"}),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        a
    }

    /// Every event of the log, in offset order, checking offsets are gapless.
    pub async fn all_events(&self) -> Vec<Value> {
        // PostgreSQL: the relay moves committed events into the log asynchronously.
        self.ledger
            .flush(std::time::Duration::from_secs(30))
            .await
            .expect("relay drained");
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .get(&format!("/v1/events?after={after}&limit=1000"))
                .await;
            assert_eq!(page.status, 200, "{}", page.body);
            let events = page.body["events"].as_array().expect("events").clone();
            if events.is_empty() {
                return out;
            }
            for e in events {
                assert_eq!(e["offset"].as_i64(), Some(after + 1), "offsets are gapless");
                after += 1;
                out.push(e["event"].clone());
            }
            assert_eq!(page.body["next_offset"].as_i64(), Some(after));
        }
    }
}
