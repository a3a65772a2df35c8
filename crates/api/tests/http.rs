//! The v1 API through real HTTP against a real SQLite ledger: concurrency (no
//! overselling, one reservation per idempotency key, no deadlock), every error code,
//! a table of malformed requests, auth, and the documented shapes.

// Tests fail loudly on anything unexpected.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{spawn, spawn_on, spawn_with_storefront, spawn_with_tokens, App, Backend};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn reserve_body(order: &str, store: &str, lines: &[(&str, i64)]) -> Value {
    json!({
        "order_id": order,
        "store_id": store,
        "lines": lines.iter().map(|(s, q)| json!({"sku": s, "quantity": q})).collect::<Vec<_>>(),
    })
}

fn reserved_events(events: &[Value], sku: &str) -> usize {
    events
        .iter()
        .filter(|e| e["data"]["event_type"] == "RESERVED" && e["data"]["product_sku"] == sku)
        .count()
}

async fn racing_clients_on_a_hot_sku_reserve_exactly_the_stock(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    // Several rounds, each a fresh SKU with stock N and 4N clients racing for it.
    for round in 0..5 {
        let sku = format!("HOT-{round}");
        let stock = 25 + round * 10;
        app.adjust("S1", &sku, stock).await;
        let clients = 4 * stock;
        let mut tasks = Vec::new();
        for i in 0..clients {
            let req = app
                .request(Method::POST, "/v1/reservations")
                .json(&reserve_body(&format!("O-{round}-{i}"), "S1", &[(&sku, 1)]));
            tasks.push(tokio::spawn(async move { req.send().await }));
        }
        let (mut created, mut refused) = (0, 0);
        for t in tasks {
            let resp = t.await.unwrap().unwrap();
            match resp.status() {
                StatusCode::CREATED => created += 1,
                StatusCode::CONFLICT => {
                    let body: Value = resp.json().await.unwrap();
                    assert_eq!(body["code"], "insufficient_stock");
                    assert_eq!(body["lines"][0]["available"], 0);
                    refused += 1;
                }
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!(created, stock, "exactly the stock is reserved");
        assert_eq!(refused, clients - stock);
        let level = app.get(&format!("/v1/stock/S1/{sku}")).await.body;
        assert_eq!(
            (level["reserved"].as_i64(), level["available"].as_i64()),
            (Some(stock), Some(0))
        );
        let events = app.all_events().await;
        assert_eq!(
            reserved_events(&events, &sku) as i64,
            stock,
            "one RESERVED event per success"
        );
    }
}

async fn the_same_idempotency_key_sent_concurrently_reserves_once(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    app.adjust("S1", "K", 1000).await;
    for round in 0..5 {
        let body = reserve_body(&format!("O-{round}"), "S1", &[("K", 2)]);
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let req = app
                .request(Method::POST, "/v1/reservations")
                .header("Idempotency-Key", format!("key-{round}"))
                .json(&body);
            tasks.push(tokio::spawn(async move {
                let resp = req.send().await.unwrap();
                (resp.status(), resp.json::<Value>().await.unwrap())
            }));
        }
        let mut ids = HashSet::new();
        let mut created = 0;
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert!(
                status == StatusCode::CREATED || status == StatusCode::OK,
                "{status} {body}"
            );
            created += usize::from(status == StatusCode::CREATED);
            ids.insert(body["reservation_id"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            created, 1,
            "one request creates, the others get the original"
        );
        assert_eq!(ids.len(), 1, "every answer names the same reservation");
    }
    let events = app.all_events().await;
    assert_eq!(
        reserved_events(&events, "K"),
        5,
        "one set of events per key"
    );
    assert_eq!(app.get("/v1/stock/S1/K").await.body["reserved"], 10);
}

async fn multi_line_orders_over_the_same_skus_in_opposite_order_never_deadlock(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    app.adjust("S1", "A", 100_000).await;
    app.adjust("S1", "B", 100_000).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let lines: &[(&str, i64)] = if i % 2 == 0 {
            &[("A", 1), ("B", 2)]
        } else {
            &[("B", 2), ("A", 1)]
        };
        let req = app
            .request(Method::POST, "/v1/reservations")
            .json(&reserve_body(&format!("O-{i}"), "S1", lines));
        tasks.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    // A deadlock would leave requests hanging: wait for all of them, with a generous
    // deadline so a hang fails the test instead of blocking the suite.
    let all = async {
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        statuses
    };
    let statuses = tokio::time::timeout(std::time::Duration::from_secs(60), all)
        .await
        .expect("every request completes");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED));
    assert_eq!(app.get("/v1/stock/S1/A").await.body["reserved"], 200);
    assert_eq!(app.get("/v1/stock/S1/B").await.body["reserved"], 400);
}

async fn a_reservation_lives_through_partial_release_and_fulfilment(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    app.adjust("S1", "A", 10).await;
    app.adjust("S1", "B", 5).await;
    let created = app
        .post(
            "/v1/reservations",
            json!({
                "order_id": "O-1", "store_id": "S1", "ttl_seconds": 900,
                "lines": [{"sku": "A", "quantity": 4}, {"sku": "B", "quantity": 2}]
            }),
        )
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["status"], "active");
    assert!(created.body["expires_at"].is_string());
    let id = created.body["reservation_id"].as_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);

    let repeat = app
        .post(
            "/v1/reservations",
            json!({
                "order_id": "O-1", "store_id": "S1", "ttl_seconds": 900,
                "lines": [{"sku": "A", "quantity": 4}, {"sku": "B", "quantity": 2}]
            }),
        )
        .await;
    assert_eq!(repeat.status, 200);
    assert_eq!(repeat.body["reservation_id"], id.as_str());

    let released = app
        .post(
            &format!("/v1/reservations/{id}/release"),
            json!({"lines": [{"sku": "A", "quantity": 1}], "reason": "order_changed"}),
        )
        .await;
    assert_eq!(released.status, 200, "{}", released.body);
    assert_eq!(released.body["lines"][0]["released"], 1);
    assert_eq!(released.body["status"], "active");

    let fulfilled = app
        .send(app.request(Method::POST, &format!("/v1/reservations/{id}/fulfil")))
        .await;
    assert_eq!(fulfilled.status, 200, "{}", fulfilled.body);
    assert_eq!(fulfilled.body["status"], "fulfilled");
    assert_eq!(fulfilled.body["lines"][0]["fulfilled"], 3);

    // Nothing is held any more: release and fulfil answer 200 without an event.
    let before = app.all_events().await.len();
    let again = app
        .send(app.request(Method::POST, &format!("/v1/reservations/{id}/release")))
        .await;
    assert_eq!(
        (again.status, again.body["status"].as_str()),
        (StatusCode::OK, Some("fulfilled"))
    );
    assert_eq!(app.all_events().await.len(), before);

    let a = app.get("/v1/stock/S1/A").await.body;
    assert_eq!(
        (
            a["on_hand"].as_i64(),
            a["reserved"].as_i64(),
            a["available"].as_i64()
        ),
        (Some(7), Some(0), Some(7))
    );
    let listed = app.get("/v1/reservations?order_id=O-1").await.body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.get(&format!("/v1/reservations/{id}")).await.body["status"],
        "fulfilled"
    );

    // The log tells the whole story, with state-carrying events.
    let events = app.all_events().await;
    let kinds: Vec<(String, String, i64)> = events
        .iter()
        .map(|e| {
            (
                e["data"]["event_type"].as_str().unwrap().to_owned(),
                e["data"]["reason"].as_str().unwrap().to_owned(),
                e["data"]["quantity"].as_i64().unwrap(),
            )
        })
        .collect();
    let expect = |t: &str, r: &str, q: i64| (t.to_owned(), r.to_owned(), q);
    assert_eq!(
        kinds,
        vec![
            expect("ADJUSTED", "stock_in", 10),
            expect("ADJUSTED", "stock_in", 5),
            expect("RESERVED", "order_placed", 4),
            expect("RESERVED", "order_placed", 2),
            expect("RELEASED", "order_changed", -1),
            expect("ADJUSTED", "fulfilled", -3),
            expect("ADJUSTED", "fulfilled", -2),
        ]
    );
    for e in &events {
        assert_eq!(
            e["type"],
            format!(
                "com.invsync.inventory.{}.v1",
                e["data"]["event_type"].as_str().unwrap().to_lowercase()
            )
        );
        assert_eq!(e["partitionkey"], e["data"]["product_sku"]);
    }
}

async fn adjustments_counts_shortages_and_batches(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    let counted = app
        .post(
            "/v1/adjustments",
            json!({"store_id": "S1", "sku": "A", "set_on_hand": 40, "reason": "cycle_count"}),
        )
        .await;
    assert_eq!(
        (
            counted.status,
            counted.body["on_hand"].as_i64(),
            counted.body["version"].as_i64()
        ),
        (StatusCode::OK, Some(40), Some(1))
    );
    app.post("/v1/reservations", reserve_body("O-1", "S1", &[("A", 30)]))
        .await;
    let out = app
        .post(
            "/v1/adjustments",
            json!({"store_id": "S1", "sku": "A", "delta": -25, "reason": "damage"}),
        )
        .await;
    assert_eq!(
        (
            out.body["available"].as_i64(),
            out.body["shortage"].as_i64()
        ),
        (Some(-15), Some(15))
    );
    // A count equal to on_hand changes nothing and writes no event.
    let same = app
        .post(
            "/v1/adjustments",
            json!({"store_id": "S1", "sku": "A", "set_on_hand": 15, "reason": "cycle_count"}),
        )
        .await;
    assert_eq!(
        (same.body["event_id"].clone(), same.body["version"].as_i64()),
        (Value::Null, Some(3))
    );

    let batch = app
        .post(
            "/v1/adjustments/batch",
            json!({"items": [
                {"store_id": "S1", "sku": "B", "delta": 5, "reason": "stock_in"},
                {"store_id": "S1", "sku": "B", "delta": -50, "reason": "stock_out"},
                {"store_id": "S1", "sku": "C", "set_on_hand": 7, "reason": "cycle_count"},
            ]}),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    let results = batch.body["results"].as_array().unwrap();
    assert_eq!(results[0]["ok"]["on_hand"], 5);
    assert_eq!(results[1]["error"]["code"], "insufficient_on_hand");
    assert_eq!(results[2]["ok"]["on_hand"], 7);
    assert_eq!(app.get("/v1/stock/S1/B").await.body["on_hand"], 5);
}

/// A sale at the till (channels.md): reason `sale`, a negative delta, an optional
/// channel that the event carries; anything else under `sale` is refused, naming
/// `delta`, and writes nothing.
async fn a_till_sale_is_an_adjustment_that_carries_its_channel(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    app.adjust("Store #1", "TSHIRT RED/XL", 5).await;
    let sale = json!({"store_id": "Store #1", "sku": "TSHIRT RED/XL", "delta": -1,
        "reason": "sale", "channel": "pos-S1", "external_ref": "till-7/receipt-0042"});
    let sold = app.post("/v1/adjustments", sale.clone()).await;
    assert_eq!(sold.status, StatusCode::OK, "{}", sold.body);
    assert_eq!(sold.body["on_hand"], 4);
    // A repeat under the same external_ref is the same sale, once.
    let again = app.post("/v1/adjustments", sale).await;
    assert_eq!(again.body["event_id"], sold.body["event_id"]);
    // Without a channel it is a sale all the same.
    let plain =
        json!({"store_id": "Store #1", "sku": "TSHIRT RED/XL", "delta": -1, "reason": "sale"});
    assert_eq!(
        app.post("/v1/adjustments", plain).await.status,
        StatusCode::OK
    );

    for refused in [
        json!({"store_id": "Store #1", "sku": "TSHIRT RED/XL", "delta": 2, "reason": "sale"}),
        json!({"store_id": "Store #1", "sku": "TSHIRT RED/XL", "set_on_hand": 1, "reason": "sale"}),
    ] {
        let answer = app.post("/v1/adjustments", refused).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert_eq!(answer.body["field"], "delta", "{}", answer.body);
    }
    let bad_channel = app
        .post(
            "/v1/adjustments",
            json!({"store_id": "S1", "sku": "A", "delta": -1, "reason": "sale", "channel": " pos"}),
        )
        .await;
    assert_eq!(bad_channel.body["field"], "channel", "{}", bad_channel.body);
    assert_eq!(
        app.get("/v1/stock/Store%20%231/TSHIRT%20RED%2FXL")
            .await
            .body["on_hand"],
        3
    );

    app.ledger
        .flush(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let events = app.get("/v1/events?after=0&limit=100").await.body["events"]
        .as_array()
        .unwrap()
        .clone();
    let sales: Vec<&Value> = events
        .iter()
        .map(|e| &e["event"]["data"])
        .filter(|d| d["reason"] == "sale")
        .collect();
    assert_eq!(sales.len(), 2, "two sales, each once");
    assert_eq!(
        (sales[0]["channel"].as_str(), sales[0]["quantity"].as_i64()),
        (Some("pos-S1"), Some(-1))
    );
    assert!(
        sales[1].get("channel").is_none(),
        "no channel: the member is absent, as for events written before channels"
    );
}

async fn put(app: &App, path: &str, body: Value) -> common::Answer {
    app.send(
        app.request(reqwest::Method::PUT, path)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

async fn channels_are_configured_and_reserved_through_over_http(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    let online = json!({"name": "Online shop", "allocation": "priority", "split": "by_unit",
        "locations": [{"store_id": "WH1", "priority": 1, "safety_stock": 0},
                      {"store_id": "Store #1", "priority": 2, "safety_stock": 2}]});
    // Each bad configuration is a 400 naming the field, and writes nothing.
    for (body, field) in [
        (
            json!({"allocation": "priority", "split": "none", "locations": []}),
            "locations",
        ),
        (
            json!({"allocation": "priority", "split": "none",
                "locations": [{"store_id": "S1"}, {"store_id": "S1"}]}),
            "locations[1].store_id",
        ),
        (
            json!({"allocation": "priority", "split": "none",
                "locations": [{"store_id": "S1", "safety_stock": -1}]}),
            "locations[0].safety_stock",
        ),
        (
            json!({"allocation": "nearest", "split": "none", "locations": [{"store_id": "S1"}]}),
            "allocation",
        ),
        (
            json!({"allocation": "priority", "split": "halves", "locations": [{"store_id": "S1"}]}),
            "split",
        ),
    ] {
        let answer = put(&app, "/v1/channels/online", body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert_eq!(answer.body["field"], field, "{}", answer.body);
    }
    assert_eq!(
        app.get("/v1/channels/online").await.status,
        StatusCode::NOT_FOUND
    );

    let created = put(&app, "/v1/channels/online", online.clone()).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.body["locations"][1]["store_id"], "Store #1");
    let mut stale = online.clone();
    stale["if_version"] = json!(0);
    let refused = put(&app, "/v1/channels/online", stale).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(refused.body["code"], "version_conflict");
    assert_eq!(
        app.get("/v1/channels").await.body["items"][0]["channel_id"],
        "online"
    );

    app.adjust("WH1", "TSHIRT RED/XL", 1).await;
    app.adjust("Store #1", "TSHIRT RED/XL", 4).await;
    // Exactly one of store_id and channel.
    for (body, field) in [
        (
            json!({"order_id": "O-1", "lines": [{"sku": "A", "quantity": 1}]}),
            "store_id",
        ),
        (
            json!({"order_id": "O-1", "store_id": "S1", "channel": "online",
                "lines": [{"sku": "A", "quantity": 1}]}),
            "channel",
        ),
    ] {
        let answer = app.post("/v1/reservations", body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert_eq!(answer.body["field"], field, "{}", answer.body);
    }
    let order = json!({"order_id": "gid://shopify/Order/1001", "channel": "online",
        "lines": [{"sku": "TSHIRT RED/XL", "quantity": 3}]});
    let reserved = app.post("/v1/reservations", order.clone()).await;
    assert_eq!(reserved.status, StatusCode::CREATED, "{}", reserved.body);
    assert_eq!(reserved.body["channel"], "online");
    assert!(reserved.body.get("store_id").is_none(), "{}", reserved.body);
    let allocations = &reserved.body["lines"][0]["allocations"];
    assert_eq!(
        (
            allocations[0]["store_id"].as_str(),
            allocations[0]["quantity"].as_i64()
        ),
        (Some("WH1"), Some(1))
    );
    assert_eq!(
        (
            allocations[1]["store_id"].as_str(),
            allocations[1]["quantity"].as_i64()
        ),
        (Some("Store #1"), Some(2))
    );
    assert_eq!(
        app.post("/v1/reservations", order).await.status,
        StatusCode::OK
    );
    // Store #1 keeps its 2 for walk-in customers: one more is short.
    let short = app
        .post(
            "/v1/reservations",
            json!({"order_id": "O-2", "channel": "online",
                "lines": [{"sku": "TSHIRT RED/XL", "quantity": 1}]}),
        )
        .await;
    assert_eq!(short.status, StatusCode::CONFLICT, "{}", short.body);
    assert_eq!(short.body["lines"][0]["available"], 0);
    let unknown = app
        .post(
            "/v1/reservations",
            json!({"order_id": "O-3", "channel": "nope", "lines": [{"sku": "A", "quantity": 1}]}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);

    // Fulfil from the location that shipped.
    let id = reserved.body["reservation_id"].as_str().unwrap().to_owned();
    let shipped = app
        .post(
            &format!("/v1/reservations/{id}/fulfil"),
            json!({"lines": [{"sku": "TSHIRT RED/XL", "quantity": 2, "store_id": "Store #1"}]}),
        )
        .await;
    assert_eq!(shipped.status, StatusCode::OK, "{}", shipped.body);
    assert_eq!(shipped.body["lines"][0]["allocations"][1]["fulfilled"], 2);
    let wrong = app
        .post(
            &format!("/v1/reservations/{id}/release"),
            json!({"lines": [{"sku": "TSHIRT RED/XL", "quantity": 1, "store_id": "S9"}]}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::CONFLICT, "{}", wrong.body);

    // Overrides: validated, counted, removable.
    let path = "/v1/channels/online/safety-stock";
    let bad = put(
        &app,
        path,
        json!({"items": [{"store_id": "S1", "sku": "A", "safety_stock": -2}]}),
    )
    .await;
    assert_eq!(bad.body["field"], "items[0].safety_stock", "{}", bad.body);
    let set =
        json!({"items": [{"store_id": "Store #1", "sku": "TSHIRT RED/XL", "safety_stock": 0}]});
    assert_eq!(put(&app, path, set.clone()).await.body["applied"], 1);
    assert_eq!(put(&app, path, set).await.body["applied"], 0);

    // Reallocation: the till at WH1 sells the unit the order holds there; Store #1
    // (no buffer now) has 2 on hand, so the unit moves there in the sale's
    // transaction. A second sale empties Store #1: nowhere to go, the unit is short.
    let sale = |store: &str, delta: i64| {
        json!({"store_id": store, "sku": "TSHIRT RED/XL", "delta": delta,
            "reason": "sale", "channel": "pos"})
    };
    let sold = app.post("/v1/adjustments", sale("WH1", -1)).await;
    assert_eq!(sold.status, StatusCode::OK, "{}", sold.body);
    assert_eq!(
        (&sold.body["reserved"], &sold.body["shortage"]),
        (&json!(0), &json!(0))
    );
    let moved = app.get(&format!("/v1/reservations/{id}")).await.body;
    let allocations = &moved["lines"][0]["allocations"];
    assert_eq!(allocations.as_array().map(Vec::len), Some(1), "{moved}");
    assert_eq!(
        (
            &allocations[0]["store_id"],
            &allocations[0]["quantity"],
            &allocations[0]["fulfilled"]
        ),
        (&json!("Store #1"), &json!(3), &json!(2)),
        "{moved}"
    );
    let sold = app.post("/v1/adjustments", sale("Store #1", -2)).await;
    assert_eq!(sold.body["shortage"], 1, "{}", sold.body);
    let short = app.get(&format!("/v1/reservations/{id}")).await.body;
    assert_eq!(short["lines"][0]["allocations"][0]["short"], 1, "{short}");
    let reasons: Vec<(String, String)> = app
        .all_events()
        .await
        .iter()
        .filter(|e| e["data"]["reason"] == "reallocated")
        .map(|e| {
            (
                e["data"]["event_type"].to_string(),
                e["data"]["store_id"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("\"RELEASED\"".to_owned(), "\"WH1\"".to_owned()),
            ("\"RESERVED\"".to_owned(), "\"Store #1\"".to_owned())
        ]
    );

    assert_eq!(
        put(
            &app,
            "/v1/channels/nope/safety-stock",
            json!({"items": [{"store_id": "S1", "sku": "A", "safety_stock": 1}]})
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let events = app.all_events().await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        types.contains(&"com.invsync.channel.updated.v1"),
        "{types:?}"
    );
    assert!(
        types.contains(&"com.invsync.channel.safety_stock_set.v1"),
        "{types:?}"
    );
}

async fn stock_is_listed_by_sku_by_store_with_cursors_and_as_a_snapshot(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    let items: Vec<Value> = (0..25)
        .flat_map(|i| ["S1", "S2"].map(|s| json!({"store_id": s, "sku": format!("K{i:02}"), "delta": i + 1, "reason": "stock_in"})))
        .collect();
    assert_eq!(
        app.post("/v1/adjustments/batch", json!({"items": items}))
            .await
            .status,
        200
    );

    let by_sku = app.get("/v1/stock?sku=K03").await.body;
    let stores: Vec<&str> = by_sku["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["store_id"].as_str().unwrap())
        .collect();
    assert_eq!(stores, ["S1", "S2"]);

    let mut seen = Vec::new();
    let mut path = "/v1/stock?store_id=S2&limit=10".to_owned();
    loop {
        let page = app.get(&path).await.body;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["sku"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/stock?store_id=S2&limit=10&after={next}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..25).map(|i| format!("K{i:02}")).collect::<Vec<_>>()
    );

    // PostgreSQL: the relay must have moved the events for the snapshot to name them.
    app.ledger
        .flush(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let mut rows = 0;
    let mut path = "/v1/stock/snapshot?limit=20".to_owned();
    loop {
        let page = app.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(
            page.body["log_offset"], 50,
            "consistent with the 50 events written"
        );
        rows += page.body["items"].as_array().unwrap().len();
        match page.body["next"].as_str() {
            Some(next) => path = format!("/v1/stock/snapshot?limit=20&after={next}"),
            None => break,
        }
    }
    assert_eq!(rows, 50);
    let events = app.get("/v1/events?after=48").await.body;
    assert_eq!(events["events"].as_array().unwrap().len(), 2);
    assert_eq!(events["next_offset"], 50);
    let beyond = app.get("/v1/events?after=50").await.body;
    assert_eq!(
        (
            beyond["events"].as_array().unwrap().len(),
            beyond["next_offset"].as_i64()
        ),
        (0, Some(50))
    );
}

/// Every error code this API produces, each from a request that must produce it.
async fn every_error_code_is_produced_as_problem_json(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    app.adjust("S1", "A", 5).await;
    let placed = app
        .post("/v1/reservations", reserve_body("O-1", "S1", &[("A", 2)]))
        .await
        .body;
    let id = placed["reservation_id"].as_str().unwrap().to_owned();

    let cases: Vec<(&str, Answer)> = vec![
        ("invalid_request", app.post("/v1/reservations", json!({"order_id": "O 2"})).await),
        ("not_found", app.get("/v1/stock/S1/NOPE").await),
        ("not_found", app.get(&format!("/v1/reservations/{}", uuid::Uuid::now_v7())).await),
        ("insufficient_stock", app.post("/v1/reservations", reserve_body("O-2", "S1", &[("A", 4)])).await),
        ("insufficient_on_hand", app.post("/v1/adjustments", json!({"store_id": "S1", "sku": "A", "delta": -6, "reason": "stock_out"})).await),
        ("idempotency_conflict", app.post("/v1/reservations", reserve_body("O-1", "S1", &[("A", 1)])).await),
        ("version_conflict", app.post("/v1/adjustments", json!({"store_id": "S1", "sku": "A", "set_on_hand": 9, "reason": "cycle_count", "if_version": 1})).await),
        ("invalid_state", app.post(&format!("/v1/reservations/{id}/release"), json!({"lines": [{"sku": "A", "quantity": 3}]})).await),
        ("payload_too_large", app.post_declaring_oversized_body("/v1/adjustments").await),
        ("unsupported_media_type", app.send(app.request(Method::POST, "/v1/adjustments").header("content-type", "text/plain").body("{}")).await),
        ("unsupported_media_type", app.send(app.request(Method::POST, "/v1/reservations").header("content-type", "application/x-www-form-urlencoded").body("order_id=O")).await),
    ];
    for (code, answer) in cases {
        assert_problem(&answer, code);
    }
    // The external_ref repeat: same body answers the original, another body conflicts.
    let body = json!({"store_id": "S1", "sku": "A", "delta": 1, "reason": "return", "external_ref": "RMA-1"});
    let first = app.post("/v1/adjustments", body.clone()).await.body;
    assert_eq!(app.post("/v1/adjustments", body).await.body, first);
    let other = app.post("/v1/adjustments", json!({"store_id": "S1", "sku": "A", "delta": 2, "reason": "return", "external_ref": "RMA-1"})).await;
    assert_problem(&other, "idempotency_conflict");

    // A ledger that has stopped answers 503 `unavailable`, never a 500 or a hang.
    invsync_ledger::Housekeeping::shutdown(app.ledger.as_ref()).await;
    assert_problem(
        &app.post("/v1/reservations", reserve_body("O-9", "S1", &[("A", 1)]))
            .await,
        "unavailable",
    );
    assert_eq!(app.get("/readyz").await.status, 503);
}

use common::Answer;

fn assert_problem(answer: &Answer, code: &str) {
    assert_eq!(
        answer.content_type, "application/problem+json",
        "{code}: {}",
        answer.body
    );
    assert_eq!(answer.body["code"], code, "{}", answer.body);
    assert_eq!(
        answer.body["status"].as_u64(),
        Some(u64::from(answer.status.as_u16()))
    );
    assert!(
        answer.body["title"].is_string()
            && answer.body["detail"].is_string()
            && answer.body["type"].is_string()
    );
}

async fn malformed_requests_get_a_4xx_naming_the_problem_and_change_nothing(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    app.adjust("S1", "A", 5).await;
    let long = "x".repeat(256);
    let many_lines: Vec<Value> = (0..501)
        .map(|i| json!({"sku": format!("S{i}"), "quantity": 1}))
        .collect();
    let many_items: Vec<Value> = (0..1001)
        .map(|_| json!({"store_id": "S1", "sku": "A", "delta": 1, "reason": "stock_in"}))
        .collect();
    let rid = uuid::Uuid::now_v7();
    // (method, path, body, the field the problem must name — or None when no field applies)
    let cases: Vec<(Method, String, Option<Value>, Option<&str>)> = vec![
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(json!({"order_id": 1, "store_id": "S1", "lines": []})),
            Some("order_id"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(json!({"order_id": "O", "store_id": long, "lines": []})),
            Some("store_id"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(json!({"order_id": "O", "store_id": "S1", "lines": []})),
            Some("lines"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(json!({"order_id": "O", "store_id": "S1", "lines": many_lines})),
            Some("lines"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(reserve_body("O", "S1", &[("A", 1), ("A", 2)])),
            Some("lines[1].sku"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(reserve_body("O", "S1", &[("A", 0)])),
            Some("lines[0].quantity"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(reserve_body("O", "S1", &[("A", 1_000_001)])),
            Some("lines[0].quantity"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(reserve_body("O", "S1", &[("A\u{1}B", 1)])),
            Some("lines[0].sku"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(
                json!({"order_id": "O", "store_id": "S1", "lines": [{"sku": "A", "quantity": 1.5}]}),
            ),
            Some("lines[0].quantity"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(
                json!({"order_id": "O", "store_id": "S1", "lines": [{"sku": "A", "quantity": 1, "qty": 1}]}),
            ),
            Some("lines[0].qty"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(
                json!({"order_id": "O", "store_id": "S1", "lines": [{"sku": "A", "quantity": 1}], "ttl_seconds": 604801}),
            ),
            Some("ttl_seconds"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(
                json!({"order_id": "O", "store_id": "S1", "lines": [{"sku": "A", "quantity": 1}], "colour": "red"}),
            ),
            Some("colour"),
        ),
        (
            Method::POST,
            "/v1/reservations".into(),
            Some(json!(["O", "S1", []])),
            Some("body"),
        ),
        (Method::POST, "/v1/reservations".into(), None, Some("body")),
        (
            Method::POST,
            "/v1/adjustments".into(),
            Some(json!({"store_id": "S1", "sku": "A", "reason": "stock_in"})),
            Some("delta"),
        ),
        (
            Method::POST,
            "/v1/adjustments".into(),
            Some(
                json!({"store_id": "S1", "sku": "A", "delta": 1, "set_on_hand": 1, "reason": "stock_in"}),
            ),
            Some("delta"),
        ),
        (
            Method::POST,
            "/v1/adjustments".into(),
            Some(json!({"store_id": "S1", "sku": "A", "delta": 0, "reason": "stock_in"})),
            Some("delta"),
        ),
        (
            Method::POST,
            "/v1/adjustments".into(),
            Some(
                json!({"store_id": "S1", "sku": "A", "delta": 1_000_000_001i64, "reason": "stock_in"}),
            ),
            Some("delta"),
        ),
        (
            Method::POST,
            "/v1/adjustments".into(),
            Some(json!({"store_id": "S1", "sku": "A", "set_on_hand": -1, "reason": "cycle_count"})),
            Some("set_on_hand"),
        ),
        (
            Method::POST,
            "/v1/adjustments".into(),
            Some(json!({"store_id": "S1", "sku": "A", "delta": 1, "reason": "theft"})),
            Some("reason"),
        ),
        (
            Method::POST,
            "/v1/adjustments".into(),
            Some(
                json!({"store_id": "S1", "sku": "A", "delta": 1, "reason": "stock_in", "if_version": -1}),
            ),
            Some("if_version"),
        ),
        (
            Method::POST,
            "/v1/adjustments".into(),
            Some(
                json!({"store_id": "S1", "sku": "A", "delta": 1, "reason": "stock_in", "external_ref": ""}),
            ),
            Some("external_ref"),
        ),
        (
            Method::POST,
            "/v1/adjustments/batch".into(),
            Some(json!({"items": []})),
            Some("items"),
        ),
        (
            Method::POST,
            "/v1/adjustments/batch".into(),
            Some(json!({"items": many_items})),
            Some("items"),
        ),
        (
            Method::POST,
            "/v1/adjustments/batch".into(),
            Some(
                json!({"items": [{"store_id": "S1", "sku": "A", "delta": 1, "reason": "stock_in"}, {"store_id": "S1", "sku": "A", "reason": "stock_in"}]}),
            ),
            Some("items[1].delta"),
        ),
        (
            Method::POST,
            format!("/v1/reservations/{rid}/release"),
            Some(json!({"lines": [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 1}]})),
            Some("lines[1].sku"),
        ),
        (
            Method::POST,
            format!("/v1/reservations/{rid}/release"),
            Some(json!({"reason": "bored"})),
            Some("reason"),
        ),
        (
            Method::POST,
            format!("/v1/reservations/{rid}/fulfil"),
            Some(json!({"lines": []})),
            Some("lines"),
        ),
        (
            Method::POST,
            "/v1/reservations/not-a-uuid/release".into(),
            None,
            Some("reservation_id"),
        ),
        (
            Method::GET,
            "/v1/reservations/123".into(),
            None,
            Some("reservation_id"),
        ),
        (
            Method::GET,
            "/v1/reservations".into(),
            None,
            Some("order_id"),
        ),
        (
            Method::GET,
            "/v1/stock/S%0A1/A".into(),
            None,
            Some("store_id"),
        ),
        (
            Method::GET,
            "/v1/stock/S1/A%2FB%20".into(),
            None,
            Some("sku"),
        ),
        (Method::GET, "/v1/stock".into(), None, Some("sku")),
        (
            Method::GET,
            "/v1/stock?sku=A&store_id=S1".into(),
            None,
            Some("sku"),
        ),
        (
            Method::GET,
            "/v1/stock?store_id=S1&limit=0".into(),
            None,
            Some("limit"),
        ),
        (
            Method::GET,
            "/v1/stock?store_id=S1&limit=abc".into(),
            None,
            Some("limit"),
        ),
        (
            Method::GET,
            "/v1/stock?store_id=S1&after=%20b".into(),
            None,
            Some("after"),
        ),
        (
            Method::GET,
            "/v1/stock?store_id=S1&colour=red".into(),
            None,
            Some("colour"),
        ),
        (
            Method::GET,
            "/v1/stock/snapshot?after=nocursor".into(),
            None,
            Some("after"),
        ),
        (
            Method::GET,
            "/v1/events?after=-1".into(),
            None,
            Some("after"),
        ),
        (
            Method::GET,
            "/v1/events?limit=1001".into(),
            None,
            Some("limit"),
        ),
        (
            Method::GET,
            "/v1/events?after=99999999999999999999".into(),
            None,
            Some("after"),
        ),
    ];
    for (method, path, body, field) in cases {
        let mut req = app.request(method.clone(), &path);
        if let Some(body) = &body {
            req = req.json(body);
        }
        let answer = app.send(req).await;
        assert!(
            answer.status.is_client_error(),
            "{method} {path} {body:?}: {} {}",
            answer.status,
            answer.body
        );
        assert_eq!(
            answer.content_type, "application/problem+json",
            "{method} {path}"
        );
        assert_eq!(
            answer.body["field"].as_str(),
            field,
            "{method} {path}: {}",
            answer.body
        );
    }
    // Other shapes of bad input: wrong content type, broken JSON, unknown routes and
    // methods. None may answer 5xx.
    let raw = [
        app.request(Method::POST, "/v1/adjustments")
            .header("content-type", "text/plain")
            .body("{}"),
        app.request(Method::POST, "/v1/adjustments")
            .header("content-type", "application/json")
            .body("{\"store_id\": "),
        app.request(Method::POST, "/v1/adjustments")
            .header("content-type", "application/json")
            .body(vec![0xff, 0xfe]),
        app.request(Method::POST, "/v1/adjustments")
            .header("content-type", "application/json")
            .body("{} {}"),
        app.request(Method::POST, "/v1/reservations")
            .header("Idempotency-Key", "bad\tkey")
            .json(&reserve_body("O", "S1", &[("A", 1)])),
        app.request(Method::DELETE, "/v1/stock"),
        app.request(Method::GET, "/v2/stock"),
    ];
    for req in raw {
        let answer = app.send(req).await;
        assert!(
            answer.status.is_client_error(),
            "{} {}",
            answer.status,
            answer.body
        );
        assert_eq!(answer.content_type, "application/problem+json");
    }
    // Nothing above wrote anything: the log still holds only the first adjustment.
    assert_eq!(app.all_events().await.len(), 1);
}

#[tokio::test]
async fn tokens_and_scopes_guard_every_route_but_health_and_metrics() {
    let mut app = spawn_with_tokens().await;
    app.token = None;
    assert_eq!(app.get("/healthz").await.status, 200);
    assert_eq!(app.get("/readyz").await.status, 200);
    assert_eq!(app.get("/metrics").await.status, 200);
    let page = app.send(app.request(Method::GET, "/")).await;
    assert_eq!(
        (page.status, page.content_type.as_str()),
        (StatusCode::OK, "text/html; charset=utf-8")
    );
    let anonymous = app.get("/v1/stock?sku=A").await;
    assert_problem(&anonymous, "unauthorized");
    assert_eq!(
        app.get("/openapi.json").await.status,
        200,
        "the contract needs no token"
    );

    app.token = Some("wrong-token".into());
    assert_problem(&app.get("/v1/stock?sku=A").await, "unauthorized");

    // Schemes are case-insensitive (RFC 9110): a client sending BEARER is let in.
    app.token = None;
    for scheme in ["BEARER", "bearer", "Bearer"] {
        let raw = app
            .request(Method::GET, "/v1/stock?sku=A")
            .header("Authorization", format!("{scheme} reader-secret-token"));
        assert_eq!(app.send(raw).await.status, 200, "{scheme}");
    }

    app.token = Some("reader-secret-token".into());
    assert_eq!(app.get("/v1/stock?sku=A").await.status, 200);
    assert_problem(
        &app.post("/v1/reservations", reserve_body("O", "S1", &[("A", 1)]))
            .await,
        "forbidden",
    );

    app.token = Some("orders-secret-token".into());
    assert_problem(
        &app.post("/v1/reservations", reserve_body("O", "S1", &[("A", 1)]))
            .await,
        "insufficient_stock",
    );
    assert_problem(
        &app.post(
            "/v1/adjustments",
            json!({"store_id": "S1", "sku": "A", "delta": 1, "reason": "stock_in"}),
        )
        .await,
        "forbidden",
    );

    app.token = Some("admin-secret-token".into());
    assert_eq!(
        app.post(
            "/v1/adjustments",
            json!({"store_id": "S1", "sku": "A", "delta": 1, "reason": "stock_in"})
        )
        .await
        .status,
        200
    );
}

/// The console may not be framed or run injected code; no answer may be sniffed.
#[tokio::test]
async fn the_console_is_served_with_security_headers() {
    let app = spawn().await;
    let page = app.request(Method::GET, "/").send().await.unwrap();
    let h = page.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(
        csp.contains("script-src 'sha256-"),
        "only the page's own script runs: {csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let api = app
        .request(Method::GET, "/v1/stock/S1/none")
        .send()
        .await
        .unwrap();
    assert_eq!(api.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn the_openapi_document_covers_the_contract_of_api_md() {
    let app: App = spawn().await;
    let doc = app.get("/openapi.json").await.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/stock/{store_id}/{sku}", "get"),
        ("/v1/stock", "get"),
        ("/v1/stock/snapshot", "get"),
        ("/v1/adjustments", "post"),
        ("/v1/adjustments/batch", "post"),
        ("/v1/reservations", "post"),
        ("/v1/reservations", "get"),
        ("/v1/reservations/{reservation_id}", "get"),
        ("/v1/reservations/{reservation_id}/release", "post"),
        ("/v1/reservations/{reservation_id}/fulfil", "post"),
        ("/v1/events", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} documented"
        );
    }
    let reserve = &doc["components"]["schemas"]["ReserveBody"]["properties"];
    for field in ["order_id", "store_id", "lines", "ttl_seconds"] {
        assert!(reserve.get(field).is_some(), "ReserveBody.{field}");
    }
}

/// Replay and redrive take an `Idempotency-Key` too: a repeat answers as the first
/// did, another request under the key is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_controls_apply_once_per_idempotency_key() {
    let app = spawn_with_storefront().await;
    app.adjust("S1", "A", 1).await;
    let path = "/v1/consumers/storefront/replay";
    for _ in 0..2 {
        let r = post_keyed(&app, path, "replay-1", json!({"from_offset": 1})).await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    // A position past the head would silently skip what comes: refused.
    let past = app.post(path, json!({"from_offset": 1002})).await;
    assert_eq!(
        (past.status.as_u16(), past.body["field"].as_str()),
        (400, Some("from_offset")),
        "{}",
        past.body
    );
    assert_eq!(
        app.post(path, json!({"from_offset": 2})).await.status,
        202,
        "head + 1 is fine"
    );
    let other = post_keyed(&app, path, "replay-1", json!({"from_offset": 2})).await;
    assert_eq!(other.status, 409, "{}", other.body);
    assert!(other.body["detail"]
        .as_str()
        .unwrap()
        .contains("'replay-1'"));
    let unknown = uuid::Uuid::now_v7();
    let missing = post_keyed(
        &app,
        &format!("/v1/dead-letters/{unknown}/redrive"),
        "rd-1",
        Value::Null,
    )
    .await;
    assert_eq!(
        missing.status, 404,
        "a failed attempt is not remembered as done"
    );
}

/// A stock-out below what is reserved leaves a shortage; the storefront shows 0 for
/// that store, never a negative number, and the total agrees with the stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storefront_never_shows_negative_availability() {
    let app = spawn_with_storefront().await;
    app.adjust("S1", "A", 5).await;
    app.adjust("S2", "A", 2).await;
    let placed = app
        .post("/v1/reservations", reserve_body("O-1", "S1", &[("A", 5)]))
        .await;
    assert_eq!(placed.status, 201);
    let out = app.adjust("S1", "A", -3).await;
    assert_eq!(out.body["available"], -3, "the ledger reports the shortage");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let view = loop {
        let v = app.get("/v1/storefront/availability/A").await.body;
        if v["stores"][0]["version"] == 3 {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "caught up: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(view["stores"][0]["store_id"], "S1");
    assert_eq!(view["stores"][0]["available"], 0, "{view}");
    assert_eq!(view["stores"][1]["available"], 2, "{view}");
    assert_eq!(view["available"], 2, "{view}");
}

/// Positions at or beyond the head are "nothing yet" (200, empty), never 410 or an
/// overflow, in the log, the SSE stream and `Last-Event-ID`.
#[tokio::test]
async fn positions_beyond_the_head_are_nothing_yet() {
    let app = spawn().await;
    app.adjust("S1", "A", 1).await;
    for after in [1, 2, 1_000_000, i64::MAX] {
        let page = app.get(&format!("/v1/events?after={after}")).await;
        assert_eq!(page.status, 200, "after={after}: {}", page.body);
        assert_eq!(page.body["events"], json!([]), "after={after}");
        assert_eq!(page.body["next_offset"], after);
        for req in [
            app.request(Method::GET, &format!("/v1/events/stream?after={after}")),
            app.request(Method::GET, "/v1/events/stream")
                .header("Last-Event-ID", after.to_string()),
        ] {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200, "stream after {after}");
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
        }
    }
    let over = app.get("/v1/events?after=9223372036854775808").await;
    assert_eq!(
        (over.status.as_u16(), over.body["field"].as_str()),
        (400, Some("after"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storefront_keeps_answering_while_the_ledger_is_down() {
    let app = spawn_with_storefront().await;
    app.adjust("S1", "A", 8).await;
    app.adjust("S2", "A", 3).await;
    app.post("/v1/reservations", reserve_body("O-1", "S1", &[("A", 2)]))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let view = loop {
        let v = app.get("/v1/storefront/availability/A").await.body;
        // The view commits a moment before the runtime records that it caught up, so
        // wait for both.
        if v["stores"][0]["version"] == 2 && v["lag_ms"] == 0 {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the storefront catches up: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(view["available"], 9);
    assert!(view["as_of"].is_string());

    invsync_ledger::Housekeeping::shutdown(app.ledger.as_ref()).await;
    assert_eq!(
        app.post("/v1/reservations", reserve_body("O-2", "S1", &[("A", 1)]))
            .await
            .status,
        503
    );
    let still = app.get("/v1/storefront/availability/A").await;
    assert_eq!(
        still.status, 200,
        "the storefront answers from its own store"
    );
    assert_eq!(still.body["available"], 9);
    let unknown = app.get("/v1/storefront/availability/NEVER-SEEN").await.body;
    assert_eq!(
        (
            unknown["available"].as_i64(),
            unknown["stores"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
}

/// A path built by the `url` crate's own segment encoder (not ours): `/` inside an id
/// becomes `%2F`, so the id stays one segment.
fn path_of(segments: &[&str], query: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://x/").unwrap();
    url.path_segments_mut().unwrap().extend(segments);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url[url::Position::BeforePath..].to_owned()
}

/// Real catalogue and order ids (api.md: any UTF-8 of 1..=255 bytes, no control
/// characters, no edge whitespace) pass unchanged through paths, queries, bodies,
/// cursors, the ledger and the events; one byte more is refused naming the field.
async fn real_world_identifiers_round_trip_exactly(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    let long = "L".repeat(254) + "é"; // 256 bytes: one too many
    let longest = "x".repeat(255);
    let skus = [
        "TSHIRT RED/XL",
        "CAFÉ-1",
        "a%2Fb",
        "50% off/2",
        longest.as_str(),
        "商品 42",
    ];
    let stores = ["Store #1/Paris", "S1"];
    for store in stores {
        for sku in skus {
            app.adjust(store, sku, 5).await;
        }
    }
    for store in stores {
        for sku in skus {
            let one = app.get(&path_of(&["v1", "stock", store, sku], &[])).await;
            assert_eq!(one.status, 200, "{store}/{sku}: {}", one.body);
            assert_eq!(
                (one.body["store_id"].as_str(), one.body["sku"].as_str()),
                (Some(store), Some(sku))
            );
        }
        // Paged by store two at a time, so every cursor crosses an odd id.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("store_id", store), ("limit", "2")];
            if let Some(a) = &after {
                query.push(("after", a));
            }
            let page = app.get(&path_of(&["v1", "stock"], &query)).await;
            assert_eq!(page.status, 200, "{}", page.body);
            seen.extend(
                page.body["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["sku"].as_str().unwrap().to_owned()),
            );
            match page.body["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
        let mut expected: Vec<String> = skus.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(seen, expected);
    }
    let by_sku = app
        .get(&path_of(&["v1", "stock"], &[("sku", "TSHIRT RED/XL")]))
        .await;
    assert_eq!(
        by_sku.body["items"].as_array().map(Vec::len),
        Some(2),
        "{}",
        by_sku.body
    );

    app.ledger
        .flush(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let mut pairs = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", "3")];
        if let Some(a) = &after {
            query.push(("after", a));
        }
        let page = app
            .get(&path_of(&["v1", "stock", "snapshot"], &query))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        for i in page.body["items"].as_array().unwrap() {
            pairs.push((
                i["store_id"].as_str().unwrap().to_owned(),
                i["sku"].as_str().unwrap().to_owned(),
            ));
        }
        match page.body["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pairs.len(), stores.len() * skus.len(), "{pairs:?}");

    let order = "gid://shopify/Order/1001";
    let placed = app
        .post(
            "/v1/reservations",
            reserve_body(
                order,
                "Store #1/Paris",
                &[("TSHIRT RED/XL", 2), ("CAFÉ-1", 1)],
            ),
        )
        .await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    assert_eq!(placed.body["order_id"], order);
    let listed = app
        .get(&path_of(&["v1", "reservations"], &[("order_id", order)]))
        .await;
    assert_eq!(
        listed.body["items"][0]["reservation_id"],
        placed.body["reservation_id"]
    );
    let reserved = app
        .get(&path_of(
            &["v1", "stock", "Store #1/Paris", "TSHIRT RED/XL"],
            &[],
        ))
        .await;
    assert_eq!(reserved.body["reserved"], 2);

    let events = app.all_events().await;
    let sent: Vec<_> = events
        .iter()
        .filter(|e| e["data"]["order_id"] == order)
        .map(|e| {
            (
                e["data"]["store_id"].as_str().unwrap(),
                e["data"]["product_sku"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("Store #1/Paris", "CAFÉ-1"),
            ("Store #1/Paris", "TSHIRT RED/XL")
        ]
    );
    assert!(events
        .iter()
        .any(|e| e["data"]["product_sku"] == longest.as_str()));

    // One byte over, a control character, edge whitespace: 400 naming the field.
    for (sku, rule) in [
        (long.as_str(), "255 bytes"),
        ("a\u{7}b", "control"),
        (" A", "whitespace"),
    ] {
        let refused = app
            .post(
                "/v1/adjustments",
                json!({"store_id": "S1", "sku": sku, "delta": 1, "reason": "stock_in"}),
            )
            .await;
        assert_eq!(
            (refused.status.as_u16(), refused.body["field"].as_str()),
            (400, Some("sku")),
            "{}",
            refused.body
        );
        assert!(
            refused.body["detail"].as_str().unwrap().contains(rule),
            "{}",
            refused.body
        );
        let in_path = app.get(&path_of(&["v1", "stock", "S1", sku], &[])).await;
        assert_eq!(
            (in_path.status.as_u16(), in_path.body["field"].as_str()),
            (400, Some("sku"))
        );
    }
}

/// Arbitrary valid ids, drawn by proptest, each through a path, a body, the ledger and
/// back: what goes in comes out byte for byte.
async fn arbitrary_valid_identifiers_round_trip(backend: Backend) {
    use proptest::strategy::{Strategy, ValueTree};
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let ids = "[^\\p{Cc}\\s][^\\p{Cc}]{0,40}[^\\p{Cc}\\s]|[^\\p{Cc}\\s]";
    let strategy = (ids, ids);
    for _ in 0..64 {
        let (store, sku) = strategy.new_tree(&mut runner).unwrap().current();
        if store.len() > 255 || sku.len() > 255 {
            continue;
        }
        if [&store, &sku].iter().any(|id| *id == "." || *id == "..") {
            let refused = app
                .post(
                    "/v1/adjustments",
                    json!({"store_id": store, "sku": sku, "delta": 1, "reason": "stock_in"}),
                )
                .await;
            assert_eq!(
                refused.status, 400,
                "dot segments cannot be addressed by a URL"
            );
            continue;
        }
        app.adjust(&store, &sku, 3).await;
        let got = app.get(&path_of(&["v1", "stock", &store, &sku], &[])).await;
        assert_eq!(got.status, 200, "{store:?}/{sku:?}: {}", got.body);
        assert_eq!(
            (got.body["store_id"].as_str(), got.body["sku"].as_str()),
            (Some(store.as_str()), Some(sku.as_str()))
        );
        assert_eq!(got.body["on_hand"], 3, "{store:?}/{sku:?} is its own row");
    }
}

/// Without an Idempotency-Key, a second different reservation of the same (order,
/// store) is refused naming that pair, not a key the caller never sent.
async fn the_implicit_key_conflict_names_order_and_store(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    app.adjust("S1", "A", 5).await;
    let first = app
        .post("/v1/reservations", reserve_body("O-7", "S1", &[("A", 1)]))
        .await;
    assert_eq!(first.status, 201);
    let second = app
        .post("/v1/reservations", reserve_body("O-7", "S1", &[("A", 2)]))
        .await;
    assert_eq!(second.status, 409);
    let detail = second.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("'O-7'") && detail.contains("'S1'"),
        "{detail}"
    );
    assert!(!detail.contains("Idempotency-Key '"), "{detail}");
    let keyed = post_keyed(
        &app,
        "/v1/reservations",
        "K 1/é",
        reserve_body("O-8", "S1", &[("A", 1)]),
    )
    .await;
    assert_eq!(keyed.status, 201, "{}", keyed.body);
    let reused = post_keyed(
        &app,
        "/v1/reservations",
        "K 1/é",
        reserve_body("O-9", "S1", &[("A", 1)]),
    )
    .await;
    assert_eq!(reused.status, 409);
    assert!(
        reused.body["detail"].as_str().unwrap().contains("'K 1/é'"),
        "{}",
        reused.body
    );
}

/// POSTs `body` with an `Idempotency-Key`.
async fn post_keyed(app: &App, path: &str, key: &str, body: Value) -> common::Answer {
    app.send(
        app.request(Method::POST, path)
            .header("Idempotency-Key", key)
            .json(&body),
    )
    .await
}

/// `Idempotency-Key` on every write: a retry (same key, same body) answers as the
/// first did and changes nothing; another body under the key is refused naming it.
async fn every_write_applies_once_per_idempotency_key(backend: Backend) {
    let Some(app) = spawn_on(backend).await else {
        return;
    };
    // An adjustment without external_ref, retried: applied once.
    let body = json!({"store_id": "S1", "sku": "A", "delta": 10, "reason": "stock_in"});
    let first = post_keyed(&app, "/v1/adjustments", "adj-1", body.clone()).await;
    let again = post_keyed(&app, "/v1/adjustments", "adj-1", body.clone()).await;
    assert_eq!(
        (first.status.as_u16(), again.status.as_u16()),
        (200, 200),
        "{}",
        again.body
    );
    assert_eq!(first.body, again.body, "the retry gets the first answer");
    assert_eq!(app.get("/v1/stock/S1/A").await.body["on_hand"], 10);
    let other = post_keyed(
        &app,
        "/v1/adjustments",
        "adj-1",
        json!({"store_id": "S1", "sku": "A", "delta": 5, "reason": "stock_in"}),
    )
    .await;
    assert_eq!(other.status, 409);
    assert!(
        other.body["detail"].as_str().unwrap().contains("'adj-1'"),
        "{}",
        other.body
    );
    // The same key on another operation is another key.
    let placed = post_keyed(
        &app,
        "/v1/reservations",
        "adj-1",
        reserve_body("O-1", "S1", &[("A", 6)]),
    )
    .await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    let id = placed.body["reservation_id"].as_str().unwrap().to_owned();

    // A partial release, then a partial fulfilment, each retried: applied once.
    for (action, counter, n, key) in [
        ("release", "released", 2, "rel-1"),
        ("fulfil", "fulfilled", 1, "ful-1"),
    ] {
        let path = format!("/v1/reservations/{id}/{action}");
        let body = json!({"lines": [{"sku": "A", "quantity": n}]});
        for _ in 0..3 {
            let r = post_keyed(&app, &path, key, body.clone()).await;
            assert_eq!(r.status, 200, "{action}: {}", r.body);
            assert_eq!(r.body["lines"][0][counter], n, "{}", r.body);
        }
        let changed = post_keyed(
            &app,
            &path,
            key,
            json!({"lines": [{"sku": "A", "quantity": n + 1}]}),
        )
        .await;
        assert_eq!(changed.status, 409, "{action}: {}", changed.body);
    }
    let row = app.get("/v1/stock/S1/A").await.body;
    assert_eq!(
        (row["on_hand"].as_i64(), row["reserved"].as_i64()),
        (Some(9), Some(3)),
        "{row}"
    );

    // A batch, retried: each item once.
    let items = json!({"items": [
        {"store_id": "S1", "sku": "B", "delta": 4, "reason": "stock_in"},
        {"store_id": "S1", "sku": "C", "delta": 7, "reason": "stock_in"}]});
    let b1 = post_keyed(&app, "/v1/adjustments/batch", "batch-1", items.clone()).await;
    let b2 = post_keyed(&app, "/v1/adjustments/batch", "batch-1", items.clone()).await;
    assert_eq!(b1.body, b2.body);
    assert_eq!(app.get("/v1/stock/S1/B").await.body["on_hand"], 4);
    assert_eq!(app.get("/v1/stock/S1/C").await.body["on_hand"], 7);
    // Without a key, the same adjustment is a new one (as before): +10 again.
    assert_eq!(app.post("/v1/adjustments", body).await.body["on_hand"], 19);
    // Keys follow the identifier rule.
    let bad = post_keyed(&app, "/v1/adjustments/batch", "bad\tkey", items).await;
    assert_eq!(
        (bad.status.as_u16(), bad.body["field"].as_str()),
        (400, Some("Idempotency-Key"))
    );
}

/// Runs each named test body against every ledger back end.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}

on_every_backend!(
    racing_clients_on_a_hot_sku_reserve_exactly_the_stock,
    the_same_idempotency_key_sent_concurrently_reserves_once,
    multi_line_orders_over_the_same_skus_in_opposite_order_never_deadlock,
    a_reservation_lives_through_partial_release_and_fulfilment,
    adjustments_counts_shortages_and_batches,
    a_till_sale_is_an_adjustment_that_carries_its_channel,
    channels_are_configured_and_reserved_through_over_http,
    stock_is_listed_by_sku_by_store_with_cursors_and_as_a_snapshot,
    every_error_code_is_produced_as_problem_json,
    malformed_requests_get_a_4xx_naming_the_problem_and_change_nothing,
    real_world_identifiers_round_trip_exactly,
    arbitrary_valid_identifiers_round_trip,
    the_implicit_key_conflict_names_order_and_store,
    every_write_applies_once_per_idempotency_key,
);

/// The storefront's channel availability, per SKU and for a listing, equals the
/// formula computed from the ledger (sum over the channel's locations of
/// max(0, available − safety stock)), live and after a rebuild from a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storefront_answers_channel_availability_net_of_safety_stock() {
    let app = spawn_with_storefront().await;
    let online = json!({"allocation": "priority", "split": "by_unit",
        "locations": [{"store_id": "WH1", "priority": 1},
                      {"store_id": "S1", "priority": 2, "safety_stock": 2},
                      {"store_id": "S9", "priority": 3}]});
    assert_eq!(
        put(&app, "/v1/channels/online", online).await.status,
        StatusCode::OK
    );
    app.adjust("WH1", "A", 4).await;
    app.adjust("S1", "A", 3).await;
    app.adjust("S1", "B", 7).await;
    app.adjust("S2", "B", 5).await; // not a location of the channel
    let set = json!({"items": [{"store_id": "S1", "sku": "B", "safety_stock": 4}]});
    assert_eq!(
        put(&app, "/v1/channels/online/safety-stock", set)
            .await
            .body["applied"],
        1
    );
    let placed = app
        .post(
            "/v1/reservations",
            json!({"order_id": "O-1", "channel": "online", "lines": [{"sku": "A", "quantity": 3}]}),
        )
        .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);

    // The formula, from the ledger's own levels and the configuration.
    async fn expected(app: &App, sku: &str, buffers: &[(&str, i64)]) -> (i64, Vec<(String, i64)>) {
        let mut total = 0;
        let mut stores = Vec::new();
        for (store, buffer) in buffers {
            let row = app.get(&format!("/v1/stock/{store}/{sku}")).await;
            let available = row.body["available"].as_i64().unwrap_or(0);
            let net = (available - buffer).max(0);
            total += net;
            stores.push(((*store).to_owned(), net));
        }
        (total, stores)
    }
    fn shown(v: &Value) -> (i64, Vec<(String, i64)>) {
        let stores = v["stores"].as_array().into_iter().flatten();
        let stores = stores.map(|s| {
            let id = s["store_id"].as_str().unwrap_or("").to_owned();
            (id, s["available"].as_i64().unwrap_or(-1))
        });
        (v["available"].as_i64().unwrap_or(-1), stores.collect())
    }
    let buffers_a = [("WH1", 0), ("S1", 2), ("S9", 0)];
    let buffers_b = [("WH1", 0), ("S1", 4), ("S9", 0)];
    let want_a = expected(&app, "A", &buffers_a).await;
    let want_b = expected(&app, "B", &buffers_b).await;
    assert_eq!(
        want_a,
        (
            2,
            vec![("WH1".into(), 1), ("S1".into(), 1), ("S9".into(), 0)]
        ),
        "WH1 gave 3 of 4; S1 keeps 2 of 3 for walk-ins"
    );
    assert_eq!(want_b.0, 3);
    async fn wait_for(app: &App, path: &str, want: &(i64, Vec<(String, i64)>)) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let v = app.get(path).await.body;
            if v.get("stores").is_some() && &shown(&v) == want {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} converges to {want:?}: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let a = wait_for(
        &app,
        "/v1/storefront/availability/A?channel=online",
        &want_a,
    )
    .await;
    assert_eq!(a["channel"], "online");
    wait_for(
        &app,
        "/v1/storefront/availability/B?channel=online",
        &want_b,
    )
    .await;
    // Without a channel: every store, no buffer (S2 included).
    let all_b = app.get("/v1/storefront/availability/B").await.body;
    assert_eq!(all_b["available"], 12, "{all_b}");

    let listing = app
        .get("/v1/storefront/availability?skus=A,B,Z&channel=online")
        .await;
    assert_eq!(listing.status, StatusCode::OK, "{}", listing.body);
    let items = listing.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(shown(&items[0]), want_a);
    assert_eq!(shown(&items[1]), want_b);
    assert_eq!(items[2]["available"], 0, "a SKU never stocked");
    assert_eq!(
        app.get("/v1/storefront/availability/A?channel=nope")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let many: Vec<String> = (0..101).map(|i| format!("S{i}")).collect();
    let too_many = app
        .get(&format!(
            "/v1/storefront/availability?skus={}",
            many.join(",")
        ))
        .await;
    assert_eq!(too_many.body["field"], "skus", "{}", too_many.body);

    // A rebuild from a snapshot keeps the channels and overrides.
    let replay = app
        .post("/v1/consumers/storefront/replay", json!({"from_offset": 1}))
        .await;
    assert_eq!(replay.status, 202, "{}", replay.body);
    let after = app
        .get("/v1/storefront/availability?skus=A,B&channel=online")
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut after = after;
    while after.status != StatusCode::OK || shown(&after.body["items"][1]) != want_b {
        assert!(std::time::Instant::now() < deadline, "{}", after.body);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        after = app
            .get("/v1/storefront/availability?skus=A,B&channel=online")
            .await;
    }
    assert_eq!(shown(&after.body["items"][0]), want_a);
}
