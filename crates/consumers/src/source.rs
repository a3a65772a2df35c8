//! Where a consumer's events come from: the ledger's own log (the embedded bus) or an
//! external bus. The runtime owns the position (the last offset applied, in its own
//! store); a source only hands out events after it and learns when they are applied.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use invsync_ledger::{EventLog, LoggedEvent};

use crate::SourceError;

/// A dead letter as a bus that keeps its own dead-letter stream receives it.
#[derive(Debug, Clone)]
pub struct DeadLetterNote<'a> {
    pub consumer: &'a str,
    pub offset: i64,
    pub envelope: &'a str,
    pub attempts: u32,
    pub error: &'a str,
}

#[async_trait]
pub trait EventSource: Send + Sync + 'static {
    /// Events after `position`, in offset order, at most `max`. May return fewer, or
    /// none; a source that [`long_polls`](Self::long_polls) waits up to `wait` for
    /// the first one. It may skip offsets (a bus that lost or aged out messages): the
    /// runtime fills such a gap from the ledger's log.
    async fn fetch(
        &self,
        position: i64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LoggedEvent>, SourceError>;

    /// Everything up to `last` is applied and recorded: the source may forget it.
    async fn commit(&self, _last: i64) -> Result<(), SourceError> {
        Ok(())
    }

    /// The consumer moved its position (replay, rebuild, fell behind): the next
    /// fetch must start right after `position`.
    async fn rewind(&self, _position: i64) -> Result<(), SourceError> {
        Ok(())
    }

    /// Called every few seconds while fetched events are still being delivered, so a
    /// bus does not redeliver them meanwhile.
    async fn keep_alive(&self) {}

    /// How often the event at `offset` has been handed out, when that reached the
    /// bus's redelivery limit without it ever being applied: the runtime then
    /// dead-letters it rather than try once more (bounded redelivery).
    fn exhausted(&self, _offset: i64) -> Option<u32> {
        None
    }

    /// Records a dead letter where the bus keeps them (the consumer's store has it
    /// already).
    async fn dead_letter(&self, _note: DeadLetterNote<'_>) -> Result<(), SourceError> {
        Ok(())
    }

    /// Whether `fetch` itself waits for new events (so the runtime need not).
    fn long_polls(&self) -> bool {
        false
    }

    /// Events waiting for this consumer as the bus counts them; `None` when the lag is
    /// to be counted from the ledger's head.
    fn pending(&self) -> Option<i64> {
        None
    }

    /// The source's name in status and logs (`embedded`, `nats`).
    fn kind(&self) -> &'static str;
}

/// One partition of the ledger's log (of [`PARTITIONS`]), for a runtime that works
/// only that partition: events of the others come with an empty envelope where the
/// ledger knows the partitions (their offsets kept, so there is no hole), and are
/// passed over.
///
/// [`PARTITIONS`]: invsync_core::event::PARTITIONS
pub struct PartitionSource {
    pub log: Arc<dyn EventLog>,
    pub partition: u32,
}

#[async_trait]
impl EventSource for PartitionSource {
    async fn fetch(
        &self,
        position: i64,
        max: usize,
        _wait: Duration,
    ) -> Result<Vec<LoggedEvent>, SourceError> {
        Ok(self
            .log
            .partition_events(position, max, self.partition)
            .await
            .map_err(SourceError::new)?
            .events)
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

/// The embedded bus: the ledger's log, read by offset.
pub struct LedgerSource(pub Arc<dyn EventLog>);

#[async_trait]
impl EventSource for LedgerSource {
    async fn fetch(
        &self,
        position: i64,
        max: usize,
        _wait: Duration,
    ) -> Result<Vec<LoggedEvent>, SourceError> {
        Ok(self
            .0
            .events(position, max)
            .await
            .map_err(SourceError::new)?
            .events)
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}
