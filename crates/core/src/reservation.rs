//! Reservations: the lines an order holds, and the state machine
//! `active → released | fulfilled | expired`, partial per line.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;
use crate::ids::{OrderId, Sku, StoreId};
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

/// One SKU of a reservation: `held = quantity - released - fulfilled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationLine {
    pub sku: Sku,
    pub quantity: i64,
    pub released: i64,
    pub fulfilled: i64,
}

impl ReservationLine {
    pub fn new(sku: Sku, quantity: LineQuantity) -> Self {
        Self {
            sku,
            quantity: quantity.get(),
            released: 0,
            fulfilled: 0,
        }
    }

    pub fn held(&self) -> i64 {
        self.quantity - self.released - self.fulfilled
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub reservation_id: Uuid,
    pub order_id: OrderId,
    pub store_id: StoreId,
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

/// What a release or fulfilment takes away from each line, in line order.
pub type Taken = Vec<(Sku, i64)>;

impl Reservation {
    pub fn held(&self) -> i64 {
        self.lines.iter().map(ReservationLine::held).sum()
    }

    /// Releases the given quantities (or everything held when `lines` is `None`).
    /// On error the reservation is unchanged.
    pub fn release(
        &mut self,
        lines: Option<&[(Sku, LineQuantity)]>,
        kind: ReleaseKind,
    ) -> Result<Taken, DomainError> {
        let taken = self.take(lines, |line, q| line.released += q)?;
        if self.held() == 0 && !taken.is_empty() {
            self.status = self.ended_status(kind);
        }
        Ok(taken)
    }

    /// Fulfils the given quantities (or everything held when `lines` is `None`).
    /// On error the reservation is unchanged.
    pub fn fulfil(&mut self, lines: Option<&[(Sku, LineQuantity)]>) -> Result<Taken, DomainError> {
        let taken = self.take(lines, |line, q| line.fulfilled += q)?;
        if self.held() == 0 && !taken.is_empty() {
            self.status = self.ended_status(ReleaseKind::Requested);
        }
        Ok(taken)
    }

    fn ended_status(&self, kind: ReleaseKind) -> ReservationStatus {
        if self.lines.iter().any(|l| l.fulfilled > 0) {
            ReservationStatus::Fulfilled
        } else if kind == ReleaseKind::Expiry {
            ReservationStatus::Expired
        } else {
            ReservationStatus::Released
        }
    }

    /// Works out what to take from which line, checks it all, then applies it, so a
    /// refused request leaves every line as it was. A reservation that holds nothing
    /// takes nothing and is not an error: that is what makes release and fulfil safe to
    /// retry.
    fn take(
        &mut self,
        lines: Option<&[(Sku, LineQuantity)]>,
        apply: impl Fn(&mut ReservationLine, i64),
    ) -> Result<Taken, DomainError> {
        if self.held() == 0 {
            return Ok(Vec::new());
        }
        let plan: Vec<(usize, i64)> = match lines {
            None => self
                .lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.held() > 0)
                .map(|(i, l)| (i, l.held()))
                .collect(),
            Some(requested) => {
                let mut plan = Vec::with_capacity(requested.len());
                for (sku, quantity) in requested {
                    let Some(index) = self.lines.iter().position(|l| &l.sku == sku) else {
                        return Err(DomainError::invalid_state(format!(
                            "the reservation has no line for sku {sku}"
                        )));
                    };
                    let held = self.lines[index].held();
                    if quantity.get() > held {
                        return Err(DomainError::invalid_state(format!(
                            "sku {sku}: {} requested but only {held} held",
                            quantity.get()
                        )));
                    }
                    plan.push((index, quantity.get()));
                }
                plan
            }
        };
        let mut taken = Vec::with_capacity(plan.len());
        for (index, quantity) in plan {
            let line = &mut self.lines[index];
            apply(line, quantity);
            taken.push((line.sku.clone(), quantity));
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

    fn reservation() -> Reservation {
        Reservation {
            reservation_id: Uuid::nil(),
            order_id: OrderId::parse("O-1").unwrap(),
            store_id: StoreId::parse("S1").unwrap(),
            status: ReservationStatus::Active,
            lines: vec![
                ReservationLine::new(sku("A"), q(3)),
                ReservationLine::new(sku("B"), q(1)),
            ],
            expires_at: None,
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_partial_release_keeps_the_reservation_active() {
        let mut r = reservation();
        let taken = r
            .release(Some(&[(sku("A"), q(2))]), ReleaseKind::Requested)
            .unwrap();
        assert_eq!(taken, vec![(sku("A"), 2)]);
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
            .release(
                Some(&[(sku("B"), q(1)), (sku("A"), q(4))]),
                ReleaseKind::Requested,
            )
            .unwrap_err();
        assert!(matches!(err, DomainError::InvalidState(_)));
        assert_eq!(r, before);
        assert!(r
            .release(Some(&[(sku("Z"), q(1))]), ReleaseKind::Requested)
            .is_err());
    }

    #[test]
    fn fulfilling_part_then_releasing_the_rest_is_fulfilled() {
        let mut r = reservation();
        r.fulfil(Some(&[(sku("A"), q(3))])).unwrap();
        r.release(None, ReleaseKind::Requested).unwrap();
        assert_eq!(r.status, ReservationStatus::Fulfilled);
    }

    #[test]
    fn expiry_ends_as_expired() {
        let mut r = reservation();
        r.release(None, ReleaseKind::Expiry).unwrap();
        assert_eq!(r.status, ReservationStatus::Expired);
    }
}
