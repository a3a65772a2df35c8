//! The operations console at `/`, driven by a real browser: headless Chromium loads
//! the page from a live server, runs its script against the live API and leaves the
//! DOM it built, which is then read back. `.ci/run` installs Chromium.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{adjust, client, eventually, put, storefront_caught_up, Server};
use serde_json::json;

/// The DOM headless Chromium has built after loading `url` and letting its script
/// run (virtual time runs ahead whenever the page is idle, so this takes ~1 s).
fn rendered(url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text of each cell of the rows in `<tbody id="{id}">`, tags stripped.
fn table(dom: &str, id: &str) -> Vec<Vec<String>> {
    let start = dom.find(&format!("<tbody id=\"{id}\">")).unwrap();
    let body = &dom[start..start + dom[start..].find("</tbody>").unwrap()];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let inner = &cell[cell.find('>').unwrap() + 1..];
                    let inner = &inner[..inner.find("</td>").unwrap()];
                    let mut text = String::new();
                    let mut in_tag = false;
                    for c in inner.chars() {
                        match c {
                            '<' => in_tag = true,
                            '>' => in_tag = false,
                            c if !in_tag => text.push(c),
                            _ => {}
                        }
                    }
                    text.replace("&amp;", "&").trim().to_owned()
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_skus_availability_through_each_channel() {
    let Some(()) = invsync_testkit::tool("Chromium", "chromium", &["--version"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (http, url) = (client(), server.url.clone());
    let online = json!({"allocation": "priority", "split": "by_unit", "locations": [
        {"store_id": "WH1", "priority": 1}, {"store_id": "Store #1", "priority": 2, "safety_stock": 2}]});
    assert_eq!(
        put(&http, &format!("{url}/v1/channels/online"), online)
            .await
            .0,
        200
    );
    let pos = json!({"allocation": "priority", "split": "none",
        "locations": [{"store_id": "Store #1", "safety_stock": 5}]});
    assert_eq!(
        put(&http, &format!("{url}/v1/channels/pos-1"), pos).await.0,
        200
    );
    adjust(&http, &url, "WH1", "TSHIRT RED/XL", 3).await;
    adjust(&http, &url, "Store #1", "TSHIRT RED/XL", 5).await;
    eventually(
        "the storefront catches up",
        Duration::from_secs(30),
        || async { storefront_caught_up(&http, &url).await.then_some(()) },
    )
    .await;

    // The lookup is linked to by the page's hash, as the form sets it.
    let dom = rendered(&format!("{url}/#sku=TSHIRT%20RED%2FXL"));
    assert_eq!(
        table(&dom, "channels"),
        [
            ["(all stores, no safety stock)", "8", "Store #1: 5, WH1: 3"],
            ["online", "6", "WH1: 3, Store #1: 3"],
            ["pos-1", "0", "Store #1: 0"],
        ],
        "{dom}"
    );
    // Nothing available through a channel is marked.
    assert!(dom.contains(r#"<td class="n bad">0</td>"#), "{dom}");

    // A hash that does not decode is looked up as typed, and the rest of the page
    // still runs: the consumers table fills.
    let dom = rendered(&format!("{url}/#sku=%E0"));
    let consumers = table(&dom, "consumers");
    assert!(consumers.iter().any(|row| row[0] == "storefront"), "{dom}");
    assert!(dom.contains("%E0: as of"), "looked up as typed: {dom}");
}
