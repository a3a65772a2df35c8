//! The server's contract, checked by tools nobody here wrote: the OpenAPI document by
//! `openapi-spec-validator` (PyPI), `/metrics` by `promtool check metrics`
//! (Prometheus). `.ci/run` installs both, and also runs schemathesis against a live
//! server (`scripts/contract-fuzz.sh`).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Server;

#[tokio::test]
async fn the_openapi_document_is_valid_openapi_and_served_without_a_token() {
    let Some(()) = invsync_testkit::tool(
        "openapi-spec-validator",
        "python3",
        &["-c", "import openapi_spec_validator"],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[token]]\nname = \"x\"\nscopes = [\"read\"]\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--tokens", tokens.to_str().unwrap()],
    );
    let http = common::client();
    let resp = http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "no token is needed for the contract");
    let text = resp.text().await.unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openapi-spec-validator: {said}");

    // Every route the server has is in the document, and operationIds are unique.
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        }
    }
    for path in [
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/stock",
        "/v1/stock/snapshot",
        "/v1/stock/{store_id}/{sku}",
        "/v1/adjustments",
        "/v1/adjustments/batch",
        "/v1/reservations",
        "/v1/reservations/{reservation_id}",
        "/v1/reservations/{reservation_id}/release",
        "/v1/reservations/{reservation_id}/fulfil",
        "/v1/events",
        "/v1/events/stream",
        "/v1/storefront/availability/{sku}",
        "/v1/storefront/rows",
        "/v1/consumers",
        "/v1/consumers/{name}/replay",
        "/v1/dead-letters",
        "/v1/dead-letters/{id}/redrive",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    // Error answers are declared as problem+json.
    let conflict = &doc["paths"]["/v1/reservations"]["post"]["responses"]["409"]["content"];
    assert!(
        conflict.get("application/problem+json").is_some(),
        "{conflict}"
    );
    let unsupported = &doc["paths"]["/v1/adjustments"]["post"]["responses"]["415"];
    assert!(unsupported.is_object(), "415 is declared");
}

#[tokio::test]
async fn metrics_pass_promtool_with_help_on_every_metric_and_build_info() {
    let Some(()) = invsync_testkit::tool("promtool (prometheus)", "promtool", &["--version"])
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = common::client();
    // Traffic, so that counters, gauges and histograms all have samples.
    common::adjust(&http, &server.url, "S1", "A", 5).await;
    common::post(
        &http,
        &format!("{}/v1/reservations", server.url),
        serde_json::json!({"order_id": "O-1", "store_id": "S1", "lines": [{"sku": "A", "quantity": 9}]}),
    )
    .await;
    common::eventually(
        "the storefront applies the events",
        std::time::Duration::from_secs(30),
        || async {
            common::storefront_caught_up(&http, &server.url)
                .await
                .then_some(())
        },
    )
    .await;
    let text = common::metrics_text(&http, &server.url).await;

    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n---\n{text}"
    );

    // Every metric the alert rules use is exported (the rules' own tests feed them
    // series; this is where those names are held to the server).
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/prometheus/invsync-rules.yml"
    ))
    .unwrap();
    let used: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("invsync_"))
        .collect();
    for name in &used {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "the rules use {name}, which /metrics lacks"
        );
    }
    assert!(
        text.contains("invsync_consumer_sla_breached{consumer=\"storefront\"} 0"),
        "{text}"
    );
    assert!(text.contains("invsync_ledger_up 1") && text.contains("invsync_relay_leader 1"));

    // Every family has HELP (promtool says so too; this names the family).
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split_whitespace().next().unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    for name in [
        "invsync_reservations_total",
        "invsync_request_duration_seconds",
        "invsync_consumer_lag_events",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} is exported"
        );
    }
    let info = text
        .lines()
        .find(|l| l.starts_with("invsync_build_info{"))
        .expect("build info");
    assert!(
        info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    assert!(info.contains("commit=\"") && info.ends_with(" 1"), "{info}");
}
