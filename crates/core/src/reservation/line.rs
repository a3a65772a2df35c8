//! One line of a reservation and its allocations, with the counters every
//! transition of [`Reservation`](super::Reservation) keeps in step, and the checks
//! that make a stored one trustworthy.

use crate::error::DomainError;
use crate::ids::{Sku, StoreId};
use crate::quantity::LineQuantity;

/// Why a reservation (or one of its lines or allocations) cannot be what it claims:
/// the counters break `released + fulfilled <= quantity` or `short <= held`, a line
/// has no allocation, the status does not match what is held. Only stored data or a
/// bug can produce one; the ledger reports it as a corrupt row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidReservation(String);

pub(super) fn invalid(detail: impl Into<String>) -> InvalidReservation {
    InvalidReservation(detail.into())
}

/// Where one line (or part of it) is held: one location, with the same counters as
/// the line. `held = quantity - released - fulfilled`.
///
/// Valid by construction: `quantity >= 1`, `released, fulfilled >= 0`,
/// `released + fulfilled <= quantity` and `0 <= short <= held`. The fields are
/// private; a value is made by [`Allocated::new`], rebuilt from storage by
/// [`Allocated::restore`] (which checks), and changed only by the transitions of
/// [`Reservation`](super::Reservation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub(super) store_id: StoreId,
    pub(super) quantity: i64,
    pub(super) released: i64,
    pub(super) fulfilled: i64,
    /// Units of this allocation the location no longer has on hand and that could not
    /// be moved elsewhere (reallocation, channels.md); 0 when fully covered.
    pub(super) short: i64,
}

impl Allocated {
    /// A new allocation holding `quantity` at `store_id`.
    pub fn new(store_id: StoreId, quantity: LineQuantity) -> Self {
        Self {
            store_id,
            quantity: quantity.get(),
            released: 0,
            fulfilled: 0,
            short: 0,
        }
    }

    /// An allocation as it was stored, checked.
    pub fn restore(
        store_id: StoreId,
        quantity: i64,
        released: i64,
        fulfilled: i64,
        short: i64,
    ) -> Result<Self, InvalidReservation> {
        let a = Self {
            store_id,
            quantity,
            released,
            fulfilled,
            short,
        };
        a.check()?;
        Ok(a)
    }

    /// The allocation's invariant.
    pub(super) fn check(&self) -> Result<(), InvalidReservation> {
        let Self {
            store_id,
            quantity,
            released,
            fulfilled,
            short,
        } = self;
        if *quantity < 1 || *released < 0 || *fulfilled < 0 || *short < 0 {
            return Err(invalid(format!(
                "allocation at {store_id}: quantity {quantity}, released {released}, \
                 fulfilled {fulfilled}, short {short} (a quantity of at least 1, no negative counter)"
            )));
        }
        if released + fulfilled > *quantity {
            return Err(invalid(format!(
                "allocation at {store_id}: released {released} + fulfilled {fulfilled} \
                 exceeds quantity {quantity}"
            )));
        }
        if *short > self.held() {
            return Err(invalid(format!(
                "allocation at {store_id}: short {short} exceeds held {}",
                self.held()
            )));
        }
        Ok(())
    }

    pub fn store_id(&self) -> &StoreId {
        &self.store_id
    }

    pub fn quantity(&self) -> i64 {
        self.quantity
    }

    pub fn released(&self) -> i64 {
        self.released
    }

    pub fn fulfilled(&self) -> i64 {
        self.fulfilled
    }

    pub fn short(&self) -> i64 {
        self.short
    }

    pub fn held(&self) -> i64 {
        self.quantity - self.released - self.fulfilled
    }
}

/// One SKU of a reservation: where it is held, one allocation per location (one for
/// a store-direct reservation; one or more, in allocation order, for a channel's).
/// The line's counters are the sums of its allocations'. Never empty, and never two
/// allocations at one location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationLine {
    pub(super) sku: Sku,
    pub(super) allocations: Vec<Allocated>,
}

impl ReservationLine {
    /// A new line held at one location.
    pub fn new(store: StoreId, sku: Sku, quantity: LineQuantity) -> Self {
        Self {
            sku,
            allocations: vec![Allocated::new(store, quantity)],
        }
    }

    /// A line made of its allocations (loaded from storage, or just allocated),
    /// checked.
    pub fn allocated(sku: Sku, allocations: Vec<Allocated>) -> Result<Self, InvalidReservation> {
        let line = Self { sku, allocations };
        line.check()?;
        Ok(line)
    }

    pub(super) fn check(&self) -> Result<(), InvalidReservation> {
        let sku = &self.sku;
        if self.allocations.is_empty() {
            return Err(invalid(format!("line {sku} has no allocation")));
        }
        for (j, a) in self.allocations.iter().enumerate() {
            a.check().map_err(|e| invalid(format!("line {sku}: {e}")))?;
            if self.allocations[..j]
                .iter()
                .any(|b| b.store_id == a.store_id)
            {
                return Err(invalid(format!(
                    "line {sku} is allocated twice at store {}",
                    a.store_id
                )));
            }
        }
        Ok(())
    }

    pub fn sku(&self) -> &Sku {
        &self.sku
    }

    /// The allocations, in allocation order.
    pub fn allocations(&self) -> &[Allocated] {
        &self.allocations
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
    pub(super) fn pick(
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

/// Which allocation of a line a release or fulfilment without a `store_id` takes
/// from first (channels.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum From {
    /// Allocation order: a fulfilment ships from where the order was meant to.
    First,
    /// Reverse allocation order: a release gives back the least preferred first.
    Last,
}
