//! The Inventory Sync Event, wire version 1 (`events.md`), and its CloudEvents 1.0
//! envelope. This module is the one place where events become JSON and back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{ChannelId, ExternalRef, OrderId, Sku, StoreId};
use crate::stock::StockLevel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Reserved,
    Released,
    Adjusted,
}

impl EventType {
    /// The CloudEvents `type` attribute of this event type in wire version 1.
    pub fn cloudevents_type(self) -> &'static str {
        match self {
            Self::Reserved => "com.invsync.inventory.reserved.v1",
            Self::Released => "com.invsync.inventory.released.v1",
            Self::Adjusted => "com.invsync.inventory.adjusted.v1",
        }
    }
}

/// Why the stock changed. Clients choose among a subset (see `command`); `OrderPlaced`,
/// `Expired`, `Fulfilled` and `Reallocated` are set by the ledger itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    OrderPlaced,
    OrderCancelled,
    OrderChanged,
    PaymentFailed,
    CustomerRequest,
    Other,
    Expired,
    Fulfilled,
    StockIn,
    StockOut,
    CycleCount,
    Damage,
    Return,
    Correction,
    /// A sale at the till (an adjustment of reason `sale`).
    Sale,
    /// A channel reservation's units moved from a location that no longer has them
    /// to another of its channel (a `RELEASED` there and a `RESERVED` here).
    Reallocated,
}

impl From<crate::command::ReleaseReason> for Reason {
    fn from(value: crate::command::ReleaseReason) -> Self {
        use crate::command::ReleaseReason as R;
        match value {
            R::OrderCancelled => Self::OrderCancelled,
            R::OrderChanged => Self::OrderChanged,
            R::PaymentFailed => Self::PaymentFailed,
            R::CustomerRequest => Self::CustomerRequest,
            R::Other => Self::Other,
        }
    }
}

impl From<crate::command::AdjustReason> for Reason {
    fn from(value: crate::command::AdjustReason) -> Self {
        use crate::command::AdjustReason as A;
        match value {
            A::StockIn => Self::StockIn,
            A::StockOut => Self::StockOut,
            A::CycleCount => Self::CycleCount,
            A::Damage => Self::Damage,
            A::Return => Self::Return,
            A::Correction => Self::Correction,
            A::Sale => Self::Sale,
        }
    }
}

/// The `data` of an Inventory Sync Event v1. It carries the change *and* the levels
/// right after it, so a consumer can converge from any one event, spot a gap (version
/// jumps by more than one) and drop stale or repeated ones (version not above its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEventV1 {
    pub schema_version: u8,
    pub event_id: Uuid,
    pub event_type: EventType,
    pub store_id: StoreId,
    pub product_sku: Sku,
    /// The signed change of the field the type names: `reserved` for RESERVED and
    /// RELEASED, `on_hand` for ADJUSTED (a fulfilment's on_hand drop).
    pub quantity: i64,
    pub order_id: Option<OrderId>,
    pub reservation_id: Option<Uuid>,
    pub reason: Reason,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
    /// The adjustment's `external_ref`, when an external system gave one (optional
    /// field added within v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
    /// The channel of the change, when it had one (a till sale; channels.md). Optional
    /// field added within v1: absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelId>,
}

/// What caused a change, beside the levels: filled in by the ledger for each event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub event_type: EventType,
    pub reason: Reason,
    pub quantity: i64,
    pub order_id: Option<OrderId>,
    pub reservation_id: Option<Uuid>,
    pub external_ref: Option<ExternalRef>,
    pub channel: Option<ChannelId>,
}

impl InventoryEventV1 {
    pub const SCHEMA_VERSION: u8 = 1;

    pub fn new(
        event_id: Uuid,
        occurred_at: DateTime<Utc>,
        store_id: StoreId,
        product_sku: Sku,
        cause: Cause,
        after: StockLevel,
    ) -> Self {
        Self {
            schema_version: Self::SCHEMA_VERSION,
            event_id,
            event_type: cause.event_type,
            store_id,
            product_sku,
            quantity: cause.quantity,
            order_id: cause.order_id,
            reservation_id: cause.reservation_id,
            reason: cause.reason,
            on_hand: after.on_hand(),
            reserved: after.reserved(),
            available: after.available(),
            version: after.version(),
            occurred_at,
            external_ref: cause.external_ref,
            channel: cause.channel,
        }
    }

    /// The levels this event leaves its (store, sku) at.
    pub fn level(&self) -> Result<StockLevel, crate::stock::InvalidLevel> {
        StockLevel::new(self.on_hand, self.reserved, self.version)
    }

    /// Wraps the event in its CloudEvents envelope; `source` names the deployment
    /// (`invsync://<deployment-name>`).
    pub fn to_envelope(&self, source: &str) -> CloudEvent {
        Envelope::new(
            self.clone(),
            (self.event_id, self.occurred_at),
            self.event_type.cloudevents_type(),
            self.product_sku.to_string(),
            self.product_sku.to_string(),
            source,
        )
    }
}

/// One entry for the event log, whatever its type: what the log's columns hold beside
/// the envelope (the stock row, or the configuration key, it is about, and that key's
/// version) and the envelope as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub event_id: Uuid,
    /// The store of a stock event; empty for a channel's configuration.
    pub store_id: String,
    /// The SKU of a stock or safety-stock event; `channel:<id>` for a channel's
    /// configuration (its partition key).
    pub key: String,
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
    pub envelope: String,
}

impl InventoryEventV1 {
    /// This event as a log entry, in its envelope.
    pub fn record(&self, source: &str) -> LogRecord {
        LogRecord {
            event_id: self.event_id,
            store_id: self.store_id.to_string(),
            key: self.product_sku.to_string(),
            version: self.version,
            occurred_at: self.occurred_at,
            envelope: self.to_envelope(source).to_json(),
        }
    }
}

/// The CloudEvents `type` of a channel's configuration change.
pub const CHANNEL_UPDATED_TYPE: &str = "com.invsync.channel.updated.v1";
/// The CloudEvents `type` of a per-SKU safety-stock override.
pub const SAFETY_STOCK_SET_TYPE: &str = "com.invsync.channel.safety_stock_set.v1";

/// `data` of `CHANNEL_UPDATED`: a channel's whole configuration after a change, so a
/// projection rebuilt from the log holds the same channels as the live one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelUpdatedV1 {
    pub schema_version: u8,
    pub event_id: Uuid,
    /// Always `CHANNEL_UPDATED`.
    pub event_type: String,
    #[serde(flatten)]
    pub channel: crate::channel::Channel,
    pub occurred_at: DateTime<Utc>,
}

/// `data` of `SAFETY_STOCK_SET`: one per-SKU override of a channel's safety stock at a
/// location; `safety_stock: null` removed it. `version` counts the changes of this
/// (channel, store, sku), so a consumer drops a stale one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyStockSetV1 {
    pub schema_version: u8,
    pub event_id: Uuid,
    /// Always `SAFETY_STOCK_SET`.
    pub event_type: String,
    pub channel_id: ChannelId,
    pub store_id: StoreId,
    pub product_sku: Sku,
    pub safety_stock: Option<i64>,
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
}

impl<T: Serialize> Envelope<T> {
    /// `data` in its envelope, as a log entry about `(store_id, key)` at `version`.
    fn record(self, store_id: String, version: i64) -> LogRecord {
        LogRecord {
            event_id: self.id,
            store_id,
            key: self.partitionkey.clone(),
            version,
            occurred_at: self.time,
            // Strings, numbers and validated ids: serializing cannot fail.
            envelope: serde_json::to_string(&self).unwrap_or_default(),
        }
    }
}

impl<T: serde::de::DeserializeOwned> Envelope<T> {
    /// Parses an envelope of CloudEvents type `kind` whose id is `data`'s event id.
    fn parse_as(
        bytes: &[u8],
        kind: &'static str,
        event_id: impl Fn(&T) -> Uuid,
    ) -> Result<Self, EnvelopeError> {
        let e: Self = serde_json::from_slice(bytes)?;
        if e.specversion != "1.0" {
            return Err(EnvelopeError::Mismatch("specversion must be 1.0"));
        }
        if e.event_type != kind {
            return Err(EnvelopeError::Mismatch("not the event type expected"));
        }
        if e.id != event_id(&e.data) {
            return Err(EnvelopeError::Mismatch("id does not match data.event_id"));
        }
        Ok(e)
    }
}

impl<T> Envelope<T> {
    /// `data` in an envelope of CloudEvents type `kind`, in structured JSON mode.
    fn new(
        data: T,
        (id, time): (Uuid, DateTime<Utc>),
        kind: &str,
        subject: String,
        partitionkey: String,
        source: &str,
    ) -> Self {
        Self {
            specversion: "1.0".to_owned(),
            id,
            source: source.to_owned(),
            event_type: kind.to_owned(),
            subject,
            time,
            datacontenttype: "application/json".to_owned(),
            partitionkey,
            data,
        }
    }
}

impl ChannelUpdatedV1 {
    pub const EVENT_TYPE: &'static str = "CHANNEL_UPDATED";

    pub fn new(
        event_id: Uuid,
        occurred_at: DateTime<Utc>,
        channel: crate::channel::Channel,
    ) -> Self {
        Self {
            schema_version: 1,
            event_id,
            event_type: Self::EVENT_TYPE.to_owned(),
            channel,
            occurred_at,
        }
    }

    /// The partition key of a channel's events.
    pub fn partition_key(channel: &ChannelId) -> String {
        format!("channel:{channel}")
    }

    pub fn record(&self, source: &str) -> LogRecord {
        let id = &self.channel.channel_id;
        Envelope::new(
            self,
            (self.event_id, self.occurred_at),
            CHANNEL_UPDATED_TYPE,
            id.to_string(),
            Self::partition_key(id),
            source,
        )
        .record(String::new(), self.channel.version)
    }

    /// Parses a `CHANNEL_UPDATED` envelope, configuration checks included.
    pub fn parse(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let e = Envelope::<Self>::parse_as(bytes, CHANNEL_UPDATED_TYPE, |d| d.event_id)?;
        if e.data.event_type != Self::EVENT_TYPE {
            return Err(EnvelopeError::Mismatch(
                "data.event_type must be CHANNEL_UPDATED",
            ));
        }
        if e.partitionkey != Self::partition_key(&e.data.channel.channel_id) {
            return Err(EnvelopeError::Mismatch(
                "partitionkey must be channel:<channel_id>",
            ));
        }
        Ok(e.data)
    }
}

impl SafetyStockSetV1 {
    pub const EVENT_TYPE: &'static str = "SAFETY_STOCK_SET";

    pub fn record(&self, source: &str) -> LogRecord {
        Envelope::new(
            self,
            (self.event_id, self.occurred_at),
            SAFETY_STOCK_SET_TYPE,
            self.product_sku.to_string(),
            self.product_sku.to_string(),
            source,
        )
        .record(self.store_id.to_string(), self.version)
    }

    /// Parses a `SAFETY_STOCK_SET` envelope.
    pub fn parse(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let e = Envelope::<Self>::parse_as(bytes, SAFETY_STOCK_SET_TYPE, |d| d.event_id)?;
        if e.data.event_type != Self::EVENT_TYPE {
            return Err(EnvelopeError::Mismatch(
                "data.event_type must be SAFETY_STOCK_SET",
            ));
        }
        if e.partitionkey != e.data.product_sku.as_str() {
            return Err(EnvelopeError::Mismatch(
                "partitionkey must be the product_sku",
            ));
        }
        let range = 0..=crate::channel::MAX_SAFETY_STOCK;
        if e.data.safety_stock.is_some_and(|n| !range.contains(&n)) {
            return Err(EnvelopeError::Mismatch(
                "safety_stock must be 0 to 1,000,000,000 or null",
            ));
        }
        Ok(e.data)
    }
}

/// A CloudEvents 1.0 envelope in structured JSON mode, of any event of ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub specversion: String,
    pub id: Uuid,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub partitionkey: String,
    pub data: T,
}

/// How many partitions the events are spread over by default (events.md): on the
/// bus's subjects, and among the processes that share a consumer.
pub const PARTITIONS: u32 = 16;

/// The partition of a SKU: FNV-1a (32 bit) of its bytes, modulo `partitions`. Stable
/// across versions and machines (never `std`'s randomly seeded hasher): every event
/// of one SKU, across every store, is in one partition, and keeps its order there.
pub fn partition(sku: &str, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in sku.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

/// The envelope of an Inventory Sync Event v1.
pub type CloudEvent = Envelope<InventoryEventV1>;

/// Why bytes read from the log or the bus are not a v1 Inventory Sync Event.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a CloudEvents JSON envelope of an inventory event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported envelope: {0}")]
    Mismatch(&'static str),
}

impl CloudEvent {
    /// The CloudEvents `type` of an envelope, read without its data: lets a reader
    /// tell an event type it does not handle (and skips) from a broken envelope.
    pub fn type_of(bytes: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct TypeOnly {
            #[serde(rename = "type")]
            event_type: String,
        }
        serde_json::from_slice::<TypeOnly>(bytes)
            .ok()
            .map(|t| t.event_type)
    }

    /// The `partitionkey` of an envelope, read without its data: lets a reader that
    /// works some partitions pass over the others' events cheaply.
    pub fn partition_key_of(bytes: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct KeyOnly {
            partitionkey: String,
        }
        serde_json::from_slice::<KeyOnly>(bytes)
            .ok()
            .map(|k| k.partitionkey)
    }

    /// Whether `event_type` is one of the v1 stock events ([`EventType`]).
    pub fn is_stock_event(event_type: &str) -> bool {
        [
            EventType::Reserved,
            EventType::Released,
            EventType::Adjusted,
        ]
        .iter()
        .any(|t| t.cloudevents_type() == event_type)
    }

    /// Parses and cross-checks an envelope: the attributes must agree with the data,
    /// so an event that was tampered with or mis-built is refused rather than applied.
    pub fn parse(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: CloudEvent = serde_json::from_slice(bytes)?;
        if envelope.specversion != "1.0" {
            return Err(EnvelopeError::Mismatch("specversion must be 1.0"));
        }
        if envelope.data.schema_version != InventoryEventV1::SCHEMA_VERSION {
            return Err(EnvelopeError::Mismatch("data.schema_version must be 1"));
        }
        if envelope.event_type != envelope.data.event_type.cloudevents_type() {
            return Err(EnvelopeError::Mismatch(
                "type does not match data.event_type",
            ));
        }
        if envelope.id != envelope.data.event_id {
            return Err(EnvelopeError::Mismatch("id does not match data.event_id"));
        }
        if envelope.partitionkey != envelope.data.product_sku.as_str() {
            return Err(EnvelopeError::Mismatch(
                "partitionkey must be the product_sku",
            ));
        }
        if envelope.data.available != envelope.data.on_hand - envelope.data.reserved {
            return Err(EnvelopeError::Mismatch(
                "available must be on_hand - reserved",
            ));
        }
        Ok(envelope)
    }

    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and validated newtypes always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> InventoryEventV1 {
        InventoryEventV1::new(
            Uuid::now_v7(),
            Utc::now(),
            StoreId::parse("S1").unwrap(),
            Sku::parse("SKU-1").unwrap(),
            Cause {
                event_type: EventType::Reserved,
                reason: Reason::OrderPlaced,
                quantity: 2,
                order_id: Some(OrderId::parse("O-1").unwrap()),
                reservation_id: Some(Uuid::now_v7()),
                external_ref: None,
                channel: None,
            },
            StockLevel::new(10, 3, 12).unwrap(),
        )
    }

    #[test]
    fn the_type_is_read_without_the_data() {
        let stock = sample().to_envelope("invsync://test").to_json();
        let t = CloudEvent::type_of(stock.as_bytes()).unwrap();
        assert!(CloudEvent::is_stock_event(&t));
        let other =
            br#"{"type": "com.invsync.channel.updated.v1", "data": {"channel_id": "online"}}"#;
        let t = CloudEvent::type_of(other).unwrap();
        assert_eq!(t, "com.invsync.channel.updated.v1");
        assert!(!CloudEvent::is_stock_event(&t));
        assert_eq!(CloudEvent::type_of(b"not json"), None);
    }

    #[test]
    fn an_envelope_round_trips() {
        let envelope = sample().to_envelope("invsync://test");
        let parsed = CloudEvent::parse(envelope.to_json().as_bytes()).unwrap();
        assert_eq!(parsed, envelope);
        assert_eq!(parsed.data.available, 7);
    }

    #[test]
    fn an_envelope_whose_attributes_disagree_with_its_data_is_refused() {
        let mut envelope = sample().to_envelope("invsync://test");
        envelope.event_type = EventType::Adjusted.cloudevents_type().to_owned();
        assert!(CloudEvent::parse(envelope.to_json().as_bytes()).is_err());
        let mut envelope = sample().to_envelope("invsync://test");
        envelope.data.available = 99;
        assert!(CloudEvent::parse(envelope.to_json().as_bytes()).is_err());
    }

    #[test]
    fn configuration_events_round_trip_and_refuse_a_tampered_envelope() {
        use crate::channel::{Allocation, Channel, ChannelConfig, ChannelLocation, Split};
        let config = ChannelConfig::new(
            None,
            Allocation::Priority,
            Split::ByUnit,
            vec![ChannelLocation {
                store_id: StoreId::parse("WH1").unwrap(),
                priority: 1,
                safety_stock: 2,
            }],
        )
        .unwrap();
        let channel = Channel {
            channel_id: ChannelId::parse("online").unwrap(),
            version: 3,
            config,
        };
        let updated = ChannelUpdatedV1::new(Uuid::now_v7(), Utc::now(), channel);
        let record = updated.record("invsync://test");
        assert_eq!((record.key.as_str(), record.version), ("channel:online", 3));
        assert_eq!(
            ChannelUpdatedV1::parse(record.envelope.as_bytes()).unwrap(),
            updated
        );
        let moved = record.envelope.replace("channel:online", "channel:other");
        assert!(ChannelUpdatedV1::parse(moved.as_bytes()).is_err());
        assert!(SafetyStockSetV1::parse(record.envelope.as_bytes()).is_err());

        let set = SafetyStockSetV1 {
            schema_version: 1,
            event_id: Uuid::now_v7(),
            event_type: SafetyStockSetV1::EVENT_TYPE.to_owned(),
            channel_id: ChannelId::parse("online").unwrap(),
            store_id: StoreId::parse("S1").unwrap(),
            product_sku: Sku::parse("SKU-1").unwrap(),
            safety_stock: Some(5),
            version: 2,
            occurred_at: Utc::now(),
        };
        let record = set.record("invsync://test");
        assert_eq!(
            (record.store_id.as_str(), record.key.as_str()),
            ("S1", "SKU-1")
        );
        assert_eq!(
            SafetyStockSetV1::parse(record.envelope.as_bytes()).unwrap(),
            set
        );
        let negative = record
            .envelope
            .replace("\"safety_stock\":5", "\"safety_stock\":-5");
        assert_ne!(negative, record.envelope);
        assert!(SafetyStockSetV1::parse(negative.as_bytes()).is_err());
    }
}
