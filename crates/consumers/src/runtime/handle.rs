//! [`ConsumerHandle`]: a running consumer as the API and the supervisor see it —
//! its status, its store's reader, and the commands (replay, redrive) it takes.

use std::sync::{Arc, Mutex};

use invsync_core::CloudEvent;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::control::{Command, ControlError, ReplayFrom};
use super::{lag_events, lag_seconds, ConsumerStatus, Partition, Shared, Superseded, FIVE_MINUTES};
use crate::source::EventSource;
use crate::store::StoreReader;
use crate::ConsumerError;

/// A running consumer, as the API and the supervisor see it.
#[derive(Clone)]
pub struct ConsumerHandle {
    pub(super) name: String,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) shared: Arc<Mutex<Shared>>,
    /// The ledger's last committed offset, live.
    pub(super) head: watch::Receiver<i64>,
    pub(super) source: Arc<dyn EventSource>,
    pub(super) reader: StoreReader,
    /// Held (shared) by the main loop and the side loop while they work a step: taken
    /// whole, it waits until neither is delivering (see [`Self::quiesce`]).
    pub(super) turn: Arc<tokio::sync::RwLock<()>>,
    pub(super) partition: Option<Partition>,
}

impl ConsumerHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the consumer is between steps: once its `active` reads `false`,
    /// nothing of it is delivering after this returns, so another process may take
    /// its work over without two delivering one SKU side by side.
    pub async fn quiesce(&self) {
        drop(self.turn.write().await);
    }

    /// A partition's runtime that another process works now: its status is not this
    /// process's to show.
    pub fn standing_by(&self) -> bool {
        self.partition.is_some()
            && !self
                .shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .working
    }

    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    pub fn status(&self) -> ConsumerStatus {
        let head = *self.head.borrow();
        let now = std::time::Instant::now();
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        ConsumerStatus {
            name: self.name.clone(),
            position: s.position,
            lag_events: lag_events(self.source.as_ref(), head, s.position) + s.parked,
            lag_seconds: lag_seconds(s.oldest_unapplied()),
            dead_letters: s.dead_letters,
            parked: s.parked,
            parked_skus: s.parked_skus,
            parked_error: s.parked_error.clone(),
            sync_latency_p50_ms: s.latencies.quantile(now, FIVE_MINUTES, 0.50),
            sync_latency_p99_ms: s.latencies.quantile(now, FIVE_MINUTES, 0.99),
            sync_latency_1h_p50_ms: s.latencies.quantile(now, crate::stats::HISTORY, 0.50),
            sync_latency_1h_p99_ms: s.latencies.quantile(now, crate::stats::HISTORY, 0.99),
            as_of: s.as_of,
            last_error: s.last_error.clone(),
        }
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ControlError>>) -> Command,
    ) -> Result<T, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| ControlError::Stopped)?;
        rx.await.map_err(|_| ControlError::Stopped)?
    }

    /// Rewinds the consumer; answers once the rewind is recorded (the rebuild then
    /// proceeds in the background).
    pub async fn replay(&self, from: ReplayFrom) -> Result<(), ControlError> {
        self.command(|tx| Command::Replay(from, tx)).await
    }

    /// Queues a dead letter for another delivery; answers once it is accepted.
    pub async fn redrive(&self, id: Uuid) -> Result<(), ControlError> {
        self.command(|tx| Command::Redrive(id, tx)).await
    }

    /// Queues a redelivery of dead letter `id` on the runtime and returns at once:
    /// the runtime works it between batches and logs a failure itself (the dead
    /// letter stays, one more attempt counted).
    pub async fn queue_redrive(&self, id: Uuid) -> Result<(), ControlError> {
        let (tx, _unheard) = oneshot::channel();
        self.commands
            .send(Command::Redrive(id, tx))
            .await
            .map_err(|_| ControlError::Stopped)
    }

    /// When redriving this dead letter would send an older version of its stock row
    /// than the endpoint already received (or has queued, parked): what it got.
    pub async fn superseded(&self, id: Uuid) -> Result<Option<Superseded>, ConsumerError> {
        let Some(envelope) = self.reader.dead_letter_envelope(id).await? else {
            return Ok(None);
        };
        // A dead letter that is not a valid event cannot be judged (nor redriven).
        let Ok(event) = CloudEvent::parse(envelope.as_bytes()) else {
            return Ok(None);
        };
        let event = event.data;
        let (store_id, sku) = (event.store_id.to_string(), event.product_sku.to_string());
        let received = self.reader.seen_version(&store_id, &sku).await?;
        Ok(received
            .filter(|v| *v > event.version)
            .map(|received| Superseded {
                store_id,
                sku,
                version: event.version,
                received,
            }))
    }

    /// The sync latency `q` quantile per 10-second slot of the last hour, oldest
    /// first, as (seconds ago, milliseconds): for the console's charts.
    pub fn latency_series(&self, q: f64) -> Vec<(u64, Option<f64>)> {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.latencies
            .series(std::time::Instant::now(), q)
            .into_iter()
            .map(|(ago, v)| (ago.as_secs(), v))
            .collect()
    }

    /// Does this consumer hold that dead letter?
    pub async fn holds_dead_letter(&self, id: Uuid) -> Result<bool, ConsumerError> {
        Ok(self.reader.dead_letter_envelope(id).await?.is_some())
    }
}
