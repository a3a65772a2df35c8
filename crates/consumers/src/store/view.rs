//! The availability view a view-keeping consumer (the storefront) holds: stock
//! levels and the channel configuration, each version-guarded.

use chrono::{DateTime, Utc};
use invsync_core::channel::Channel;
use invsync_core::event::EnvelopeError;
use invsync_core::{
    ChannelUpdatedV1, InventoryEventV1, SafetyStockSetV1, CHANNEL_UPDATED_TYPE,
    SAFETY_STOCK_SET_TYPE,
};
use invsync_ledger::{ChannelSnapshot, StockRow};
use rusqlite::{params, Transaction};
use serde::Serialize;

use super::micros;

/// Applies an event to the availability view, unless the view already holds that
/// version of the row or a newer one.
pub(crate) fn view_apply(tx: &Transaction<'_>, e: &InventoryEventV1) -> rusqlite::Result<()> {
    view_upsert(
        tx,
        e.product_sku.as_str(),
        e.store_id.as_str(),
        (e.on_hand, e.reserved, e.available, e.version),
        e.occurred_at,
    )
}

/// Empties the view before a rebuild.
pub(crate) fn view_reset(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM availability", []).map(|_| ())
}

/// Loads one ledger snapshot row into the emptied view.
pub(crate) fn view_load(tx: &Transaction<'_>, row: &StockRow) -> rusqlite::Result<()> {
    let l = row.level;
    view_upsert(
        tx,
        row.sku.as_str(),
        row.store_id.as_str(),
        (l.on_hand(), l.reserved(), l.available(), l.version()),
        row.updated_at,
    )
}

/// Writes a level unless the view already holds that version or a newer one.
fn view_upsert(
    tx: &Transaction<'_>,
    sku: &str,
    store: &str,
    (on_hand, reserved, available, version): (i64, i64, i64, i64),
    at: DateTime<Utc>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO availability (sku, store_id, on_hand, reserved, available, version, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (sku, store_id) DO UPDATE SET on_hand = excluded.on_hand,
             reserved = excluded.reserved, available = excluded.available,
             version = excluded.version, updated_at = excluded.updated_at
         WHERE excluded.version > availability.version",
    )?
    .execute(params![sku, store, on_hand, reserved, available, version, micros(at)])?;
    Ok(())
}

/// A configuration event a view applies (channels.md).
#[derive(Debug, Clone)]
pub(crate) enum ConfigEvent {
    Channel(ChannelUpdatedV1),
    Safety(SafetyStockSetV1),
}

impl ConfigEvent {
    /// Parses a configuration event of CloudEvents type `kind`; `None` for a type
    /// that is not one.
    pub(crate) fn parse(kind: &str, bytes: &[u8]) -> Option<Result<Self, EnvelopeError>> {
        match kind {
            CHANNEL_UPDATED_TYPE => Some(ChannelUpdatedV1::parse(bytes).map(Self::Channel)),
            SAFETY_STOCK_SET_TYPE => Some(SafetyStockSetV1::parse(bytes).map(Self::Safety)),
            _ => None,
        }
    }
}

/// Applies a configuration event unless the view holds that version or a newer one.
pub(crate) fn config_apply(tx: &Transaction<'_>, event: &ConfigEvent) -> rusqlite::Result<()> {
    match event {
        ConfigEvent::Channel(e) => channel_upsert(tx, &e.channel),
        ConfigEvent::Safety(e) => safety_upsert(
            tx,
            e.channel_id.as_str(),
            e.store_id.as_str(),
            e.product_sku.as_str(),
            e.safety_stock,
            e.version,
        ),
    }
}

fn channel_upsert(tx: &Transaction<'_>, c: &Channel) -> rusqlite::Result<()> {
    let config = serde_json::to_string(&c.config).unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO view_channels (channel_id, version, config) VALUES (?1, ?2, ?3)
         ON CONFLICT (channel_id) DO UPDATE SET version = excluded.version, config = excluded.config
         WHERE excluded.version > view_channels.version",
    )?
    .execute(params![c.channel_id.as_str(), c.version, config])?;
    Ok(())
}

fn safety_upsert(
    tx: &Transaction<'_>,
    channel: &str,
    store: &str,
    sku: &str,
    safety_stock: Option<i64>,
    version: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO view_safety (channel_id, sku, store_id, safety_stock, version)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (channel_id, sku, store_id) DO UPDATE SET
             safety_stock = excluded.safety_stock, version = excluded.version
         WHERE excluded.version > view_safety.version",
    )?
    .execute(params![channel, sku, store, safety_stock, version])?;
    Ok(())
}

/// Replaces the view's channels with a ledger's (a rebuild).
pub(crate) fn config_load(
    tx: &Transaction<'_>,
    snapshot: &ChannelSnapshot,
) -> rusqlite::Result<()> {
    tx.execute_batch("DELETE FROM view_channels; DELETE FROM view_safety;")?;
    for c in &snapshot.channels {
        channel_upsert(tx, c)?;
    }
    for o in &snapshot.overrides {
        safety_upsert(
            tx,
            o.channel_id.as_str(),
            o.store_id.as_str(),
            o.sku.as_str(),
            o.safety_stock,
            o.version,
        )?;
    }
    Ok(())
}

/// A SKU's availability through a channel: per location net of the channel's safety
/// stock there, and the sum (channels.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelAvailability {
    pub sku: String,
    pub available: i64,
    pub stores: Vec<StoreAvailability>,
}

/// One store's availability of a SKU in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreAvailability {
    pub store_id: String,
    pub available: i64,
    pub version: i64,
}

/// One row of the view, for audits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewRow {
    pub store_id: String,
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub version: i64,
}
