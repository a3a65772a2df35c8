//! The relay from the ledger's event log to the NATS stream.
//!
//! It runs on every instance and publishes only while this instance leads the ledger's
//! relay ([`LogCursors::leadership`]), so one instance publishes at a time. It reads the
//! log after its cursor, publishes each event (`Nats-Msg-Id` = event id, the ledger
//! offset in a header) with up to `in_flight` acks outstanding, awaits every ack, and
//! only then moves the cursor in the ledger. Events are published in offset order, so
//! the stream holds each SKU's events in version order. A crash, or a leader that is
//! deposed mid-batch, publishes part of a range twice; the stream's duplicate window
//! drops the repeats, and consumers deduplicate beyond it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage as Publish;
use invsync_ledger::{LogCursors, LoggedEvent, Term};
use tokio::sync::watch;

use crate::{BusError, NatsBus, OFFSET_HEADER};

/// Events read from the log per batch.
const BATCH: usize = 1000;
/// How long an idle relay sleeps when no head notification arrives.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// What the relay has done, for gauges and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayProgress {
    /// The last offset published and acknowledged (the cursor).
    pub published: i64,
    /// Whether the last attempt to reach the bus succeeded.
    pub up: bool,
}

pub struct BusRelay {
    bus: NatsBus,
    ledger: Arc<dyn LogCursors>,
    progress: watch::Sender<RelayProgress>,
}

/// The part of an envelope the relay needs; the rest is published as stored.
#[derive(serde::Deserialize)]
struct Routing {
    id: String,
    partitionkey: String,
    /// CloudEvents `time`: the event's `occurred_at`.
    time: Option<chrono::DateTime<chrono::Utc>>,
}

impl BusRelay {
    pub fn new(
        bus: NatsBus,
        ledger: Arc<dyn LogCursors>,
    ) -> (Self, watch::Receiver<RelayProgress>) {
        let (progress, rx) = watch::channel(RelayProgress::default());
        (
            Self {
                bus,
                ledger,
                progress,
            },
            rx,
        )
    }

    /// The ledger cursor this relay keeps: one per stream.
    pub fn cursor_name(bus: &NatsBus) -> String {
        format!("nats:{}", bus.config().stream)
    }

    /// Publishes until `shutdown`, while this instance leads; on shutdown it gives the
    /// log a last few seconds to drain onto the bus. A failure never ends it: it is
    /// logged, shown by `invsync_bus_up`, and retried.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut leading = self.ledger.leadership();
        let mut head = self.ledger.subscribe();
        let name = Self::cursor_name(&self.bus);
        let mut cursor: Option<i64> = None;
        // The lease term this instance publishes under; the cursor is fenced by it.
        let mut term: Option<Term> = None;
        let mut ensured = false;
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                if let (Some(at), Some(term)) = (cursor, term.as_ref()) {
                    self.drain(&name, at, term).await;
                }
                return;
            }
            let now = leading.current();
            if now != term {
                // A new term (or none): read the cursor again, as recorded.
                cursor = None;
                term = now;
            }
            let Some(held) = term.clone() else {
                tokio::select! {
                    () = leading.changed(IDLE_POLL) => {}
                    Ok(()) = shutdown.changed() => {}
                }
                continue;
            };
            let result = async {
                if !ensured {
                    self.bus.ensure_streams().await?;
                    ensured = true;
                }
                let at = match cursor {
                    Some(at) => at,
                    None => self.ledger.cursor(&name).await.map_err(BusError::nats)?,
                };
                cursor = Some(at);
                let last = self.publish_after(at, BATCH).await?;
                if let Some(last) = last {
                    cursor = Some(last);
                    self.ledger
                        .advance_cursor(&name, last, Some(&held))
                        .await
                        .map_err(BusError::nats)?;
                }
                Ok::<_, BusError>(last)
            }
            .await;
            match result {
                Ok(last) => {
                    failures = 0;
                    self.progress.send_if_modified(|p| {
                        let next = RelayProgress {
                            published: last.unwrap_or(p.published).max(cursor.unwrap_or(0)),
                            up: true,
                        };
                        std::mem::replace(p, next) != next
                    });
                    if last.is_none() {
                        tokio::select! {
                            Ok(()) = head.changed() => {}
                            () = leading.changed(IDLE_POLL) => {}
                            Ok(()) = shutdown.changed() => {}
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    ensured = false;
                    self.progress.send_modify(|p| p.up = false);
                    tracing::warn!(error = %e, "publishing to NATS failed; events wait in the log");
                    // At most a second: a cluster elects a new stream leader in
                    // seconds, and delivery must resume soon after.
                    let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6)))
                        .min(Duration::from_secs(1));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        Ok(()) = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// A last bounded attempt to publish what is committed before the process stops.
    async fn drain(&self, name: &str, mut at: i64, term: &Term) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            match self.publish_after(at, BATCH).await {
                Ok(Some(last)) => {
                    at = last;
                    if let Err(e) = self.ledger.advance_cursor(name, last, Some(term)).await {
                        tracing::warn!(error = %e, "cannot record the bus cursor");
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "stopping with events not yet on the bus; the next leader publishes them");
                    return;
                }
            }
        }
    }

    /// Publishes up to `limit` events after offset `after` and awaits every ack.
    /// Returns the last offset published, `None` when there was nothing to publish.
    /// Does not move the cursor (the caller does, once this returns).
    #[tracing::instrument(level = "debug", skip(self), fields(log.offset = after))]
    pub async fn publish_after(&self, after: i64, limit: usize) -> Result<Option<i64>, BusError> {
        let page = self
            .ledger
            .events(after, limit)
            .await
            .map_err(BusError::nats)?;
        if page.purged_after(after) {
            // Retention purged events the bus never got (it was down for longer than
            // the retention): say so loudly, and go on from what is left.
            tracing::error!(
                from = after + 1,
                to = page.oldest_offset - 1,
                "events were purged before they reached the bus"
            );
        }
        let Some(last) = page.events.last().map(|e| e.offset) else {
            return Ok(None);
        };
        let published = page.events.len() as u64;
        let mut acks = VecDeque::with_capacity(self.bus.config().in_flight);
        let mut occurred = Vec::with_capacity(page.events.len());
        for event in page.events {
            let (subject, publish, time) = self.message(event);
            occurred.extend(time);
            let ack = self
                .bus
                .jetstream()
                .send_publish(subject, publish)
                .await
                .map_err(BusError::nats)?;
            acks.push_back(ack);
            if acks.len() >= self.bus.config().in_flight.max(1) {
                if let Some(ack) = acks.pop_front() {
                    ack.await.map_err(BusError::nats)?;
                }
            }
        }
        while let Some(ack) = acks.pop_front() {
            ack.await.map_err(BusError::nats)?;
        }
        metrics::counter!("invsync_bus_published_total").increment(published);
        // The log → stream hop, as a consumer of the stream sees it: from the change
        // (which commits its event into the log) to the stream acknowledging it.
        let acked = chrono::Utc::now();
        for time in occurred {
            let seconds = (acked - time).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
            metrics::histogram!("invsync_bus_publish_latency_seconds").record(seconds);
        }
        Ok(Some(last))
    }

    /// The subject and message of one event; the stored envelope becomes the payload
    /// as it is, without a copy.
    fn message(
        &self,
        event: LoggedEvent,
    ) -> (String, Publish, Option<chrono::DateTime<chrono::Utc>>) {
        let offset = event.offset.to_string();
        // An envelope that does not even name its event is published where no SKU's
        // events go; every consumer dead-letters it, naming why.
        let (subject, id, time) = match serde_json::from_str::<Routing>(&event.envelope) {
            Ok(r) => (self.bus.subject(&r.partitionkey), r.id, r.time),
            Err(_) => (
                format!(
                    "{}.unroutable.offset-{offset}",
                    crate::subject::EVENTS_PREFIX
                ),
                format!("offset-{offset}"),
                None,
            ),
        };
        let publish = Publish::build()
            .payload(bytes::Bytes::from(event.envelope))
            .message_id(id)
            .header(OFFSET_HEADER, offset.as_str());
        (subject, publish, time)
    }
}
