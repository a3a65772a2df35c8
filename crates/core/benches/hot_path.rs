//! The pure code on every reservation's path: validating a request into a command,
//! and encoding and decoding the event it produces.
//!
//!     cargo bench -p invsync-core

use std::hint::black_box;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use invsync_core::{
    Cause, CloudEvent, EventType, InventoryEventV1, LineQuantity, OrderId, Reason, Reserve, Sku,
    StockLevel, StoreId,
};
use uuid::Uuid;

const GOLDEN: &str = include_str!("../schema/golden/reserved.json");

fn reserve_command(c: &mut Criterion) {
    c.bench_function("validate a 3-line reservation", |b| {
        b.iter(|| {
            let lines = ["SKU-1", "SKU-2", "SKU-3"]
                .iter()
                .map(|s| Ok((Sku::parse(*s)?, LineQuantity::new(2)?)))
                .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()
                .unwrap_or_default();
            Reserve::new(
                OrderId::parse(black_box("O-1001")).ok()?,
                StoreId::parse(black_box("S1")).ok()?,
                lines,
                None,
                None,
            )
            .ok()
        })
    });
    let cmd = Reserve::new(
        OrderId::parse("O-1001").unwrap_or_else(|e| panic!("{e}")),
        StoreId::parse("S1").unwrap_or_else(|e| panic!("{e}")),
        vec![(
            Sku::parse("SKU-1").unwrap_or_else(|e| panic!("{e}")),
            LineQuantity::new(2).unwrap_or_else(|e| panic!("{e}")),
        )],
        None,
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    c.bench_function("idempotency fingerprint", |b| {
        b.iter(|| black_box(&cmd).fingerprint())
    });
}

fn event_codec(c: &mut Criterion) {
    let event = InventoryEventV1::new(
        Uuid::now_v7(),
        Utc::now(),
        StoreId::parse("S1").unwrap_or_else(|e| panic!("{e}")),
        Sku::parse("SKU-1").unwrap_or_else(|e| panic!("{e}")),
        Cause {
            event_type: EventType::Reserved,
            reason: Reason::OrderPlaced,
            quantity: 2,
            order_id: Some(OrderId::parse("O-1001").unwrap_or_else(|e| panic!("{e}"))),
            reservation_id: Some(Uuid::now_v7()),
            external_ref: None,
            channel: None,
        },
        StockLevel::new(10, 3, 12).unwrap_or_else(|e| panic!("{e}")),
    );
    c.bench_function("encode an event envelope", |b| {
        b.iter(|| black_box(&event).to_envelope("invsync://local").to_json())
    });
    c.bench_function("parse and check an event envelope", |b| {
        b.iter(|| CloudEvent::parse(black_box(GOLDEN.as_bytes())).is_ok())
    });
}

criterion_group!(benches, reserve_command, event_codec);
criterion_main!(benches);
