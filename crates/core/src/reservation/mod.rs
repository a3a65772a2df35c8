//! Reservations: the lines an order holds, and the state machine
//! `active → released | fulfilled | expired`, partial per line.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::{Lines, Target};
use crate::error::DomainError;
use crate::ids::{ChannelId, OrderId, Sku, StoreId};

mod line;

use line::{invalid, From};
pub use line::{Allocated, InvalidReservation, ReservationLine};

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

/// A reservation as stored, before its checks: what [`Reservation::restore`] takes.
#[derive(Debug, Clone)]
pub struct StoredReservation {
    pub reservation_id: Uuid,
    pub order_id: OrderId,
    /// Its store, or its channel.
    pub target: Target,
    pub status: ReservationStatus,
    pub lines: Vec<ReservationLine>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// An order's hold on stock. Valid by construction: at least one line, one line per
/// SKU, a store-direct reservation's allocations all at its store, and a status that
/// matches its counters (active exactly while something is held; fulfilled exactly
/// when it ended with a unit fulfilled). The fields are private: [`Reservation::open`]
/// makes a new one, [`Reservation::restore`] rebuilds a stored one (and checks it),
/// and [`release`](Reservation::release), [`fulfil`](Reservation::fulfil),
/// [`relocate`](Reservation::relocate) and [`set_short`](Reservation::set_short) are
/// the only ways to change one; each checks the invariant again before it keeps
/// its change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    reservation_id: Uuid,
    order_id: OrderId,
    target: Target,
    status: ReservationStatus,
    lines: Vec<ReservationLine>,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
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

impl Reservation {
    /// A new, active reservation of `lines` (each already allocated).
    pub fn open(
        order_id: OrderId,
        target: Target,
        lines: Vec<ReservationLine>,
        expires_at: Option<DateTime<Utc>>,
        created_at: DateTime<Utc>,
    ) -> Result<Self, InvalidReservation> {
        Self::restore(StoredReservation {
            reservation_id: Uuid::now_v7(),
            order_id,
            target,
            status: ReservationStatus::Active,
            lines,
            expires_at,
            created_at,
        })
    }

    /// A stored reservation, checked: a row that breaks the invariant is an error,
    /// never a reservation that answers wrongly.
    pub fn restore(stored: StoredReservation) -> Result<Self, InvalidReservation> {
        let StoredReservation {
            reservation_id,
            order_id,
            target,
            status,
            lines,
            expires_at,
            created_at,
        } = stored;
        let r = Self {
            reservation_id,
            order_id,
            target,
            status,
            lines,
            expires_at,
            created_at,
        };
        r.check()
            .map_err(|e| invalid(format!("reservation {reservation_id}: {e}")))?;
        Ok(r)
    }

    /// The whole invariant (see the type's documentation).
    fn check(&self) -> Result<(), InvalidReservation> {
        if self.lines.is_empty() {
            return Err(invalid("no line"));
        }
        for (i, line) in self.lines.iter().enumerate() {
            line.check()?;
            if self.lines[..i].iter().any(|l| l.sku == line.sku) {
                return Err(invalid(format!("two lines for sku {}", line.sku)));
            }
            if let Target::Store(store) = &self.target {
                if let Some(a) = line.allocations.iter().find(|a| &a.store_id != store) {
                    return Err(invalid(format!(
                        "line {} is allocated at store {} of a reservation at store {store}",
                        line.sku, a.store_id
                    )));
                }
            }
        }
        let held = self.held();
        let fulfilled = self.lines.iter().any(|l| l.fulfilled() > 0);
        let consistent = match self.status {
            ReservationStatus::Active => held > 0,
            ReservationStatus::Fulfilled => held == 0 && fulfilled,
            ReservationStatus::Released | ReservationStatus::Expired => held == 0 && !fulfilled,
        };
        if !consistent {
            return Err(invalid(format!(
                "status {} with {held} held{}",
                self.status.as_str(),
                if fulfilled {
                    " and units fulfilled"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }

    /// Applies `change` to a copy and keeps it only if the copy still holds the
    /// invariant: a refused change, or a bug in one, leaves the reservation as it
    /// was.
    fn settle<T>(
        &mut self,
        change: impl FnOnce(&mut Self) -> Result<T, DomainError>,
    ) -> Result<T, DomainError> {
        let mut next = self.clone();
        let out = change(&mut next)?;
        next.check().map_err(|e| {
            DomainError::invalid_state(format!(
                "reservation {} would break its invariant: {e}",
                self.reservation_id
            ))
        })?;
        *self = next;
        Ok(out)
    }

    pub fn reservation_id(&self) -> Uuid {
        self.reservation_id
    }

    pub fn order_id(&self) -> &OrderId {
        &self.order_id
    }

    /// Its store, or its channel.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The store a store-direct reservation holds at; `None` for a channel's.
    pub fn store_id(&self) -> Option<&StoreId> {
        self.target.store()
    }

    /// The channel a channel reservation was allocated through; `None` for a
    /// store-direct one.
    pub fn channel(&self) -> Option<&ChannelId> {
        self.target.channel()
    }

    pub fn status(&self) -> ReservationStatus {
        self.status
    }

    /// The lines, in the order the reservation was made with.
    pub fn lines(&self) -> &[ReservationLine] {
        &self.lines
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

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
        self.settle(|r| r.move_held(sku, from, to))
    }

    fn move_held(
        &mut self,
        sku: &Sku,
        from: &StoreId,
        to: &[(StoreId, i64)],
    ) -> Result<(), DomainError> {
        if let Some((store, n)) = to.iter().find(|(_, n)| *n < 1) {
            return Err(DomainError::invalid_state(format!(
                "sku {sku}: cannot move {n} units to store {store}"
            )));
        }
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
                None => line.allocations.push(Allocated {
                    store_id: store.clone(),
                    quantity: *n,
                    released: 0,
                    fulfilled: 0,
                    short: 0,
                }),
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
        self.settle(|r| {
            let taken = r.take(lines, From::Last, |a, q| a.released += q)?;
            if r.held() == 0 && !taken.is_empty() {
                r.status = r.ended_status(kind);
            }
            Ok(taken)
        })
    }

    /// Fulfils the given quantities (or everything held when `lines` is `None`).
    /// On error the reservation is unchanged.
    pub fn fulfil(&mut self, lines: Option<&Lines>) -> Result<Taken, DomainError> {
        self.settle(|r| {
            let taken = r.take(lines, From::First, |a, q| a.fulfilled += q)?;
            if r.held() == 0 && !taken.is_empty() {
                r.status = r.ended_status(ReleaseKind::Requested);
            }
            Ok(taken)
        })
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
    use crate::quantity::LineQuantity;

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
        Reservation::open(
            OrderId::parse("O-1").unwrap(),
            Target::Store(store("S1")),
            vec![
                ReservationLine::new(store("S1"), sku("A"), q(3)),
                ReservationLine::new(store("S1"), sku("B"), q(1)),
            ],
            None,
            DateTime::UNIX_EPOCH,
        )
        .unwrap()
    }

    #[test]
    fn a_partial_release_keeps_the_reservation_active() {
        let mut r = reservation();
        let taken = r
            .release(Some(&lines(&[("A", 2)])), ReleaseKind::Requested)
            .unwrap();
        assert_eq!(taken, vec![(store("S1"), sku("A"), 2)]);
        assert_eq!(r.status(), ReservationStatus::Active);
        assert_eq!(r.held(), 2);
    }

    #[test]
    fn a_full_release_ends_it_and_a_second_one_takes_nothing() {
        let mut r = reservation();
        assert_eq!(r.release(None, ReleaseKind::Requested).unwrap().len(), 2);
        assert_eq!(r.status(), ReservationStatus::Released);
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
        assert_eq!(r.status(), ReservationStatus::Fulfilled);
    }

    #[test]
    fn expiry_ends_as_expired() {
        let mut r = reservation();
        r.release(None, ReleaseKind::Expiry).unwrap();
        assert_eq!(r.status(), ReservationStatus::Expired);
    }

    /// A channel reservation of 5 × A: 3 at WH1 (first in allocation order), 2 at S1.
    fn split() -> Reservation {
        Reservation::open(
            OrderId::parse("O-1").unwrap(),
            Target::Channel(ChannelId::parse("online").unwrap()),
            vec![ReservationLine::allocated(
                sku("A"),
                vec![
                    Allocated::new(store("WH1"), q(3)),
                    Allocated::new(store("S1"), q(2)),
                ],
            )
            .unwrap()],
            None,
            DateTime::UNIX_EPOCH,
        )
        .unwrap()
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
        assert_eq!((r.lines()[0].released(), r.lines()[0].held()), (3, 2));

        let mut r = split();
        let taken = r.fulfil(Some(&lines(&[("A", 4)]))).unwrap();
        assert_eq!(
            taken,
            vec![(store("WH1"), sku("A"), 3), (store("S1"), sku("A"), 1)]
        );
        assert_eq!(r.lines()[0].fulfilled(), 4);
        assert_eq!(r.status(), ReservationStatus::Active);
    }

    #[test]
    fn a_line_naming_a_store_takes_from_that_allocation_only() {
        let at = |s: &str, n: i64, st: &str| {
            Lines::at_stores(vec![(sku(s), q(n))], vec![Some(store(st))], "lines").unwrap()
        };
        let mut r = split();
        let taken = r.fulfil(Some(&at("A", 2, "S1"))).unwrap();
        assert_eq!(taken, vec![(store("S1"), sku("A"), 2)]);
        assert_eq!(r.lines()[0].allocations()[1].fulfilled(), 2);
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

    fn stored(status: ReservationStatus, lines: Vec<ReservationLine>) -> StoredReservation {
        StoredReservation {
            reservation_id: Uuid::nil(),
            order_id: OrderId::parse("O-1").unwrap(),
            target: Target::Store(store("S1")),
            status,
            lines,
            expires_at: None,
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    fn line(parts: &[(&str, i64, i64, i64, i64)]) -> Result<ReservationLine, InvalidReservation> {
        let allocations = parts
            .iter()
            .map(|&(at, n, rel, ful, short)| Allocated::restore(store(at), n, rel, ful, short))
            .collect::<Result<_, _>>()?;
        ReservationLine::allocated(sku("A"), allocations)
    }

    #[test]
    fn a_stored_allocation_that_breaks_its_counters_is_refused() {
        assert!(line(&[("S1", 3, 1, 2, 0)]).is_ok());
        for bad in [
            (3, 2, 2, 0),  // released + fulfilled > quantity
            (0, 0, 0, 0),  // no quantity
            (3, -1, 0, 0), // a negative counter
            (3, 1, 0, 3),  // short more than held
        ] {
            let (n, rel, ful, short) = bad;
            let err = line(&[("S1", n, rel, ful, short)]).unwrap_err();
            assert!(err.to_string().contains("S1"), "{bad:?}: {err}");
        }
        assert!(line(&[]).is_err(), "a line with no allocation");
        assert!(
            line(&[("S1", 1, 0, 0, 0), ("S1", 1, 0, 0, 0)]).is_err(),
            "two allocations at one store"
        );
    }

    #[test]
    fn a_stored_reservation_must_match_its_status_and_its_store() {
        let held = || line(&[("S1", 2, 0, 0, 0)]).unwrap();
        let done = || line(&[("S1", 2, 1, 1, 0)]).unwrap();
        let given_back = || line(&[("S1", 2, 2, 0, 0)]).unwrap();
        assert!(Reservation::restore(stored(ReservationStatus::Active, vec![held()])).is_ok());
        assert!(Reservation::restore(stored(ReservationStatus::Fulfilled, vec![done()])).is_ok());
        assert!(
            Reservation::restore(stored(ReservationStatus::Expired, vec![given_back()])).is_ok()
        );
        for (status, lines) in [
            (ReservationStatus::Active, vec![given_back()]),
            (ReservationStatus::Released, vec![held()]),
            (ReservationStatus::Released, vec![done()]),
            (ReservationStatus::Fulfilled, vec![given_back()]),
            (ReservationStatus::Active, vec![]),
            (ReservationStatus::Active, vec![held(), held()]),
        ] {
            assert!(
                Reservation::restore(stored(status, lines.clone())).is_err(),
                "{status:?} {lines:?}"
            );
        }
        let elsewhere = line(&[("S2", 2, 0, 0, 0)]).unwrap();
        let err = Reservation::restore(stored(ReservationStatus::Active, vec![elsewhere]));
        assert!(err.unwrap_err().to_string().contains("S2"));
    }

    #[test]
    fn a_move_of_nothing_or_of_more_than_is_held_changes_nothing() {
        let mut r = split();
        let before = r.clone();
        assert!(r
            .relocate(&sku("A"), &store("WH1"), &[(store("S2"), 0)])
            .is_err());
        assert!(r
            .relocate(&sku("A"), &store("WH1"), &[(store("S2"), 4)])
            .is_err());
        assert_eq!(r, before);
        r.relocate(&sku("A"), &store("WH1"), &[(store("S1"), 3)])
            .unwrap();
        assert_eq!(r.lines()[0].allocations().len(), 1);
        assert_eq!(r.lines()[0].allocations()[0].quantity(), 5);
    }
}
