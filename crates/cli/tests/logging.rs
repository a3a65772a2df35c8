//! What the server logs: a request id on every request (taken from `X-Request-Id` or
//! made, returned, and on every line of the request), one access-log line per
//! request, spans with the shared field names around ledger commands and
//! deliveries — and never a secret or a token, at any level.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::receiver::{Receiver, SECRET as WEBHOOK_SECRET};
use common::{eventually, Server};
use serde_json::json;

const TOKEN: &str = "tok-ADMIN-0123456789-secret-value";
const PREVIOUS_SECRET: &str = "previous-secret-9999-do-not-log";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_traced_by_id_and_no_secret_is_ever_logged() {
    let receiver = Receiver::default();
    let hook = receiver.clone().start().await;
    // The receiver refuses everything at first: the delivery span's error shows.
    receiver.behaviour.lock().unwrap().unavailable_until =
        Some(std::time::Instant::now() + Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nname = \"ops\"\nscopes = [\"admin\", \"reserve\", \"adjust\", \"read\"]\ntoken = \"{TOKEN}\"\n"
        ),
    )
    .unwrap();
    let server = Server::start_logging(
        &dir.path().join("data"),
        &[
            "--tokens",
            tokens.to_str().unwrap(),
            "--webhook-url",
            &hook,
            "--webhook-secret",
            WEBHOOK_SECRET,
            "--webhook-previous-secret",
            PREVIOUS_SECRET,
        ],
        // Every level of every crate, dependencies included.
        "trace",
    );
    let http = common::client();
    let url = &server.url;
    let send = |method: reqwest::Method, path: &str, id: Option<&str>, body: serde_json::Value| {
        let mut request = http
            .request(method, format!("{url}{path}"))
            .bearer_auth(TOKEN)
            .json(&body);
        if let Some(id) = id {
            request = request.header("X-Request-Id", id);
        }
        request.send()
    };

    let given = send(
        reqwest::Method::POST,
        "/v1/adjustments",
        Some("req-adjust-1"),
        json!({"store_id": "S1", "sku": "LOG-1", "delta": 1, "reason": "stock_in"}),
    )
    .await
    .unwrap();
    assert_eq!(given.status(), 200);
    assert_eq!(
        given.headers()["x-request-id"],
        "req-adjust-1",
        "a caller's id is kept"
    );
    // An order that cannot be served: the ledger command's span reports it.
    let refused = send(
        reqwest::Method::POST,
        "/v1/reservations",
        None,
        json!({"order_id": "ORDER-LOG-7", "store_id": "S1", "lines": [{"sku": "LOG-1", "quantity": 5}]}),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 409);
    let made = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        uuid::Uuid::parse_str(&made).is_ok(),
        "an id is made: {made}"
    );
    // An unusable id (a control character cannot be sent; too long can) is replaced.
    let long = "x".repeat(200);
    let replaced = send(
        reqwest::Method::GET,
        "/v1/stock/S1/LOG-1",
        Some(&long),
        json!(null),
    )
    .await
    .unwrap();
    assert_ne!(replaced.headers()["x-request-id"], long.as_str());

    // Delivered once the receiver comes back; its refusals were traced meanwhile.
    eventually("the webhook delivers", Duration::from_secs(30), || async {
        (!receiver.accepted_ids().is_empty()).then_some(())
    })
    .await;

    let log = server.log.lock().unwrap().join("\n");
    let line = |needles: &[&str]| {
        log.lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
    };
    let access = line(&["invsync::access", "request.id=req-adjust-1"])
        .expect("an access line for the adjustment");
    for part in [
        "http.method=POST",
        "http.route=/v1/adjustments",
        "http.status=200",
        "duration_ms=",
    ] {
        assert!(access.contains(part), "{part} missing in: {access}");
    }
    let command = line(&[&format!("request.id={made}"), "order.id=ORDER-LOG-7"])
        .expect("the reservation's span, inside the request's, names the order");
    assert!(command.contains("reserve{"), "{command}");
    let delivery = line(&["event.id=", "log.offset=", "503"]).unwrap_or_else(|| {
        panic!(
            "a refused delivery is traced with the event and its offset:\n{}",
            log.lines()
                .filter(|l| l.contains("deliver"))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(delivery.contains("deliver{"), "{delivery}");

    for secret in [TOKEN, WEBHOOK_SECRET, PREVIOUS_SECRET] {
        assert!(
            !log.contains(secret),
            "a secret reached the log: {}",
            log.lines().find(|l| l.contains(secret)).unwrap_or_default()
        );
    }
}
