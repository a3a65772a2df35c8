//! Channels and their per-SKU safety stock.

use invsync_core::channel::{Channel, ChannelConfig, SafetyOverrides};
use invsync_core::{ChannelId, ChannelUpdatedV1, DomainError, SafetyStockSetV1, Sku};
use uuid::Uuid;

use super::{Engine, Tx};
use crate::error::LedgerError;

impl<T: Tx> Engine<'_, T> {
    /// Creates or replaces a channel: compare-and-set on `if_version` (0 for "must
    /// not exist yet"), a new version and one `CHANNEL_UPDATED` event. A PUT of the
    /// configuration the channel already has changes nothing and records nothing.
    pub(crate) fn put_channel(
        &mut self,
        id: &ChannelId,
        config: ChannelConfig,
        if_version: Option<i64>,
    ) -> Result<Channel, LedgerError> {
        let current = self.tx.channel(id)?;
        let version = current.as_ref().map_or(0, |c| c.version);
        if let Some(expected) = if_version {
            if expected != version {
                return Err(DomainError::VersionConflict {
                    expected,
                    actual: version,
                }
                .into());
            }
        }
        if let Some(current) = current {
            if current.config == config {
                return Ok(current);
            }
        }
        let channel = Channel {
            channel_id: id.clone(),
            version: version + 1,
            config,
        };
        self.tx.put_channel(&channel, self.now)?;
        let event = ChannelUpdatedV1::new(Uuid::now_v7(), self.now, channel.clone());
        let record = event.record(self.tx.source());
        self.tx.append(record)?;
        Ok(channel)
    }

    /// Sets (or removes) per-SKU safety-stock overrides of a channel, one
    /// `SAFETY_STOCK_SET` event each; an item that changes nothing records nothing.
    /// Returns how many changed.
    pub(crate) fn set_safety_stock(
        &mut self,
        id: &ChannelId,
        items: &SafetyOverrides,
    ) -> Result<usize, LedgerError> {
        if self.tx.channel(id)?.is_none() {
            return Err(DomainError::NotFound("channel").into());
        }
        let mut skus: Vec<Sku> = items.iter().map(|i| i.sku.clone()).collect();
        skus.sort();
        skus.dedup();
        let current = self.tx.safety_overrides(id, &skus)?;
        let mut applied = 0;
        for item in items.iter() {
            let key = (item.store_id.clone(), item.sku.clone());
            let (value, version) = current.get(&key).copied().unwrap_or((None, 0));
            if value == item.safety_stock {
                continue;
            }
            self.tx
                .put_safety_override(id, item, version + 1, self.now)?;
            let event = SafetyStockSetV1 {
                schema_version: 1,
                event_id: Uuid::now_v7(),
                event_type: SafetyStockSetV1::EVENT_TYPE.to_owned(),
                channel_id: id.clone(),
                store_id: item.store_id.clone(),
                product_sku: item.sku.clone(),
                safety_stock: item.safety_stock,
                version: version + 1,
                occurred_at: self.now,
            };
            let record = event.record(self.tx.source());
            self.tx.append(record)?;
            applied += 1;
        }
        Ok(applied)
    }
}
