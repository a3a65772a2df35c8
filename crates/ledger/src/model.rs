//! What the ledger answers: read models and command outcomes.

use chrono::{DateTime, Utc};
use invsync_core::{Reservation, Sku, StockLevel, StoreId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One (store, sku) row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRow {
    pub store_id: StoreId,
    pub sku: Sku,
    pub level: StockLevel,
    pub updated_at: DateTime<Utc>,
}

/// A page of stock rows and the event-log offset they are consistent with.
#[derive(Debug, Clone)]
pub struct SnapshotPage {
    pub items: Vec<StockRow>,
    /// Every event up to this offset is reflected in `items`. On SQLite none after it
    /// is; on PostgreSQL, changes whose events the relay has not yet moved into the
    /// log may be reflected too (they will get higher offsets, and their versions are
    /// not above the rows'). Either way a consumer that loads the page and then
    /// follows the log from here, skipping events whose version is not above its
    /// own, converges.
    pub log_offset: i64,
}

/// The answer to an adjustment; stored with its `external_ref` so that a repeat gets
/// the very same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustmentOutcome {
    /// `None` when the adjustment changed nothing (a count equal to `on_hand`).
    pub event_id: Option<Uuid>,
    pub store_id: StoreId,
    pub sku: Sku,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub version: i64,
    pub shortage: i64,
}

/// The answer to a reservation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveOutcome {
    pub reservation: Reservation,
    /// `false` when this was a repeat answered from the original reservation.
    pub created: bool,
}

/// One entry of the event log: its gapless offset and the CloudEvents envelope as
/// stored (JSON text), handed out without re-encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    pub offset: i64,
    pub envelope: String,
}

#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<LoggedEvent>,
    /// The smallest offset still in the log (the next one to be written when empty).
    pub oldest_offset: i64,
    /// The largest offset written so far (0 when nothing was ever written).
    pub last_offset: i64,
}

impl EventPage {
    /// Whether the event after `after` was purged by retention, so a reader at `after`
    /// has lost events. A position at or beyond the head is never behind: it just has
    /// nothing yet. Written without `after + 1`, which overflows at `i64::MAX`.
    pub fn purged_after(&self, after: i64) -> bool {
        after < self.oldest_offset.saturating_sub(1)
    }
}

/// Every channel and every per-SKU safety-stock override (removed ones too, with
/// their versions): what a projection rebuilt from a snapshot needs beside the stock
/// rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelSnapshot {
    pub channels: Vec<invsync_core::channel::Channel>,
    pub overrides: Vec<OverrideRow>,
}

/// One stored override: `safety_stock: None` where it was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideRow {
    pub channel_id: invsync_core::ChannelId,
    pub store_id: StoreId,
    pub sku: Sku,
    pub safety_stock: Option<i64>,
    pub version: i64,
}
