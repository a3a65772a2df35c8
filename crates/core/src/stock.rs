//! Stock levels of one (store, sku) and the transitions every command is made of.

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// The stock of one (store, sku). `on_hand` and `reserved` never go below zero;
/// `available = on_hand - reserved` may (a shortage, after a stock-out of reserved units).
/// `version` rises by exactly one per change, so consumers can order and gap-check events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StockLevel {
    on_hand: i64,
    reserved: i64,
    version: i64,
}

/// A stored level broke an invariant (only a corrupt database can produce this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stock level out of range: on_hand {on_hand}, reserved {reserved}, version {version}")]
pub struct InvalidLevel {
    pub on_hand: i64,
    pub reserved: i64,
    pub version: i64,
}

impl StockLevel {
    /// Rebuilds a level read from storage, checking its invariants.
    pub fn new(on_hand: i64, reserved: i64, version: i64) -> Result<Self, InvalidLevel> {
        if on_hand < 0 || reserved < 0 || version < 0 {
            return Err(InvalidLevel {
                on_hand,
                reserved,
                version,
            });
        }
        Ok(Self {
            on_hand,
            reserved,
            version,
        })
    }

    pub fn on_hand(&self) -> i64 {
        self.on_hand
    }

    pub fn reserved(&self) -> i64 {
        self.reserved
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }

    /// How far `available` is below zero (0 when there is no shortage).
    pub fn shortage(&self) -> i64 {
        (-self.available()).max(0)
    }

    fn next(&self, on_hand: i64, reserved: i64) -> Self {
        Self {
            on_hand,
            reserved,
            version: self.version + 1,
        }
    }

    /// Holds `quantity` for an order; refused unless that much is available.
    pub fn reserve(&self, quantity: i64) -> Result<Self, i64> {
        if quantity <= 0 || self.available() < quantity {
            return Err(self.available());
        }
        Ok(self.next(self.on_hand, self.reserved + quantity))
    }

    /// Gives back `quantity` that a reservation held.
    pub fn release(&self, quantity: i64) -> Result<Self, DomainError> {
        if quantity <= 0 || quantity > self.reserved {
            return Err(DomainError::invalid_state(format!(
                "cannot release {quantity}: only {} reserved",
                self.reserved
            )));
        }
        Ok(self.next(self.on_hand, self.reserved - quantity))
    }

    /// Ships `quantity` that a reservation held: it leaves both `reserved` and `on_hand`.
    /// Refused when a shortage left fewer units on hand than are being shipped.
    pub fn fulfil(&self, quantity: i64) -> Result<Self, DomainError> {
        if quantity <= 0 || quantity > self.reserved {
            return Err(DomainError::invalid_state(format!(
                "cannot fulfil {quantity}: only {} reserved",
                self.reserved
            )));
        }
        if quantity > self.on_hand {
            return Err(DomainError::InsufficientOnHand {
                on_hand: self.on_hand,
                requested: quantity,
            });
        }
        Ok(self.next(self.on_hand - quantity, self.reserved - quantity))
    }

    /// Changes `on_hand` by `delta` (physical reality: may create a shortage, never a
    /// negative count).
    pub fn adjust(&self, delta: i64) -> Result<Self, DomainError> {
        let on_hand = self.on_hand.checked_add(delta).unwrap_or(-1);
        if on_hand < 0 {
            return Err(DomainError::InsufficientOnHand {
                on_hand: self.on_hand,
                requested: delta.saturating_neg(),
            });
        }
        Ok(self.next(on_hand, self.reserved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(on_hand: i64, reserved: i64) -> StockLevel {
        StockLevel::new(on_hand, reserved, 7).unwrap()
    }

    #[test]
    fn reserving_more_than_available_is_refused() {
        assert_eq!(level(10, 8).reserve(3), Err(2));
        let after = level(10, 8).reserve(2).unwrap();
        assert_eq!((after.available(), after.version()), (0, 8));
    }

    #[test]
    fn releasing_more_than_reserved_is_an_invalid_state() {
        assert!(level(10, 2).release(3).is_err());
        assert_eq!(level(10, 2).release(2).unwrap().reserved(), 0);
    }

    #[test]
    fn fulfilling_drops_on_hand_and_reserved() {
        let after = level(10, 4).fulfil(3).unwrap();
        assert_eq!((after.on_hand(), after.reserved()), (7, 1));
    }

    #[test]
    fn fulfilling_more_than_is_on_hand_is_refused() {
        assert!(matches!(
            level(2, 4).fulfil(3),
            Err(DomainError::InsufficientOnHand { .. })
        ));
    }

    #[test]
    fn a_stock_out_may_create_a_shortage_but_never_negative_on_hand() {
        let after = level(10, 8).adjust(-5).unwrap();
        assert_eq!((after.available(), after.shortage()), (-3, 3));
        assert!(level(10, 8).adjust(-11).is_err());
        assert!(level(10, 0).adjust(i64::MIN).is_err());
    }

    #[test]
    fn stored_levels_are_checked() {
        assert!(StockLevel::new(-1, 0, 0).is_err());
        assert!(StockLevel::new(0, -1, 0).is_err());
    }
}
