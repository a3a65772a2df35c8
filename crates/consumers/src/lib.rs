//! invsync's consumers: the runtime every consumer uses, and the built-in ones — the
//! storefront projection (the Ecommerce read model) and the external-IMS webhook
//! connector.
//!
//! # Layout
//!
//! - [`runtime`]: reads the log, deduplicates, delivers per SKU with retries, commits
//!   view + marks + checkpoint in one transaction, dead letters, replay, redrive.
//! - [`group`]: several processes sharing one consumer's partitions.
//! - [`source`]: where events come from — the ledger's log, or a bus.
//! - [`store`]: a consumer's own SQLite file (checkpoint, marks, dead letters).
//! - [`storefront`]: availability per store and SKU, read by the API.
//! - [`webhook`]: signed CloudEvents POSTs to an external system.
//!
//! Architecture invariant: a consumer never writes to the ledger; its state lives in
//! its own store, so it keeps answering while the ledger is down.
#![forbid(unsafe_code)]

mod retry;

/// An event of S1/A at `version` with `available` on hand, for unit tests.
#[cfg(test)]
pub(crate) fn test_event(version: i64, available: i64) -> Incoming {
    test_event_of("A", version, available)
}

/// An event of S1/`sku` at `version` with `available` on hand, for unit tests.
#[cfg(test)]
pub(crate) fn test_event_of(sku: &str, version: i64, available: i64) -> Incoming {
    use invsync_core::{Cause, EventType, InventoryEventV1, Reason, Sku, StockLevel, StoreId};
    let data = InventoryEventV1::new(
        uuid::Uuid::now_v7(),
        chrono::Utc::now(),
        StoreId::parse("S1").unwrap_or_else(|e| panic!("{e}")),
        Sku::parse(sku).unwrap_or_else(|e| panic!("{e}")),
        Cause {
            event_type: EventType::Adjusted,
            reason: Reason::StockIn,
            quantity: 1,
            order_id: None,
            reservation_id: None,
            external_ref: None,
            channel: None,
        },
        StockLevel::new(available, 0, version).unwrap_or_else(|e| panic!("{e}")),
    );
    Incoming {
        offset: version,
        envelope: data.to_envelope("invsync://test").to_json(),
        event: data,
    }
}
mod error;
pub mod group;
mod redrive;
pub mod runtime;
pub mod source;
mod stats;
pub mod store;
pub mod storefront;
pub mod webhook;

use async_trait::async_trait;
use invsync_core::InventoryEventV1;

pub use error::{ConsumerError, SourceError};
pub use redrive::{redrive, RedriveDecision};
pub use retry::RetryPolicy;
pub use runtime::{
    start, ConsumerConfig, ConsumerHandle, ConsumerStatus, ControlError, Partition, ReplayFrom,
    SharedPosition, Superseded,
};
pub use source::{DeadLetterNote, EventSource, LedgerSource, PartitionSource};
pub use store::DeadLetter;

/// Why a delivery failed: decides whether it is retried without end or dead-lettered
/// after a few attempts.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// May succeed later (receiver down, 5xx, timeout).
    #[error("{0}")]
    Transient(String),
    /// Transient, and the receiver said when to come back (`Retry-After` on a 429 or
    /// 503): the next attempt waits at least that long (at most 10 minutes).
    #[error("{error} (retry after {after:?})")]
    Later {
        error: String,
        after: std::time::Duration,
    },
    /// Will not succeed as it is (receiver refuses the event).
    #[error("{0}")]
    Permanent(String),
}

/// An event read from the log, validated.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub offset: i64,
    /// The envelope exactly as stored: what a webhook sends and signs.
    pub envelope: String,
    pub event: InventoryEventV1,
}

/// What a consumer does with each event: an external effect (`deliver`, per SKU in
/// version order), the availability view kept in the consumer's own store, or both.
/// The runtime records, in one transaction of that store, the view's change, the
/// dedup marks and the checkpoint; the SQL lives in [`store`] alone.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Whether `deliver` has an external effect (skips the per-SKU machinery if not).
    fn delivers(&self) -> bool {
        false
    }

    /// Whether this event is for this sink at all; one it does not want is passed
    /// over as if delivered (a webhook endpoint subscribed to some event types).
    fn wants(&self, _event: &InventoryEventV1) -> bool {
        true
    }

    /// The external effect. May be called again for an event already delivered
    /// (after a crash before the commit): receivers deduplicate by event id.
    async fn deliver(&self, _event: &Incoming) -> Result<(), Failure> {
        Ok(())
    }

    /// [`deliver`](Self::deliver) by a consumer that works under a lease `term` (a
    /// shared endpoint, a partition): a sink that can tell its receiver the term's
    /// lease and epoch (a fencing token) does so.
    async fn deliver_under(
        &self,
        event: &Incoming,
        _term: Option<&invsync_ledger::Term>,
    ) -> Result<(), Failure> {
        self.deliver(event).await
    }

    /// Whether the consumer keeps the availability view (the storefront projection):
    /// every event is applied to it, version-guarded, and it is rebuilt from a ledger
    /// snapshot on replay or when the consumer fell behind retention, rather than
    /// re-delivered from an offset.
    fn keeps_view(&self) -> bool {
        false
    }
}
