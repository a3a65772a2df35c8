//! Reservations: the lines an order holds, and the state machine
//! `active → released | fulfilled | expired`, partial per line.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::Lines;
use crate::error::DomainError;
use crate::ids::{ChannelId, OrderId, Sku, StoreId};
use crate::quantity::LineQuantity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Some line still holds stock.
    Active,
    /// Nothing is held and nothing was fulfilled; ended by a release.
    Released,
    /// Nothing is held and at least one unit was fulfilled.
    Fulfilled,
    /// Nothing was fulfilled and the rest was released because the TTL ran out.
    Expired,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Released => "released",
            Self::Fulfilled => "fulfilled",
            Self::Expired => "expired",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "active" => Self::Active,
            "released" => Self::Released,
            "fulfilled" => Self::Fulfilled,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// Where one line (or part of it) is held: one location, with the same counters as
/// the line. `held = quantity - released - fulfilled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub store_id: StoreId,
    pub quantity: i64,
    pub released: i64,
    pub fulfilled: i64,
    /// Units of this allocation the location no longer has on hand and that could not
    /// be moved elsewhere (reallocation, channels.md); 0 when fully covered.
    pub short: i64,
}

impl Allocated {
    pub fn new(store_id: StoreId, quantity: i64) -> Self {
        Self {
            store_id,
            quantity,
            released: 0,
            fulfilled: 0,
            short: 0,
        }
    }

    pub fn held(&self) -> i64 {
        self.quantity - self.released - self.fulfilled
    }
}

/// One SKU of a reservation: where it is held, one allocation per location (one for
/// a store-direct reservation; one or more, in allocation order, for a channel's).
/// The line's counters are the sums of its allocations'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationLine {
    pub sku: Sku,
    pub allocations: Vec<Allocated>,
}

impl ReservationLine {
    /// A new line held at one location.
    pub fn new(store: StoreId, sku: Sku, quantity: LineQuantity) -> Self {
        Self::allocated(sku, vec![Allocated::new(store, quantity.get())])
    }

    /// A line made of its allocations (loaded from storage, or just allocated).
    pub fn allocated(sku: Sku, allocations: Vec<Allocated>) -> Self {
        Self { sku, allocations }
    }

    fn sum(&self, count: impl Fn(&Allocated) -> i64) -> i64 {
        self.allocations.iter().map(count).sum()
    }

    pub fn quantity(&self) -> i64 {
        self.sum(|a| a.quantity)
    }

    pub fn released(&self) -> i64 {
        self.sum(|a| a.released)
    }

    pub fn fulfilled(&self) -> i64 {
        self.sum(|a| a.fulfilled)
    }

    pub fn held(&self) -> i64 {
        self.sum(Allocated::held)
    }

    /// Which allocations `wanted` units come from, as (allocation, units): the one at
    /// `store` when named, else in allocation order from the first or the last.
    fn pick(
        &self,
        wanted: i64,
        store: Option<&StoreId>,
        from: From,
    ) -> Result<Vec<(usize, i64)>, DomainError> {
        let sku = &self.sku;
        if let Some(store) = store {
            let Some(j) = self.allocations.iter().position(|a| &a.store_id == store) else {
                return Err(DomainError::invalid_state(format!(
                    "sku {sku} is not allocated to store {store}"
                )));
            };
            let held = self.allocations[j].held();
            if wanted > held {
                return Err(DomainError::invalid_state(format!(
                    "sku {sku}: {wanted} requested but only {held} held at store {store}"
                )));
            }
            return Ok(vec![(j, wanted)]);
        }
        let held = self.held();
        if wanted > held {
            return Err(DomainError::invalid_state(format!(
                "sku {sku}: {wanted} requested but only {held} held"
            )));
        }
        let mut order: Vec<usize> = (0..self.allocations.len()).collect();
        if from == From::Last {
            order.reverse();
        }
        let mut left = wanted;
        let mut picks = Vec::new();
        for j in order {
            let take = self.allocations[j].held().min(left);
            if take > 0 {
                picks.push((j, take));
                left -= take;
            }
        }
        Ok(picks)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub reservation_id: Uuid,
    pub order_id: OrderId,
    /// The store a store-direct reservation holds at; `None` for a channel's.
    pub store_id: Option<StoreId>,
    /// The channel a channel reservation was allocated through; `None` for a
    /// store-direct one.
    pub channel: Option<ChannelId>,
    pub status: ReservationStatus,
    pub lines: Vec<ReservationLine>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// How a release ends a reservation when nothing is left held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseKind {
    /// Asked for by the client (cancellation and the like).
    Requested,
    /// The TTL ran out.
    Expiry,
}

/// What a release or fulfilment takes away, per (location, sku), in line and then
/// allocation order.
pub type Taken = Vec<(StoreId, Sku, i64)>;

/// Which allocation of a line a release or fulfilment without a `store_id` takes
/// from first (channels.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    /// Allocation order: a fulfilment ships from where the order was meant to.
    First,
    /// Reverse allocation order: a release gives back the least preferred first.
    Last,
}

impl Reservation {
    pub fn held(&self) -> i64 {
        self.lines.iter().map(ReservationLine::held).sum()
    }

    /// Every (location, sku) the reservation has a line at, in (store, sku) order:
    /// the stock rows a change of it may touch.
    pub fn rows(&self) -> Vec<(StoreId, Sku)> {
        let mut rows: Vec<(StoreId, Sku)> = self
            .lines
            .iter()
            .flat_map(|l| {
                l.allocations
                    .iter()
                    .map(|a| (a.store_id.clone(), l.sku.clone()))
            })
            .collect();
        rows.sort();
        rows.dedup();
        rows
    }

    /// The allocation of `sku` at `store`, if the reservation has one.
    pub fn allocation(&self, sku: &Sku, store: &StoreId) -> Option<&Allocated> {
        self.lines
            .iter()
            .filter(|l| &l.sku == sku)
            .flat_map(|l| &l.allocations)
            .find(|a| &a.store_id == store)
    }

    /// Moves held units of `sku` from `from` to the locations `to` (reallocation,
    /// channels.md): the allocation at `from` shrinks by what moved, and is dropped
    /// when nothing of it is left; each destination grows, or is appended after the
    /// line's allocations. The line's quantity is unchanged. On error (more than
    /// `from` holds and is not short) the reservation is unchanged.
    pub fn relocate(
        &mut self,
        sku: &Sku,
        from: &StoreId,
        to: &[(StoreId, i64)],
    ) -> Result<(), DomainError> {
        let units: i64 = to.iter().map(|(_, n)| n).sum();
        let Some(line) = self.lines.iter_mut().find(|l| &l.sku == sku) else {
            return Err(DomainError::invalid_state(format!(
                "the reservation has no line for sku {sku}"
            )));
        };
        let Some(j) = line.allocations.iter().position(|a| &a.store_id == from) else {
            return Err(DomainError::invalid_state(format!(
                "sku {sku} is not allocated to store {from}"
            )));
        };
        let source = &mut line.allocations[j];
        if units < 0 || units > source.held() - source.short {
            return Err(DomainError::invalid_state(format!(
                "sku {sku}: cannot move {units} of what store {from} holds"
            )));
        }
        source.quantity -= units;
        if source.quantity == 0 {
            line.allocations.remove(j);
        }
        for (store, n) in to {
            match line.allocations.iter_mut().find(|a| &a.store_id == store) {
                Some(a) => a.quantity += n,
                None => line.allocations.push(Allocated::new(store.clone(), *n)),
            }
        }
        Ok(())
    }

    /// Sets how many units of the allocation of `sku` at `store` are short (at most
    /// what it holds); no such allocation, no change.
    pub fn set_short(&mut self, sku: &Sku, store: &StoreId, short: i64) {
        let found = self
            .lines
            .iter_mut()
            .filter(|l| &l.sku == sku)
            .flat_map(|l| &mut l.allocations)
            .find(|a| &a.store_id == store);
        if let Some(a) = found {
            a.short = short.clamp(0, a.held());
        }
    }

    /// Releases the given quantities (or everything held when `lines` is `None`).
    /// On error the reservation is unchanged.
    pub fn release(
        &mut self,
        lines: Option<&Lines>,
        kind: ReleaseKind,
    ) -> Result<Taken, DomainError> {
        let taken = self.take(lines, From::Last, |a, q| a.released += q)?;
        if self.held() == 0 && !taken.is_empty() {
            self.status = self.ended_status(kind);
        }
        Ok(taken)
    }

    /// Fulfils the given quantities (or everything held when `lines` is `None`).
    /// On error the reservation is unchanged.
    pub fn fulfil(&mut self, lines: Option<&Lines>) -> Result<Taken, DomainError> {
        let taken = self.take(lines, From::First, |a, q| a.fulfilled += q)?;
        if self.held() == 0 && !taken.is_empty() {
            self.status = self.ended_status(ReleaseKind::Requested);
        }
        Ok(taken)
    }

    fn ended_status(&self, kind: ReleaseKind) -> ReservationStatus {
        if self.lines.iter().any(|l| l.fulfilled() > 0) {
            ReservationStatus::Fulfilled
        } else if kind == ReleaseKind::Expiry {
            ReservationStatus::Expired
        } else {
            ReservationStatus::Released
        }
    }

    /// Works out what to take from which allocation, checks it all, then applies it,
    /// so a refused request leaves every line as it was. A reservation that holds
    /// nothing takes nothing and is not an error: that is what makes release and
    /// fulfil safe to retry.
    fn take(
        &mut self,
        lines: Option<&Lines>,
        from: From,
        apply: impl Fn(&mut Allocated, i64),
    ) -> Result<Taken, DomainError> {
        if self.held() == 0 {
            return Ok(Vec::new());
        }
        // (line, allocation, quantity)
        let mut plan: Vec<(usize, usize, i64)> = Vec::new();
        match lines {
            None => {
                for (i, line) in self.lines.iter().enumerate() {
                    let held = line.allocations.iter().map(Allocated::held).enumerate();
                    plan.extend(held.filter(|(_, n)| *n > 0).map(|(j, n)| (i, j, n)));
                }
            }
            Some(requested) => {
                for (k, (sku, quantity)) in requested.iter().enumerate() {
                    let Some(i) = self.lines.iter().position(|l| &l.sku == sku) else {
                        return Err(DomainError::invalid_state(format!(
                            "the reservation has no line for sku {sku}"
                        )));
                    };
                    let picks = self.lines[i].pick(quantity.get(), requested.store(k), from)?;
                    plan.extend(picks.into_iter().map(|(j, n)| (i, j, n)));
                }
            }
        }
        let mut taken = Vec::with_capacity(plan.len());
        for (i, j, quantity) in plan {
            let line = &mut self.lines[i];
            let a = &mut line.allocations[j];
            apply(a, quantity);
            // What is no longer held cannot be short.
            a.short = a.short.min(a.held());
            taken.push((a.store_id.clone(), line.sku.clone(), quantity));
        }
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(s: &str) -> Sku {
        Sku::parse(s).unwrap()
    }

    fn q(n: i64) -> LineQuantity {
        LineQuantity::new(n).unwrap()
    }

    fn store(s: &str) -> StoreId {
        StoreId::parse(s).unwrap()
    }

    fn lines(picks: &[(&str, i64)]) -> Lines {
        Lines::new(
            picks.iter().map(|(s, n)| (sku(s), q(*n))).collect(),
            "lines",
        )
        .unwrap()
    }

    fn reservation() -> Reservation {
        Reservation {
            reservation_id: Uuid::nil(),
            order_id: OrderId::parse("O-1").unwrap(),
            store_id: Some(store("S1")),
            channel: None,
            status: ReservationStatus::Active,
            lines: vec![
                ReservationLine::new(store("S1"), sku("A"), q(3)),
                ReservationLine::new(store("S1"), sku("B"), q(1)),
            ],
            expires_at: None,
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_partial_release_keeps_the_reservation_active() {
        let mut r = reservation();
        let taken = r
            .release(Some(&lines(&[("A", 2)])), ReleaseKind::Requested)
            .unwrap();
        assert_eq!(taken, vec![(store("S1"), sku("A"), 2)]);
        assert_eq!(r.status, ReservationStatus::Active);
        assert_eq!(r.held(), 2);
    }

    #[test]
    fn a_full_release_ends_it_and_a_second_one_takes_nothing() {
        let mut r = reservation();
        assert_eq!(r.release(None, ReleaseKind::Requested).unwrap().len(), 2);
        assert_eq!(r.status, ReservationStatus::Released);
        assert!(r.release(None, ReleaseKind::Requested).unwrap().is_empty());
        assert!(r.fulfil(None).unwrap().is_empty());
    }

    #[test]
    fn releasing_more_than_held_changes_nothing() {
        let mut r = reservation();
        let before = r.clone();
        let err = r
            .release(Some(&lines(&[("B", 1), ("A", 4)])), ReleaseKind::Requested)
            .unwrap_err();
        assert!(matches!(err, DomainError::InvalidState(_)));
        assert_eq!(r, before);
        assert!(r
            .release(Some(&lines(&[("Z", 1)])), ReleaseKind::Requested)
            .is_err());
    }

    #[test]
    fn fulfilling_part_then_releasing_the_rest_is_fulfilled() {
        let mut r = reservation();
        r.fulfil(Some(&lines(&[("A", 3)]))).unwrap();
        r.release(None, ReleaseKind::Requested).unwrap();
        assert_eq!(r.status, ReservationStatus::Fulfilled);
    }

    #[test]
    fn expiry_ends_as_expired() {
        let mut r = reservation();
        r.release(None, ReleaseKind::Expiry).unwrap();
        assert_eq!(r.status, ReservationStatus::Expired);
    }

    /// A channel reservation of 5 × A: 3 at WH1 (first in allocation order), 2 at S1.
    fn split() -> Reservation {
        Reservation {
            store_id: None,
            channel: Some(ChannelId::parse("online").unwrap()),
            lines: vec![ReservationLine::allocated(
                sku("A"),
                vec![
                    Allocated::new(store("WH1"), 3),
                    Allocated::new(store("S1"), 2),
                ],
            )],
            ..reservation()
        }
    }

    #[test]
    fn a_release_gives_back_the_last_allocation_first_and_a_fulfilment_ships_the_first() {
        let mut r = split();
        let taken = r
            .release(Some(&lines(&[("A", 3)])), ReleaseKind::Requested)
            .unwrap();
        assert_eq!(
            taken,
            vec![(store("S1"), sku("A"), 2), (store("WH1"), sku("A"), 1)]
        );
        assert_eq!((r.lines[0].released(), r.lines[0].held()), (3, 2));

        let mut r = split();
        let taken = r.fulfil(Some(&lines(&[("A", 4)]))).unwrap();
        assert_eq!(
            taken,
            vec![(store("WH1"), sku("A"), 3), (store("S1"), sku("A"), 1)]
        );
        assert_eq!(r.lines[0].fulfilled(), 4);
        assert_eq!(r.status, ReservationStatus::Active);
    }

    #[test]
    fn a_line_naming_a_store_takes_from_that_allocation_only() {
        let at = |s: &str, n: i64, st: &str| {
            Lines::at_stores(vec![(sku(s), q(n))], vec![Some(store(st))], "lines").unwrap()
        };
        let mut r = split();
        let taken = r.fulfil(Some(&at("A", 2, "S1"))).unwrap();
        assert_eq!(taken, vec![(store("S1"), sku("A"), 2)]);
        assert_eq!(r.lines[0].allocations[1].fulfilled, 2);
        // S1 holds nothing more; WH1 still holds 3.
        let before = r.clone();
        assert!(r.fulfil(Some(&at("A", 1, "S1"))).is_err());
        assert!(r.fulfil(Some(&at("A", 1, "S9"))).is_err());
        assert_eq!(r, before);
        assert_eq!(
            r.rows(),
            vec![(store("S1"), sku("A")), (store("WH1"), sku("A"))]
        );
    }
}
