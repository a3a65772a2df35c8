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
    let text =
        std::fs::read_to_string(schema_dir().join("inventory-sync-event.v1.schema.json")).unwrap();
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
        broken(&|v| v["data"]["product_sku"] = "a b".into()),
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
