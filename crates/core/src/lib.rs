//! invsync's domain: the types and rules of inventory reservation and synchronization,
//! with no I/O (no tokio, no SQL, no HTTP). Every other crate speaks these types.
//!
//! # Layout
//!
//! - [`ids`]: validated identifiers (`StoreId`, `Sku`, `OrderId`, …).
//! - [`quantity`]: validated quantities with the limits of the API.
//! - [`stock`]: `StockLevel` and its transitions (reserve, release, fulfil, adjust).
//! - [`reservation`]: reservations and their per-line state machine.
//! - [`command`]: the commands the ledger accepts, with cross-field checks and
//!   idempotency fingerprints.
//! - [`channel`]: channels, their validated configuration, safety stock and the pure
//!   allocation of an order to a channel's locations.
//! - [`event`]: the Inventory Sync Event v1, the channel configuration events, and
//!   their CloudEvents envelopes.
//! - [`error`]: business outcomes that refuse a command.
#![forbid(unsafe_code)]

pub mod channel;
pub mod command;
pub mod error;
pub mod event;
pub mod ids;
pub mod quantity;
pub mod reservation;
pub mod stock;

pub use command::{
    record_key, settle_fingerprint, Adjust, AdjustReason, Change, Lines, ReleaseReason,
    RequestError, Reserve, Target, WriteRecord,
};
pub use error::{DomainError, ShortLine};
pub use event::{
    Cause, ChannelUpdatedV1, CloudEvent, EventType, InventoryEventV1, LogRecord, Reason,
    SafetyStockSetV1, CHANNEL_UPDATED_TYPE, SAFETY_STOCK_SET_TYPE,
};
pub use ids::{
    ChannelId, ExternalRef, IdError, IdempotencyKey, OrderId, Sku, StoreId, MAX_ID_BYTES,
};
pub use quantity::{
    optional_integer, Delta, Integer, LineQuantity, OnHandCount, RangeError, TtlSeconds,
};
pub use reservation::{
    Allocated, InvalidReservation, ReleaseKind, Reservation, ReservationLine, ReservationStatus,
    StoredReservation,
};
pub use stock::StockLevel;
