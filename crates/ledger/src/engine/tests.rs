//! The engine's rules over an in-memory [`Memory`]: fast, with no database, and
//! able to compare every row before and after a refused command. The conformance
//! suite (`tests/ledger.rs`) proves the same rules again on both back ends.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, TimeZone, Utc};
use invsync_core::channel::{Allocation, ChannelConfig, ChannelLocation, Split};
use invsync_core::{
    Adjust, AdjustReason, Change, ChannelId, Delta, DomainError, LineQuantity, Lines, OrderId,
    Reason, ReleaseKind, ReleaseReason, ReservationStatus, Reserve, Sku, StockLevel, StoreId,
};
use uuid::Uuid;

use super::memory::Memory;
use super::Engine;
use crate::error::LedgerError;

fn store(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

fn sku(s: &str) -> Sku {
    Sku::parse(s).unwrap()
}

fn q(n: i64) -> LineQuantity {
    LineQuantity::new(n).unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0).unwrap()
}

fn engine(memory: &mut Memory) -> Engine<'_, Memory> {
    Engine {
        tx: memory,
        now: now(),
    }
}

fn level(m: &Memory, st: &str, sk: &str) -> (i64, i64, i64) {
    let l = m.stock[&(store(st), sku(sk))];
    (l.on_hand(), l.reserved(), l.version())
}

/// A ledger with `on_hand` of each (store, sku).
fn stocked(rows: &[(&str, &str, i64)]) -> Memory {
    let mut m = Memory::default();
    for (st, sk, n) in rows {
        let delta = Change::Delta(Delta::new(*n).unwrap());
        engine(&mut m).adjust(&adjust(st, sk, delta)).unwrap();
    }
    m
}

fn adjust(st: &str, sk: &str, change: Change) -> Adjust {
    Adjust {
        store_id: store(st),
        sku: sku(sk),
        change,
        reason: AdjustReason::StockIn,
        external_ref: None,
        if_version: None,
        channel: None,
        idempotency_key: None,
    }
}

fn at_store(order: &str, st: &str, lines: &[(&str, i64)]) -> Reserve {
    let lines = lines.iter().map(|(s, n)| (sku(s), q(*n))).collect();
    Reserve::new(OrderId::parse(order).unwrap(), store(st), lines, None, None).unwrap()
}

fn lines(l: &[(&str, i64)]) -> Lines {
    Lines::new(l.iter().map(|(s, n)| (sku(s), q(*n))).collect(), "lines").unwrap()
}

#[test]
fn a_reservation_holds_every_line_and_writes_one_event_per_row() {
    let mut m = stocked(&[("S1", "A", 5), ("S1", "B", 2)]);
    let events = m.log.len();
    let made = engine(&mut m)
        .reserve(&at_store("O-1", "S1", &[("B", 2), ("A", 3)]))
        .unwrap();
    assert!(made.created);
    assert_eq!(level(&m, "S1", "A"), (5, 3, 2));
    assert_eq!(level(&m, "S1", "B"), (2, 2, 2));
    assert_eq!(m.log.len(), events + 2);
    // Rows are written in (store, sku) order, whatever the order of the lines.
    let keys: Vec<&str> = m.log[events..].iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["A", "B"]);
    assert_eq!(m.reservations.len(), 1);
}

#[test]
fn a_reservation_short_of_one_line_writes_nothing_at_all() {
    let mut m = stocked(&[("S1", "A", 5), ("S1", "B", 1)]);
    let before = m.clone();
    let err = engine(&mut m)
        .reserve(&at_store("O-1", "S1", &[("A", 3), ("B", 2)]))
        .unwrap_err();
    let LedgerError::Domain(DomainError::InsufficientStock { lines }) = err else {
        panic!("expected insufficient stock, got {err:?}");
    };
    assert_eq!((lines.len(), lines[0].available), (1, 1));
    assert_eq!(
        m, before,
        "a refused reservation leaves every row as it was"
    );
}

#[test]
fn a_repeat_answers_the_original_and_a_changed_repeat_conflicts() {
    let mut m = stocked(&[("S1", "A", 5)]);
    let first = engine(&mut m)
        .reserve(&at_store("O-1", "S1", &[("A", 2)]))
        .unwrap();
    let after_first = m.clone();
    let again = engine(&mut m)
        .reserve(&at_store("O-1", "S1", &[("A", 2)]))
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.reservation, first.reservation);
    assert_eq!(m, after_first, "a repeat changes nothing");
    let changed = engine(&mut m).reserve(&at_store("O-1", "S1", &[("A", 3)]));
    assert!(matches!(
        changed,
        Err(LedgerError::Domain(DomainError::IdempotencyConflict(_)))
    ));
    assert_eq!(m, after_first);
}

#[test]
fn release_gives_back_and_fulfil_ships_and_neither_happens_twice() {
    let mut m = stocked(&[("S1", "A", 5)]);
    let id = engine(&mut m)
        .reserve(&at_store("O-1", "S1", &[("A", 4)]))
        .unwrap()
        .reservation
        .reservation_id();
    let reason = ReleaseReason::OrderChanged;
    let r = engine(&mut m)
        .client_release(id, Some(&lines(&[("A", 1)])), reason, Some("k1"))
        .unwrap();
    assert_eq!((r.status(), r.held()), (ReservationStatus::Active, 3));
    assert_eq!(level(&m, "S1", "A"), (5, 3, 3));
    // The same key again: the reservation as it is, nothing released twice.
    let settled = m.clone();
    engine(&mut m)
        .client_release(id, Some(&lines(&[("A", 1)])), reason, Some("k1"))
        .unwrap();
    assert_eq!(m, settled);

    let r = engine(&mut m).client_fulfil(id, None, None).unwrap();
    assert_eq!((r.status(), r.held()), (ReservationStatus::Fulfilled, 0));
    assert_eq!(level(&m, "S1", "A"), (2, 0, 4));
    // Nothing is held any more: a second fulfilment takes nothing.
    let done = m.clone();
    engine(&mut m).client_fulfil(id, None, None).unwrap();
    assert_eq!(m.stock, done.stock);
    assert_eq!(m.log.len(), done.log.len());
}

#[test]
fn releasing_more_than_is_held_is_refused_and_writes_nothing() {
    let mut m = stocked(&[("S1", "A", 5), ("S1", "B", 5)]);
    let id = engine(&mut m)
        .reserve(&at_store("O-1", "S1", &[("A", 2), ("B", 1)]))
        .unwrap()
        .reservation
        .reservation_id();
    let before = m.clone();
    let err = engine(&mut m)
        .release(
            id,
            Some(&lines(&[("A", 1), ("B", 2)])),
            Reason::OrderCancelled,
            ReleaseKind::Requested,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        LedgerError::Domain(DomainError::InvalidState(_))
    ));
    assert_eq!(m, before);
    assert!(matches!(
        engine(&mut m).client_fulfil(Uuid::nil(), None, None),
        Err(LedgerError::Domain(DomainError::NotFound(_)))
    ));
}

#[test]
fn expiry_releases_what_is_due_and_nothing_else() {
    let mut m = stocked(&[("S1", "A", 5)]);
    let ttl = |order: &str, secs| {
        let lines = vec![(sku("A"), q(1))];
        let ttl = invsync_core::TtlSeconds::new(secs).unwrap();
        Reserve::new(
            OrderId::parse(order).unwrap(),
            store("S1"),
            lines,
            Some(ttl),
            None,
        )
        .unwrap()
    };
    engine(&mut m).reserve(&ttl("O-1", 60)).unwrap();
    engine(&mut m).reserve(&ttl("O-2", 600)).unwrap();
    let later = Engine {
        tx: &mut m,
        now: now() + chrono::TimeDelta::seconds(61),
    }
    .expire_due(10)
    .unwrap();
    assert_eq!(later, 1);
    assert_eq!(level(&m, "S1", "A").1, 1);
    let statuses: Vec<_> = m
        .reservations
        .values()
        .map(|(_, _, r)| r.status())
        .collect();
    assert!(statuses.contains(&ReservationStatus::Expired));
    assert!(statuses.contains(&ReservationStatus::Active));
}

/// A channel over WH1 (first) and S1, with a safety stock of 1 at S1.
fn online(m: &mut Memory) -> ChannelId {
    let id = ChannelId::parse("online").unwrap();
    let location = |st: &str, priority, safety_stock| ChannelLocation {
        store_id: store(st),
        priority,
        safety_stock,
    };
    let config = ChannelConfig::new(
        None,
        Allocation::Priority,
        Split::ByUnit,
        vec![location("WH1", 1, 0), location("S1", 2, 1)],
    )
    .unwrap();
    engine(m).put_channel(&id, config, Some(0)).unwrap();
    id
}

fn in_channel(order: &str, c: &ChannelId, lines: &[(&str, i64)]) -> Reserve {
    let lines = lines.iter().map(|(s, n)| (sku(s), q(*n))).collect();
    Reserve::new(OrderId::parse(order).unwrap(), c.clone(), lines, None, None).unwrap()
}

#[test]
fn a_channel_reservation_allocates_in_priority_order_and_never_into_safety_stock() {
    let mut m = stocked(&[("WH1", "A", 2), ("S1", "A", 3)]);
    let c = online(&mut m);
    let r = engine(&mut m)
        .reserve(&in_channel("O-1", &c, &[("A", 4)]))
        .unwrap()
        .reservation;
    let at: Vec<_> = r.lines()[0]
        .allocations()
        .iter()
        .map(|a| (a.store_id().as_str(), a.quantity()))
        .collect();
    assert_eq!(at, [("WH1", 2), ("S1", 2)]);
    // S1 keeps its one unit of safety stock: one more unit is refused, nothing moves.
    let before = m.clone();
    let refused = engine(&mut m).reserve(&in_channel("O-2", &c, &[("A", 1)]));
    assert!(matches!(
        refused,
        Err(LedgerError::Domain(DomainError::InsufficientStock { .. }))
    ));
    assert_eq!(m, before);
}

#[test]
fn a_till_sale_moves_a_channel_reservation_elsewhere_or_marks_it_short() {
    let mut m = stocked(&[("WH1", "A", 3), ("S1", "A", 2)]);
    let c = online(&mut m);
    let r = engine(&mut m)
        .reserve(&in_channel("O-1", &c, &[("A", 2)]))
        .unwrap()
        .reservation;
    assert_eq!(
        r.allocation(&sku("A"), &store("WH1")).unwrap().quantity(),
        2
    );
    // Two units leave WH1 by hand: one of the order's units moves to S1 (which
    // has 2, keeps 1 as safety stock), the other cannot move and is short.
    let sale = Adjust {
        reason: AdjustReason::StockOut,
        ..adjust("WH1", "A", Change::Delta(Delta::new(-2).unwrap()))
    };
    engine(&mut m).adjust(&sale).unwrap();
    let id = r.reservation_id();
    let (_, _, r) = &m.reservations[&id];
    let wh1 = r.allocation(&sku("A"), &store("WH1")).unwrap();
    let s1 = r.allocation(&sku("A"), &store("S1")).unwrap();
    assert_eq!((wh1.quantity(), wh1.short()), (1, 0));
    assert_eq!((s1.quantity(), s1.short()), (1, 0));
    // Stock-in, reserve, the adjustment, and the release the move wrote at WH1.
    assert_eq!(level(&m, "WH1", "A"), (1, 1, 4));
    // The rest of WH1 goes too: nothing left to move to, so the unit there is short.
    let gone = Adjust {
        reason: AdjustReason::Damage,
        ..adjust("WH1", "A", Change::Delta(Delta::new(-1).unwrap()))
    };
    engine(&mut m).adjust(&gone).unwrap();
    let (_, _, r) = &m.reservations[&id];
    assert_eq!(r.allocation(&sku("A"), &store("WH1")).unwrap().short(), 1);
    assert_eq!(r.held(), 2, "a shortage never drops what the order holds");
}

#[test]
fn every_stock_change_is_one_event_at_the_next_version() {
    let mut m = stocked(&[("S1", "A", 5)]);
    let id = engine(&mut m)
        .reserve(&at_store("O-1", "S1", &[("A", 2)]))
        .unwrap()
        .reservation
        .reservation_id();
    engine(&mut m).client_fulfil(id, None, None).unwrap();
    let versions: Vec<i64> = m.log.iter().map(|r| r.version).collect();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(
        m.stock[&(store("S1"), sku("A"))],
        StockLevel::new(3, 0, 3).unwrap()
    );
}
