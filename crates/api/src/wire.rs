//! Request and response bodies of the v1 API. Requests deserialize straight into
//! validated domain types (a bad value fails with its JSON path) and refuse unknown
//! fields; responses are plain views built from ledger answers.

use chrono::{DateTime, Utc};
use invsync_core::channel::{Allocation, Channel, Split};
use invsync_core::{
    Adjust, AdjustReason, Change, ChannelId, Delta, ExternalRef, LineQuantity, Lines, OnHandCount,
    OrderId, ReleaseReason, Reservation, ReservationStatus, Sku, StoreId, TtlSeconds,
};
use invsync_ledger::{AdjustmentOutcome, StockRow};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// Most items in one adjustment batch.
pub(crate) const MAX_BATCH: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LineBody {
    #[schema(value_type = crate::schema::Identifier)]
    pub(crate) sku: Sku,
    #[schema(value_type = i64, minimum = 1, maximum = 1000000)]
    pub(crate) quantity: LineQuantity,
}

pub(crate) fn lines(body: Vec<LineBody>) -> Vec<(Sku, LineQuantity)> {
    body.into_iter().map(|l| (l.sku, l.quantity)).collect()
}

/// One line of a release or fulfilment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettleLineBody {
    #[schema(value_type = crate::schema::Identifier)]
    pub(crate) sku: Sku,
    #[schema(value_type = i64, minimum = 1, maximum = 1000000)]
    pub(crate) quantity: LineQuantity,
    /// Acts on the line's allocation at this location only (fulfil from the location
    /// that shipped); without it a release takes from the allocations in reverse
    /// allocation order, a fulfilment in allocation order.
    #[schema(value_type = Option<crate::schema::Identifier>)]
    pub(crate) store_id: Option<StoreId>,
}

/// A release's or fulfilment's lines as the validated domain type (a SKU named twice
/// is a 400 naming the line, before anything is written).
pub(crate) fn settle_lines(body: Option<Vec<SettleLineBody>>) -> Result<Option<Lines>, ApiError> {
    let Some(body) = body else {
        return Ok(None);
    };
    let (lines, stores) = body
        .into_iter()
        .map(|l| ((l.sku, l.quantity), l.store_id))
        .unzip();
    Ok(Some(Lines::at_stores(lines, stores, "lines")?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReserveBody {
    #[schema(value_type = crate::schema::Identifier)]
    pub(crate) order_id: OrderId,
    /// The store to reserve at; exactly one of `store_id` and `channel`.
    #[schema(value_type = Option<crate::schema::Identifier>)]
    pub(crate) store_id: Option<StoreId>,
    /// The channel whose locations the ledger allocates the lines to (by its
    /// `allocation` and `split`, never into safety stock); exactly one of `store_id`
    /// and `channel`.
    #[schema(value_type = Option<crate::schema::Identifier>)]
    pub(crate) channel: Option<ChannelId>,
    /// 1 to 500 lines, each SKU at most once. All are reserved or none.
    #[schema(min_items = 1, max_items = 500)]
    pub(crate) lines: Vec<LineBody>,
    /// Releases the reservation with reason `expired` unless fulfilled by then.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 604800)]
    pub(crate) ttl_seconds: Option<TtlSeconds>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseBody {
    /// What to release (1 to 500 lines, each SKU at most once); everything still
    /// held when absent.
    #[schema(min_items = 1, max_items = 500)]
    pub(crate) lines: Option<Vec<SettleLineBody>>,
    /// Defaults to `order_cancelled`.
    #[schema(value_type = Option<crate::schema::ReleaseReason>)]
    pub(crate) reason: Option<ReleaseReason>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FulfilBody {
    /// What to fulfil (1 to 500 lines, each SKU at most once); everything still held
    /// when absent.
    #[schema(min_items = 1, max_items = 500)]
    pub(crate) lines: Option<Vec<SettleLineBody>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdjustmentBody {
    #[schema(value_type = crate::schema::Identifier)]
    pub(crate) store_id: StoreId,
    #[schema(value_type = crate::schema::Identifier)]
    pub(crate) sku: Sku,
    /// A relative change; exactly one of `delta` and `set_on_hand`.
    #[schema(value_type = Option<i64>, minimum = -1000000000, maximum = 1000000000)]
    pub(crate) delta: Option<Delta>,
    /// An absolute count; exactly one of `delta` and `set_on_hand`.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1000000000)]
    pub(crate) set_on_hand: Option<OnHandCount>,
    #[schema(value_type = crate::schema::AdjustReason)]
    pub(crate) reason: AdjustReason,
    /// Makes the adjustment idempotent: a repeat gets the original answer.
    #[schema(value_type = Option<crate::schema::Identifier>)]
    pub(crate) external_ref: Option<ExternalRef>,
    /// Compare-and-set: refused with `version_conflict` unless the row is at this version.
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "invsync_core::optional_integer")]
    pub(crate) if_version: Option<i64>,
    /// The channel the change happened in (a till sale: `pos-S1`); carried by the
    /// event. Not checked against configured channels.
    #[schema(value_type = Option<crate::schema::Identifier>)]
    pub(crate) channel: Option<ChannelId>,
}

impl AdjustmentBody {
    /// Checks the rules that span fields; `prefix` locates the item in a batch.
    pub(crate) fn into_command(self, prefix: &str) -> Result<Adjust, ApiError> {
        let change = match (self.delta, self.set_on_hand) {
            (Some(delta), None) => Change::Delta(delta),
            (None, Some(count)) => Change::SetOnHand(count),
            _ => {
                return Err(ApiError::invalid(
                    format!("{prefix}delta"),
                    "give exactly one of delta and set_on_hand",
                ))
            }
        };
        // A sale takes units off the shelf: only a negative delta says that.
        if self.reason == AdjustReason::Sale
            && !matches!(change, Change::Delta(d) if i64::from(d) < 0)
        {
            return Err(ApiError::invalid(
                format!("{prefix}delta"),
                "a sale takes units: give a negative delta (not set_on_hand)",
            ));
        }
        if let Some(version) = self.if_version.filter(|v| *v < 0) {
            return Err(ApiError::invalid(
                format!("{prefix}if_version"),
                format!("must be 0 or more, got {version}"),
            ));
        }
        Ok(Adjust {
            store_id: self.store_id,
            sku: self.sku,
            change,
            reason: self.reason,
            external_ref: self.external_ref,
            if_version: self.if_version,
            channel: self.channel,
            idempotency_key: None,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdjustmentBatchBody {
    /// 1 to 1,000 adjustments, each applied atomically on its own.
    #[schema(min_items = 1, max_items = 1000)]
    pub(crate) items: Vec<AdjustmentBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StockView {
    pub(crate) store_id: String,
    pub(crate) sku: String,
    pub(crate) on_hand: i64,
    pub(crate) reserved: i64,
    pub(crate) available: i64,
    pub(crate) version: i64,
    pub(crate) updated_at: DateTime<Utc>,
}

impl From<StockRow> for StockView {
    fn from(row: StockRow) -> Self {
        Self {
            store_id: row.store_id.into(),
            sku: row.sku.into(),
            on_hand: row.level.on_hand(),
            reserved: row.level.reserved(),
            available: row.level.available(),
            version: row.level.version(),
            updated_at: row.updated_at,
        }
    }
}

/// Every store's level of one SKU.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StockList {
    pub(crate) items: Vec<StockView>,
}

/// The rows with a shortage.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ShortagesView {
    /// How many rows have a shortage in all.
    pub(crate) count: i64,
    /// The largest shortages first, at most `limit`.
    pub(crate) items: Vec<StockView>,
}

/// One page of a store's levels.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StockPage {
    pub(crate) items: Vec<StockView>,
    /// The cursor of the next page (`after=`), or null on the last page.
    pub(crate) next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SnapshotView {
    pub(crate) items: Vec<StockView>,
    pub(crate) next: Option<String>,
    /// The event-log offset this page is consistent with: follow the log from here.
    pub(crate) log_offset: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AdjustmentView {
    /// Null when the adjustment changed nothing (a count equal to on_hand).
    pub(crate) event_id: Option<Uuid>,
    pub(crate) store_id: String,
    pub(crate) sku: String,
    pub(crate) on_hand: i64,
    pub(crate) reserved: i64,
    pub(crate) available: i64,
    pub(crate) version: i64,
    /// How far `available` is below zero.
    pub(crate) shortage: i64,
}

impl From<AdjustmentOutcome> for AdjustmentView {
    fn from(o: AdjustmentOutcome) -> Self {
        Self {
            event_id: o.event_id,
            store_id: o.store_id.into(),
            sku: o.sku.into(),
            on_hand: o.on_hand,
            reserved: o.reserved,
            available: o.available,
            version: o.version,
            shortage: o.shortage,
        }
    }
}

/// One answer of a batch: `{"ok": …}` or `{"error": problem}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BatchResult {
    Ok(AdjustmentView),
    Error(crate::error::Problem),
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchView {
    pub(crate) results: Vec<BatchResult>,
}

/// Where a line (or part of it) is held.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AllocationView {
    pub(crate) store_id: String,
    pub(crate) quantity: i64,
    pub(crate) released: i64,
    pub(crate) fulfilled: i64,
    /// Units held here that the location no longer has on hand and that could not be
    /// moved to another location of the channel.
    pub(crate) short: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReservationLineView {
    pub(crate) sku: String,
    pub(crate) quantity: i64,
    pub(crate) released: i64,
    pub(crate) fulfilled: i64,
    /// Where the line is held, in allocation order (one location for a store-direct
    /// reservation).
    pub(crate) allocations: Vec<AllocationView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReservationView {
    pub(crate) reservation_id: Uuid,
    pub(crate) order_id: String,
    /// The store of a store-direct reservation (absent for a channel's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) store_id: Option<String>,
    /// The channel of a channel reservation (absent for a store-direct one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) channel: Option<String>,
    #[schema(value_type = String, example = "active")]
    pub(crate) status: ReservationStatus,
    pub(crate) lines: Vec<ReservationLineView>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) created_at: DateTime<Utc>,
}

impl From<Reservation> for ReservationView {
    fn from(r: Reservation) -> Self {
        Self {
            reservation_id: r.reservation_id(),
            order_id: r.order_id().as_str().into(),
            store_id: r.store_id().map(|s| s.as_str().into()),
            channel: r.channel().map(|c| c.as_str().into()),
            status: r.status(),
            lines: r
                .lines()
                .iter()
                .map(|l| ReservationLineView {
                    quantity: l.quantity(),
                    released: l.released(),
                    fulfilled: l.fulfilled(),
                    sku: l.sku().as_str().into(),
                    allocations: l
                        .allocations()
                        .iter()
                        .map(|a| AllocationView {
                            store_id: a.store_id().as_str().into(),
                            quantity: a.quantity(),
                            released: a.released(),
                            fulfilled: a.fulfilled(),
                            short: a.short(),
                        })
                        .collect(),
                })
                .collect(),
            expires_at: r.expires_at(),
            created_at: r.created_at(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReservationList {
    pub(crate) items: Vec<ReservationView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventView {
    pub(crate) offset: i64,
    /// The CloudEvents envelope of the Inventory Sync Event v1.
    #[schema(value_type = Object)]
    pub(crate) event: Box<RawValue>,
}

/// A SKU's latest events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RecentEventsView {
    pub(crate) events: Vec<EventView>,
    /// How many of the log's latest events were searched.
    pub(crate) window: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventsView {
    pub(crate) events: Vec<EventView>,
    /// The last offset returned (or `after` when none): pass it as the next `after`.
    pub(crate) next_offset: i64,
    /// The newest offset in the log (0 when it is empty): `after = head_offset - N`
    /// reads the latest N events.
    pub(crate) head_offset: i64,
}

/// One location of a channel.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelLocationBody {
    #[schema(value_type = crate::schema::Identifier)]
    pub(crate) store_id: StoreId,
    /// With `allocation: priority`, lower numbers are tried first (default 0; ties by
    /// `store_id`).
    pub(crate) priority: Option<i32>,
    /// Units at this location the channel may never reserve (default 0).
    #[schema(minimum = 0, maximum = 1000000000)]
    pub(crate) safety_stock: Option<i64>,
}

/// A channel's configuration (channels.md).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelBody {
    /// A display name (1 to 200 bytes).
    pub(crate) name: Option<String>,
    #[schema(value_type = crate::schema::Allocation)]
    pub(crate) allocation: Allocation,
    #[schema(value_type = crate::schema::Split)]
    pub(crate) split: Split,
    /// 1 to 100 locations, each store at most once. Unknown stores are allowed: a
    /// location may get stock later.
    #[schema(min_items = 1, max_items = 100)]
    pub(crate) locations: Vec<ChannelLocationBody>,
    /// Compare-and-set: applies only if the channel is at this version (0: only if it
    /// does not exist yet).
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "invsync_core::optional_integer")]
    pub(crate) if_version: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChannelLocationView {
    pub(crate) store_id: String,
    pub(crate) priority: i32,
    pub(crate) safety_stock: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChannelView {
    pub(crate) channel_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[schema(value_type = crate::schema::Allocation)]
    pub(crate) allocation: Allocation,
    #[schema(value_type = crate::schema::Split)]
    pub(crate) split: Split,
    pub(crate) locations: Vec<ChannelLocationView>,
    /// Bumped by every change; pass it as `if_version` to change it safely.
    pub(crate) version: i64,
}

impl From<Channel> for ChannelView {
    fn from(c: Channel) -> Self {
        Self {
            channel_id: c.channel_id.into(),
            name: c.config.name().map(str::to_owned),
            allocation: c.config.allocation(),
            split: c.config.split(),
            locations: c
                .config
                .locations()
                .iter()
                .map(|l| ChannelLocationView {
                    store_id: l.store_id.to_string(),
                    priority: l.priority,
                    safety_stock: l.safety_stock,
                })
                .collect(),
            version: c.version,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChannelList {
    pub(crate) items: Vec<ChannelView>,
}

/// One per-SKU safety stock of a channel at a location.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SafetyItemBody {
    #[schema(value_type = crate::schema::Identifier)]
    pub(crate) store_id: StoreId,
    #[schema(value_type = crate::schema::Identifier)]
    pub(crate) sku: Sku,
    /// The buffer (0 to 1e9); `null` removes the override.
    #[schema(minimum = 0, maximum = 1000000000)]
    pub(crate) safety_stock: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SafetyStockBody {
    /// 1 to 1,000 items, each (store, sku) at most once.
    #[schema(min_items = 1, max_items = 1000)]
    pub(crate) items: Vec<SafetyItemBody>,
}

/// One per-SKU safety-stock override in force.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SafetyOverrideView {
    #[schema(value_type = crate::schema::Identifier)]
    pub(crate) store_id: String,
    #[schema(value_type = crate::schema::Identifier)]
    pub(crate) sku: String,
    pub(crate) safety_stock: i64,
    /// Rises by one with every change of this (channel, store, sku)'s override.
    pub(crate) version: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SafetyOverrideList {
    /// The channel's overrides in force, by (store, sku); removed ones are left out.
    pub(crate) items: Vec<SafetyOverrideView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SafetyStockView {
    /// How many items changed something (an item repeating the value in force changes
    /// nothing and records no event).
    pub(crate) applied: usize,
}
