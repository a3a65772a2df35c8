//! The operator console at `/`, driven in a real browser: headless Chromium under
//! chromedriver (WebDriver, through `fantoccini`) against a live server. The tests
//! sign in and out, click, accept the confirmation dialogs and read the page as an
//! operator would; they save screenshots (`target/tmp/console-*.png`, and into the
//! directory `INVSYNC_SCREENSHOTS_DIR` names: `docs/` holds the current ones).
//! `.ci/run` installs `chromium` and `chromium-driver`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::receiver::{self, Receiver};
use common::{client, eventually, Server};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(60);

/// A private chromedriver, stopped by its pid on drop, and a WebDriver session with
/// headless Chromium.
struct Browser {
    driver: Child,
    client: Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn browser() -> Option<Browser> {
    invsync_testkit::tool("Chromium", "chromium", &["--version"])?;
    invsync_testkit::tool("chromedriver", "chromedriver", &["--version"])?;
    let port = invsync_testkit::free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = client();
    eventually("chromedriver answers", WAIT, || async {
        http.get(format!("{url}/status"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--window-size=1440,1600"]}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .unwrap();
    Some(Browser { driver, client })
}

/// Saves what the browser shows as `name.png` (see the module's doc).
async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    if let Ok(dir) = std::env::var("INVSYNC_SCREENSHOTS_DIR") {
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), &png).unwrap();
    }
}

/// The text of an element (empty when it is absent).
async fn text(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Polls the page until `probe` holds, failing after `WAIT` with what it last saw.
async fn until(client: &Client, what: &str, css: &str, probe: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = text(client, css).await;
        if probe(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; {css} shows: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each row of a table body as its cells' text.
async fn rows(client: &Client, tbody: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for row in client
        .find_all(Locator::Css(&format!("#{tbody} > tr")))
        .await
        .unwrap()
    {
        let mut cells = Vec::new();
        for cell in row.find_all(Locator::Css("td")).await.unwrap() {
            cells.push(cell.text().await.unwrap().trim().to_owned());
        }
        out.push(cells);
    }
    out
}

async fn attribute(client: &Client, css: &str, name: &str) -> Option<String> {
    client
        .find(Locator::Css(css))
        .await
        .ok()?
        .attr(name)
        .await
        .ok()
        .flatten()
}

async fn sign_in(client: &Client, token: &str) {
    if !text(client, "#who").await.contains("not signed in") {
        client
            .find(Locator::Id("signout"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(client, "signed out", "#who", |t| {
            t.contains("not signed in")
        })
        .await;
    }
    let input = client.find(Locator::Id("token")).await.unwrap();
    input.send_keys(token).await.unwrap();
    client
        .find(Locator::Id("signin-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

fn tokens_file(dir: &std::path::Path, tokens: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let mut file = String::new();
    for (name, scope, token) in tokens {
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        file.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nscopes = [\"{scope}\"]\nsha256 = \"{digest}\"\n"
        ));
    }
    let path = dir.join("tokens.toml");
    std::fs::write(&path, file).unwrap();
    path
}

const READ_TOKEN: &str = "console-read-token-0123456789";
const ADMIN_TOKEN: &str = "console-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_looks_up_stock_and_orders_and_redrives_a_dead_letter() {
    let Some(b) = browser().await else {
        return;
    };
    let c = &b.client;
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(
        dir.path(),
        &[
            ("reader", "read", READ_TOKEN),
            ("ops", "admin", ADMIN_TOKEN),
        ],
    );
    let receiver = Receiver::default();
    receiver.behaviour.lock().unwrap().reject_ref = Some("BAD-1".into());
    let hook = receiver.clone().start().await;
    let mut flags = vec!["--tokens".to_owned(), tokens.display().to_string()];
    flags.extend(receiver::webhook_flags(&hook));
    let server = Server::start(&dir.path().join("data"), &receiver::args(&flags));
    let url = server.url.clone();
    let http = client();
    let admin = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        http.request(method, format!("{url}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let sku = "TSHIRT RED/XL";
    for (store, units) in [("WH1", 7), ("Store #1", 4)] {
        let body = json!({"store_id": store, "sku": sku, "delta": units, "reason": "stock_in"});
        let answer = admin(reqwest::Method::POST, "/v1/adjustments", body)
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let online = json!({"allocation": "priority", "split": "by_unit", "locations": [
        {"store_id": "WH1", "priority": 1}, {"store_id": "Store #1", "priority": 2, "safety_stock": 2}]});
    let answer = admin(reqwest::Method::PUT, "/v1/channels/online", online)
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let order =
        json!({"order_id": "O-1001", "channel": "online", "lines": [{"sku": sku, "quantity": 9}]});
    let answer = admin(reqwest::Method::POST, "/v1/reservations", order)
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "{:?}", answer.text().await);
    // The receiver refuses this one for good: a dead letter.
    let refused = json!({"store_id": "WH1", "sku": "MUG", "delta": 1, "reason": "stock_in", "external_ref": "BAD-1"});
    let answer = admin(reqwest::Method::POST, "/v1/adjustments", refused)
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    // Signed out: the overview renders with data; the rest says what it needs.
    c.goto(&format!("{url}/")).await.unwrap();
    until(c, "the SLA banner", "#sla", |t| t.starts_with("SLA met")).await;
    until(c, "one reservation counted", "#card-reserved", |t| {
        t.ends_with('1')
    })
    .await;
    until(c, "the page live", "#status", |t| t.contains("live")).await;
    let locked = c.find(Locator::Id("dead-locked")).await.unwrap();
    assert!(
        locked.is_displayed().await.unwrap(),
        "the dead letters say a token is needed"
    );
    assert!(locked.text().await.unwrap().contains("read"));
    // A housekeeping round (every 5 s) gives the rate chart its first point.
    eventually("the rate chart draws a line", WAIT, || async {
        attribute(c, "#chart-rate path", "d")
            .await
            .filter(|d| d.starts_with('M'))
    })
    .await;

    // Read scope: the dead letter is listed, its redrive is not offered.
    sign_in(c, READ_TOKEN).await;
    until(c, "signed in as the reader", "#who", |t| {
        t.contains("reader")
    })
    .await;
    until(c, "the dead letter", "#dead", |t| {
        t.contains("ADJUSTED WH1/MUG")
    })
    .await;
    let redrive = c.find(Locator::Css("button.redrive")).await.unwrap();
    assert!(!redrive.is_enabled().await.unwrap(), "redrive needs admin");
    assert_eq!(
        redrive.attr("title").await.unwrap().as_deref(),
        Some("needs an admin token")
    );

    // The SKU lookup: levels per store, availability per channel, latest events.
    c.goto(&format!("{url}/#sku=TSHIRT%20RED%2FXL"))
        .await
        .unwrap();
    until(c, "the levels", "#levels", |t| t.contains("WH1")).await;
    let levels = rows(c, "levels").await;
    assert_eq!(
        levels,
        [
            ["Store #1", "4", "2", "2", "2"],
            ["WH1", "7", "7", "0", "2"],
        ],
        "the order took WH1's 7 and 2 of Store #1's 4 (2 are its safety stock)"
    );
    until(c, "the channel row", "#channels", |t| t.contains("online")).await;
    let channels = rows(c, "channels").await;
    assert_eq!(channels[1], ["online", "0", "WH1: 0, Store #1: 0"]);
    let events = until(c, "the SKU's events", "#sku-events", |t| {
        t.contains("RESERVED")
    })
    .await;
    assert!(events.contains("O-1001"), "{events}");
    screenshot(c, "console-stock").await;

    // The order lookup: where each unit is held.
    let input = c.find(Locator::Id("order")).await.unwrap();
    input.send_keys("O-1001").await.unwrap();
    c.find(Locator::Css("#order-lookup button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let held = until(c, "the order's lines", "#order-result", |t| {
        t.contains("WH1: 7")
    })
    .await;
    assert!(held.contains("Store #1: 2"), "{held}");

    // A count below what is held (nowhere to move it): the shortage is listed.
    let count = json!({"store_id": "WH1", "sku": sku, "set_on_hand": 5, "reason": "cycle_count"});
    let answer = admin(reqwest::Method::POST, "/v1/adjustments", count)
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    until(c, "the shortage", "#shortages", |t| t.contains("WH1")).await;
    assert_eq!(
        rows(c, "shortages").await,
        [["WH1", sku, "5", "7", "2"]],
        "store, SKU, on hand, reserved, short by"
    );
    until(c, "the shortages card", "#card-shortages", |t| {
        t.ends_with('1')
    })
    .await;

    // Admin: redrive by clicking, confirmed; the receiver now takes it.
    sign_in(c, ADMIN_TOKEN).await;
    until(c, "signed in as ops", "#who", |t| t.contains("ops")).await;
    receiver.behaviour.lock().unwrap().reject_ref = None;
    eventually("an enabled redrive button", WAIT, || async {
        let button = c.find(Locator::Css("button.redrive")).await.ok()?;
        button.is_enabled().await.ok()?.then_some(())
    })
    .await;
    screenshot(c, "console-dead-letters").await;
    // The table is redrawn only when it changes, so the button found is the one shown.
    let redrive = c.find(Locator::Css("button.redrive")).await.unwrap();
    redrive.click().await.unwrap();
    let question = c.get_alert_text().await.unwrap();
    assert!(question.starts_with("Deliver dead letter"), "{question}");
    c.accept_alert().await.unwrap();
    until(c, "the outcome", "#dead-outcome", |t| {
        t.contains("accepted")
    })
    .await;
    until(c, "the dead letter gone", "#dead", |t| t.contains("none")).await;
    let seen = receiver.seen.lock().unwrap();
    assert!(
        seen.accepted.iter().any(|(_, _, sku, _)| sku == "MUG"),
        "the receiver got the redriven event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_shows_red_while_it_lasts_and_clears_after() {
    let Some(b) = browser().await else {
        return;
    };
    let c = &b.client;
    let receiver = Receiver::default();
    let hook = receiver.clone().start().await;
    let mut flags = vec!["--sla".to_owned(), "2s".to_owned()];
    flags.extend(receiver::webhook_flags(&hook));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &receiver::args(&flags));
    let http = client();
    c.goto(&format!("{}/", server.url)).await.unwrap();
    until(c, "the SLA met", "#sla", |t| t.starts_with("SLA met")).await;

    // The receiver goes down: the webhook's lag passes the 2 s SLA.
    receiver.behaviour.lock().unwrap().unavailable_until =
        Some(Instant::now() + Duration::from_secs(3600));
    common::adjust(&http, &server.url, "S1", "A", 1).await;
    let banner = until(c, "the breach", "#sla", |t| t.starts_with("SLA breached")).await;
    assert!(banner.contains("webhook"), "{banner}");
    assert_eq!(
        attribute(c, "#sla", "class").await.as_deref(),
        Some("banner bad")
    );
    screenshot(c, "console-breach").await;

    // It comes back: the breach clears without a reload.
    receiver.behaviour.lock().unwrap().unavailable_until = None;
    until(c, "the SLA met again", "#sla", |t| t.starts_with("SLA met")).await;
    assert_eq!(
        attribute(c, "#sla", "class").await.as_deref(),
        Some("banner ok")
    );
    assert_eq!(
        attribute(c, "#sla", "data-state").await.as_deref(),
        Some("met")
    );
    screenshot(c, "console-overview").await;

    // Replay by clicking (open access: every scope): asked where from, then confirmed.
    let replay = c
        .find(Locator::Css("button.replay[data-name=\"webhook\"]"))
        .await
        .unwrap();
    replay.click().await.unwrap();
    let question = c.get_alert_text().await.unwrap();
    assert!(question.starts_with("Replay webhook from"), "{question}");
    c.send_alert_text("1").await.unwrap();
    c.accept_alert().await.unwrap();
    let confirm = c.get_alert_text().await.unwrap();
    assert!(confirm.starts_with("Replay webhook from 1?"), "{confirm}");
    c.accept_alert().await.unwrap();
    until(c, "the replay's outcome", "#consumer-outcome", |t| {
        t.contains("Replay of webhook from 1 started")
    })
    .await;
    // The receiver gets the first event again.
    let first_id = common::all_events(&http, &server.url).await[0].1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("the first event delivered again", WAIT, || async {
        let seen = receiver.seen.lock().unwrap();
        (seen.accepted.iter().filter(|a| a.0 == first_id).count() >= 2).then_some(())
    })
    .await;
}
