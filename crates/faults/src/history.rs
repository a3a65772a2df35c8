//! The history: every operation a client invoked, and how it ended.
//!
//! The outcome is what the client can know, as Jepsen records it:
//! - `Ok`: a 2xx answer, so the write is committed;
//! - `Failed`: a 4xx answer, a 503 that does not say `outcome: unknown`, or a
//!   connection refused before the request was sent: the write is not applied;
//! - `Unknown`: a 503 with `outcome: unknown`, a timeout, a connection lost after the
//!   request left: it may or may not have been applied.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A store-direct reservation (`store_id`).
    ReserveStore,
    /// A reservation through the `online` channel.
    ReserveChannel,
    Release,
    Fulfil,
    /// A sale at the till: an adjustment with reason `sale`, `delta` -1.
    TillSale,
    /// An adjustment with reason `stock_in`.
    StockIn,
    /// A count: `set_on_hand`, reason `cycle_count`.
    Count,
    /// A per-SKU safety-stock override of the channel.
    SafetyStock,
    /// A change of the channel's configuration (its locations' safety stock).
    ChannelConfig,
}

impl Kind {
    /// Whether it changes stock (and so must be in the log when acknowledged).
    pub fn is_stock_write(self) -> bool {
        !matches!(self, Self::SafetyStock | Self::ChannelConfig)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Ok { answer: Value },
    Failed { status: u16, detail: String },
    Unknown { detail: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub id: u64,
    pub kind: Kind,
    /// What finds it in the log: the order id of a reservation, the `external_ref` of
    /// an adjustment, the reservation id of a release or fulfilment.
    pub key: String,
    /// The instance it was sent to.
    pub instance: String,
    pub invoked: DateTime<Utc>,
    pub completed: DateTime<Utc>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Op {
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { .. })
    }
}

/// The operations recorded so far, shared by the workers.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<Vec<Op>>>);

impl History {
    pub fn record(&self, op: Op) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
