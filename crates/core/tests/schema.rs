//! The golden v1 events still parse and validate, and what the code builds validates
//! against the schema (the ledger's tests validate every event it actually emits).

// Tests fail loudly on anything unexpected.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use invsync_core::CloudEvent;
use serde_json::Value;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema")
}

fn validator() -> jsonschema::Validator {
    validator_of("inventory-sync-event.v1.schema.json")
}

fn validator_of(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(schema_dir().join(file)).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

#[test]
fn golden_v1_events_still_parse_and_validate() {
    let validator = validator();
    let mut n = 0;
    for entry in std::fs::read_dir(schema_dir().join("golden")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let event = CloudEvent::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        // Re-encoding keeps every member the code knows.
        let again: Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(again["data"]["version"], value["data"]["version"]);
        n += 1;
    }
    assert!(n >= 4, "the golden examples are there");
}

#[test]
fn the_schema_refuses_what_v1_forbids() {
    let validator = validator();
    let golden: Value =
        serde_json::from_slice(&std::fs::read(schema_dir().join("golden/reserved.json")).unwrap())
            .unwrap();
    let broken = |f: &dyn Fn(&mut Value)| {
        let mut v = golden.clone();
        f(&mut v);
        v
    };
    let cases = [
        broken(&|v| v["data"]["on_hand"] = (-1).into()),
        broken(&|v| v["data"]["event_type"] = "DELETED".into()),
        broken(&|v| v["data"]["quantity"] = 0.into()),
        // (An inner space is fine — `TSHIRT RED/XL` — an edge one is not.)
        broken(&|v| v["data"]["product_sku"] = "a b ".into()),
        broken(&|v| {
            v["data"]
                .as_object_mut()
                .unwrap()
                .remove("version")
                .map(drop)
                .unwrap_or(())
        }),
        broken(&|v| v["time"] = "yesterday".into()),
        broken(&|v| v["data"]["available"] = (-1).into()),
    ];
    for (i, case) in cases.iter().enumerate() {
        assert!(!validator.is_valid(case), "case {i} must be refused");
    }
}

/// The schema takes the identifiers the API takes (api.md's rule), not a narrower
/// alphabet: an event of a real catalogue validates, and what the rule forbids does
/// not.
#[test]
fn the_schema_takes_every_identifier_the_api_takes() {
    let validator = validator();
    let golden: Value =
        serde_json::from_slice(&std::fs::read(schema_dir().join("golden/reserved.json")).unwrap())
            .unwrap();
    let with = |store: &str, sku: &str, order: &str| {
        let mut v = golden.clone();
        v["subject"] = sku.into();
        v["partitionkey"] = sku.into();
        v["data"]["product_sku"] = sku.into();
        v["data"]["store_id"] = store.into();
        v["data"]["order_id"] = order.into();
        v
    };
    for (store, sku, order) in [
        ("Store #1", "TSHIRT RED/XL", "gid://shopify/Order/1001"),
        ("Dépôt Lyon", "CAFÉ-1", "#1001"),
        ("S1", &"x".repeat(255), "O-1"),
    ] {
        let event = with(store, sku, order);
        let errors: Vec<String> = validator
            .iter_errors(&event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{store:?} {sku:?} {order:?}: {errors:?}");
        // And the code reads such an event back.
        CloudEvent::parse(event.to_string().as_bytes()).unwrap();
    }
    for (store, sku, order) in [
        ("S1", "tab\there", "O-1"),
        (" S1", "A", "O-1"),
        ("S1", "A ", "O-1"),
        ("S1", "..", "O-1"),
        ("S1", "", "O-1"),
        ("S1", &"x".repeat(256), "O-1"),
        ("S1", "A", "new\nline"),
    ] {
        assert!(
            !validator.is_valid(&with(store, sku, order)),
            "{store:?} {sku:?} {order:?} must be refused"
        );
    }
}

/// The channel configuration events: the golden examples validate against the schema
/// written from channels.md and parse as their types; what the code builds validates
/// too (the ledger's tests validate every one it emits); and what the spec forbids is
/// refused by both.
#[test]
fn channel_events_follow_their_schema() {
    use invsync_core::{ChannelUpdatedV1, SafetyStockSetV1};
    let validator = validator_of("channel-events.v1.schema.json");
    let read = |name: &str| -> Value {
        serde_json::from_slice(
            &std::fs::read(schema_dir().join("golden-channels").join(name)).unwrap(),
        )
        .unwrap()
    };
    let updated = read("channel-updated.json");
    let set = read("safety-stock-set.json");
    for golden in [&updated, &set] {
        let errors: Vec<String> = validator
            .iter_errors(golden)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
    let parsed = ChannelUpdatedV1::parse(updated.to_string().as_bytes()).unwrap();
    assert_eq!(
        parsed.channel.config.locations()[1].store_id.as_str(),
        "Store #1"
    );
    // Built by the code, back into the schema.
    let rebuilt: Value = serde_json::from_str(&parsed.record("invsync://local").envelope).unwrap();
    assert!(validator.is_valid(&rebuilt), "{rebuilt}");
    assert_eq!(rebuilt, updated);
    let parsed = SafetyStockSetV1::parse(set.to_string().as_bytes()).unwrap();
    let rebuilt: Value = serde_json::from_str(&parsed.record("invsync://local").envelope).unwrap();
    assert_eq!(rebuilt, set);

    let broken = |golden: &Value, f: &dyn Fn(&mut Value)| {
        let mut v = golden.clone();
        f(&mut v);
        v
    };
    let refused = [
        broken(&updated, &|v| {
            v["data"]["locations"] = serde_json::json!([])
        }),
        broken(&updated, &|v| v["data"]["split"] = "halves".into()),
        broken(&updated, &|v| {
            v["data"]["locations"][0]["safety_stock"] = (-1).into()
        }),
        broken(&updated, &|v| v["partitionkey"] = "online".into()),
        broken(&set, &|v| v["data"]["safety_stock"] = (-5).into()),
        broken(&set, &|v| v["partitionkey"] = "OTHER".into()),
    ];
    for (i, case) in refused.iter().enumerate() {
        let parses = if i < 4 {
            ChannelUpdatedV1::parse(case.to_string().as_bytes()).is_ok()
        } else {
            SafetyStockSetV1::parse(case.to_string().as_bytes()).is_ok()
        };
        assert!(!parses, "case {i} must not parse");
        // The schema cannot tie partitionkey to product_sku (case 5); the rest it refuses.
        if i != 5 {
            assert!(
                !validator.is_valid(case),
                "case {i} must be refused by the schema"
            );
        }
    }
}
