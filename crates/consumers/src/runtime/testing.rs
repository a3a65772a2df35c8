//! Test doubles for the runtime's unit tests (never built outside tests).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use invsync_core::{Sku, StoreId};
use invsync_ledger::{EventLog, EventPage, LedgerError, LoggedEvent, SnapshotPage};
use tokio::sync::watch;

use crate::{Failure, Incoming, Sink};

/// The ledger's log in memory (a unit-test double of the read-only interface).
pub(crate) struct MemLog {
    events: Mutex<Vec<LoggedEvent>>,
    head: watch::Sender<i64>,
}

impl MemLog {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            events: Mutex::new(Vec::new()),
            head: watch::channel(0).0,
        })
    }

    pub(crate) fn append(&self, sku: &str, version: i64) {
        let mut events = self.events.lock().unwrap();
        let offset = events.len() as i64 + 1;
        let mut e = crate::test_event_of(sku, version, version);
        e.offset = offset;
        events.push(LoggedEvent {
            offset,
            envelope: e.envelope,
        });
        self.head.send_replace(offset);
    }

    /// Appends an envelope as it is (another event type, a broken one).
    pub(crate) fn append_raw(&self, envelope: &str) {
        let mut events = self.events.lock().unwrap();
        let offset = events.len() as i64 + 1;
        events.push(LoggedEvent {
            offset,
            envelope: envelope.to_owned(),
        });
        self.head.send_replace(offset);
    }
}

/// A delivering sink that records the versions it is given, in order.
#[derive(Default)]
pub(crate) struct Recorder(pub(crate) Mutex<Vec<i64>>);

#[async_trait]
impl Sink for Recorder {
    fn delivers(&self) -> bool {
        true
    }
    async fn deliver(&self, event: &Incoming) -> Result<(), Failure> {
        self.0.lock().unwrap().push(event.event.version);
        Ok(())
    }
}

#[async_trait]
impl EventLog for MemLog {
    async fn events(&self, after: i64, limit: usize) -> Result<EventPage, LedgerError> {
        let events = self.events.lock().unwrap();
        Ok(EventPage {
            events: events
                .iter()
                .filter(|e| e.offset > after)
                .take(limit)
                .cloned()
                .collect(),
            oldest_offset: 1,
            last_offset: events.len() as i64,
        })
    }
    async fn offset_at(&self, _since: DateTime<Utc>) -> Result<i64, LedgerError> {
        Ok(1)
    }
    async fn snapshot(
        &self,
        _after: Option<(StoreId, Sku)>,
        _limit: usize,
    ) -> Result<SnapshotPage, LedgerError> {
        Err(LedgerError::Internal("no snapshots here".into()))
    }
    fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }
}

/// Waits until `done` holds, failing the test after 20 s (a condition, not a sleep).
pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
