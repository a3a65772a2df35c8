//! The webhook's Standard Webhooks signatures, checked by the specification's own
//! Python library (`standardwebhooks` on PyPI), not by our code.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::Server;

/// (headers, body) of every POST received.
type Captured = Arc<Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

async fn capture_server(seen: Captured) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let headers = headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                seen.lock().unwrap().push((headers, body.to_vec()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
headers = dict(json.load(open(sys.argv[1])))
body = open(sys.argv[2], "rb").read()
for secret in sys.argv[3:]:
    if secret.startswith("bad:"):
        try:
            Webhook(secret[4:].encode()).verify(body, headers)
        except WebhookVerificationError:
            print("refused", secret[4:])
            continue
        sys.exit("a wrong secret verified")
    key = secret if secret.startswith("whsec_") else secret.encode()
    Webhook(key).verify(body, headers)
    print("verified", secret)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_rotating_secrets_verify_with_the_standard_webhooks_library() {
    let Some(()) = invsync_testkit::tool(
        "standardwebhooks (PyPI)",
        "python3",
        &["-c", "import standardwebhooks"],
    ) else {
        return;
    };
    let seen: Captured = Arc::default();
    let hook = capture_server(seen.clone()).await;
    // The current secret in the spec's own format, the previous one a plain string.
    let current = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let previous = "invsync-previous-secret-1";
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--webhook-url",
            &hook,
            "--webhook-secret",
            current,
            "--webhook-previous-secret",
            previous,
        ],
    );
    common::adjust(
        &common::client(),
        &server.url,
        "Store #1",
        "TSHIRT RED/XL",
        2,
    )
    .await;
    let (headers, body) = common::eventually(
        "the webhook is delivered",
        Duration::from_secs(30),
        || async { seen.lock().unwrap().first().cloned() },
    )
    .await;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        header("webhook-id").as_deref(),
        event["id"].as_str(),
        "webhook-id is the event id"
    );
    assert_eq!(
        header("webhook-signature").unwrap().split(' ').count(),
        2,
        "one signature per secret"
    );
    assert!(
        header("x-invsync-signature")
            .unwrap()
            .starts_with("sha256="),
        "the old scheme stays"
    );

    let files = dir.path();
    std::fs::write(
        files.join("headers.json"),
        serde_json::to_vec(&headers).unwrap(),
    )
    .unwrap();
    std::fs::write(files.join("body"), &body).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", VERIFY])
        .arg(files.join("headers.json"))
        .arg(files.join("body"))
        .args([current, previous, "bad:not-the-secret-at-all"])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.lines().filter(|l| l.starts_with("verified")).count(),
        2,
        "{said}"
    );
    assert!(said.contains("refused not-the-secret-at-all"), "{said}");
}

/// `[[webhook]]` tables: each endpoint is its own consumer — its own position, event
/// types, dead letters, metrics and replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_configured_endpoint_is_its_own_consumer() {
    use common::receiver::{Receiver, SECRET};
    let (all, orders) = (Receiver::default(), Receiver::default());
    all.behaviour.lock().unwrap().reject_ref = Some("POISON".into());
    let (all_url, orders_url) = (all.clone().start().await, orders.clone().start().await);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("invsync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[webhook]]
name = "ims"
url = "{all_url}"
secret = "{SECRET}"

[[webhook]]
name = "orders"
url = "{orders_url}"
secret = "{SECRET}"
events = ["reserved", "com.invsync.inventory.released.v1"]
"#
        ),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let (http, url) = (common::client(), server.url.clone());
    common::adjust(&http, &url, "S1", "MULTI", 5).await;
    let poison = serde_json::json!({"store_id": "S1", "sku": "MULTI", "delta": 1, "reason": "stock_in", "external_ref": "POISON"});
    common::post(&http, &format!("{url}/v1/adjustments"), poison).await;
    let order = serde_json::json!({"order_id": "O-M1", "store_id": "S1", "lines": [{"sku": "MULTI", "quantity": 2}]});
    let (status, reservation) = common::post(&http, &format!("{url}/v1/reservations"), order).await;
    assert_eq!(status, 201, "{reservation}");
    let id = reservation["reservation_id"].as_str().unwrap().to_owned();
    let (status, _) = common::post(
        &http,
        &format!("{url}/v1/reservations/{id}/release"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200);

    // ims gets every event but the poison; orders only the reservation's two.
    common::eventually(
        "both endpoints deliver",
        Duration::from_secs(30),
        || async {
            let (a, o) = (
                all.seen.lock().unwrap().accepted.len(),
                orders.seen.lock().unwrap().accepted.len(),
            );
            (a == 3 && o == 2).then_some(())
        },
    )
    .await;
    let versions: Vec<i64> = orders
        .seen
        .lock()
        .unwrap()
        .accepted
        .iter()
        .map(|a| a.3)
        .collect();
    assert_eq!(
        versions,
        [3, 4],
        "the reservation (v3) and its release (v4), not the adjustments"
    );
    let (_, consumers) = common::get(&http, &format!("{url}/v1/consumers")).await;
    let names: Vec<&str> = consumers["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["storefront", "ims", "orders"]);
    let (_, letters) = common::get(&http, &format!("{url}/v1/dead-letters?consumer=ims")).await;
    assert_eq!(letters["items"].as_array().unwrap().len(), 1, "{letters}");
    let (_, none) = common::get(&http, &format!("{url}/v1/dead-letters?consumer=orders")).await;
    assert!(none["items"].as_array().unwrap().is_empty());
    let metrics = common::metrics_text(&http, &url).await;
    for name in ["ims", "orders"] {
        assert!(
            metrics.contains(&format!(
                "invsync_consumer_lag_events{{consumer=\"{name}\"}}"
            )),
            "{name}'s lag is on /metrics"
        );
    }

    // Replaying one endpoint re-delivers to it alone.
    let (status, _) = common::post(
        &http,
        &format!("{url}/v1/consumers/orders/replay"),
        serde_json::json!({"from_offset": 1}),
    )
    .await;
    assert_eq!(status, 202);
    common::eventually(
        "orders gets its events again",
        Duration::from_secs(30),
        || async { (orders.seen.lock().unwrap().accepted.len() == 4).then_some(()) },
    )
    .await;
    assert_eq!(
        all.seen.lock().unwrap().accepted.len(),
        3,
        "ims is not replayed"
    );
}
