//! A consumer's events from NATS: a durable pull consumer with explicit acks.
//!
//! The consumer's store keeps the authoritative position (the last ledger offset
//! applied); the durable consumer is only where delivery resumes. So the source can
//! always be recreated from the position — on replay, rebuild, or when an operator
//! deleted the durable — by looking up the stream sequence that carries the next
//! offset. Acks use `AckPolicy::All`: one ack after the batch is committed acks the
//! whole batch. While a batch is still being delivered the source sends
//! "in progress" acks, so a slow webhook does not make NATS redeliver. A message NATS
//! has handed out `max_deliver` times without its batch ever being committed (the
//! consumer crashed or stalled each time) is reported as exhausted, and the runtime
//! dead-letters it instead of trying again.

use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use async_trait::async_trait;
use futures::StreamExt;
use invsync_consumers::{DeadLetterNote, EventSource, SourceError};
use invsync_ledger::LoggedEvent;

use crate::{subject, BusError, NatsBus, OFFSET_HEADER};

/// How much longer than its own expiry a pull may take before it counts as lost.
const PULL_MARGIN: Duration = Duration::from_secs(2);

pub struct NatsSource {
    bus: NatsBus,
    durable: String,
    consumer: tokio::sync::Mutex<Option<PullConsumer>>,
    /// Fetched, not yet committed: (offset, deliveries so far, message).
    held: Mutex<Vec<(i64, i64, Message)>>,
    /// The consumer's pending count as of the last message fetched.
    pending: Mutex<Option<i64>>,
}

impl NatsSource {
    /// A source reading through the durable consumer `durable` (created when missing).
    pub fn new(bus: NatsBus, durable: impl Into<String>) -> Self {
        Self {
            bus,
            durable: durable.into(),
            consumer: tokio::sync::Mutex::new(None),
            held: Mutex::new(Vec::new()),
            pending: Mutex::new(None),
        }
    }

    pub fn durable(&self) -> &str {
        &self.durable
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Vec<(i64, i64, Message)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The durable consumer, created to start after `position` when it does not exist.
    ///
    /// What a process that died mid-delivery had pulled and not acknowledged, NATS
    /// hands out again only once its `ack_wait` (30 s) ran out. The successor does not
    /// wait for that: the consumer runtime reads the ledger's log when its bus stays
    /// silent while the log is ahead (`runtime::gap`), and drops the redeliveries
    /// when they come. The bus's delivery counts stay, so a message that never gets
    /// applied is still reported exhausted after `max_deliver`.
    async fn consumer(&self, position: i64) -> Result<PullConsumer, BusError> {
        let mut slot = self.consumer.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let stream = self.bus.stream().await?;
        let consumer = match stream.get_consumer::<pull::Config>(&self.durable).await {
            Ok(c) => c,
            Err(_) => self.create(position).await?,
        };
        *slot = Some(consumer.clone());
        Ok(consumer)
    }

    /// Creates the durable consumer so that its first message carries the first offset
    /// after `position`.
    async fn create(&self, position: i64) -> Result<PullConsumer, BusError> {
        let stream = self.bus.stream().await?;
        let start = self.sequence_after(position).await?;
        let config = self.bus.config();
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(self.durable.clone()),
                description: Some("invsync consumer".into()),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: AckPolicy::All,
                ack_wait: config.ack_wait,
                max_deliver: config.max_deliver,
                filter_subject: format!("{}.>", subject::EVENTS_PREFIX),
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await
            .map_err(BusError::nats)?;
        tracing::info!(durable = %self.durable, position, start_sequence = start, "NATS consumer created");
        Ok(consumer)
    }

    /// The first stream sequence whose event has an offset above `position` (one past
    /// the last sequence when there is none yet). A binary search over the retained
    /// sequences, which carry rising offsets because the relay publishes in order.
    pub async fn sequence_after(&self, position: i64) -> Result<u64, BusError> {
        let mut stream = self.bus.stream().await?;
        let state = stream.info().await.map_err(BusError::nats)?.state.clone();
        let (mut lo, mut hi) = (state.first_sequence.max(1), state.last_sequence + 1);
        if state.messages == 0 || position <= 0 {
            return Ok(if state.messages == 0 { hi } else { lo });
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let offset = match stream.get_raw_message(mid).await {
                Ok(m) => m
                    .headers
                    .get(OFFSET_HEADER)
                    .and_then(|v| v.as_str().parse::<i64>().ok())
                    .unwrap_or(i64::MAX),
                // A deleted message (aged out while searching): look later.
                Err(_) => i64::MIN,
            };
            if offset > position {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// Waits up to `wait` for one message, then takes whatever else is ready. The
    /// server ends each pull; if the connection drops meanwhile nobody will, so the
    /// whole pull is also bounded here.
    async fn pull(
        &self,
        consumer: &PullConsumer,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Message>, BusError> {
        let mut connections = self.bus.connections();
        connections.mark_unchanged();
        tokio::select! {
            pulled = tokio::time::timeout(wait + PULL_MARGIN, self.pull_unbounded(consumer, max, wait)) => {
                pulled.map_err(|_| BusError::Nats("a pull got no answer from the server".into()))?
            }
            // Reconnected: a pull sent on the old connection is never answered.
            Ok(()) = connections.changed() => {
                Err(BusError::Nats("the connection to NATS was re-established; pulling again".into()))
            }
        }
    }

    async fn pull_unbounded(
        &self,
        consumer: &PullConsumer,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Message>, BusError> {
        let mut out = Vec::new();
        let mut first = consumer
            .batch()
            .max_messages(1)
            .expires(wait.max(Duration::from_millis(10)))
            .messages()
            .await
            .map_err(BusError::nats)?;
        while let Some(m) = first.next().await {
            out.push(m.map_err(BusError::nats)?);
        }
        if out.is_empty() || max <= 1 {
            return Ok(out);
        }
        let mut rest = consumer
            .fetch()
            .max_messages(max - 1)
            .messages()
            .await
            .map_err(BusError::nats)?;
        while let Some(m) = rest.next().await {
            out.push(m.map_err(BusError::nats)?);
        }
        Ok(out)
    }

    /// Forgets the cached consumer, so the next fetch looks it up (or recreates it).
    async fn forget_consumer(&self) {
        *self.consumer.lock().await = None;
        self.held().clear();
    }
}

#[async_trait]
impl EventSource for NatsSource {
    async fn fetch(
        &self,
        position: i64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LoggedEvent>, SourceError> {
        let consumer = self.consumer(position).await.map_err(SourceError::new)?;
        let messages = match self.pull(&consumer, max, wait).await {
            Ok(m) => m,
            Err(e) => {
                // The durable may be gone (deleted, or a NATS without our state):
                // look it up again next time.
                self.forget_consumer().await;
                return Err(SourceError::new(e));
            }
        };
        let mut events = Vec::with_capacity(messages.len());
        let mut stale: Option<Message> = None;
        for message in messages {
            let Some(offset) = message
                .headers
                .as_ref()
                .and_then(|h| h.get(OFFSET_HEADER))
                .and_then(|v| v.as_str().parse::<i64>().ok())
            else {
                // Not published by invsync (no offset): nothing can apply it.
                tracing::warn!(subject = %message.subject, "a message without an offset on the event stream; skipped");
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            };
            let info = message.info().ok();
            if let Some(pending) = info.as_ref().map(|i| i.pending) {
                *self.pending.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(i64::try_from(pending).unwrap_or(i64::MAX));
            }
            if offset <= position {
                // Applied before (a redelivery, or a replay that started early).
                stale = Some(message);
                continue;
            }
            let deliveries = info.map_or(1, |i| i.delivered);
            events.push(LoggedEvent {
                offset,
                envelope: String::from_utf8_lossy(&message.payload).into_owned(),
            });
            self.held().push((offset, deliveries, message));
        }
        if events.is_empty() {
            *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(0);
            // Only already-applied messages came: ack them now (with AckAll the last
            // covers the rest), since no commit will.
            if let Some(message) = stale {
                let _ = message.ack().await;
            }
        }
        events.sort_by_key(|e| e.offset);
        events.dedup_by_key(|e| e.offset);
        Ok(events)
    }

    async fn commit(&self, last: i64) -> Result<(), SourceError> {
        let newest = {
            let mut held = self.held();
            let newest = held
                .iter()
                .enumerate()
                .filter(|(_, (offset, _, _))| *offset <= last)
                .max_by_key(|(_, (_, _, m))| m.info().map_or(0, |i| i.stream_sequence))
                .map(|(i, _)| i);
            let message = newest.map(|i| held.swap_remove(i).2);
            held.clear();
            message
        };
        match newest {
            Some(message) => message.ack().await.map_err(SourceError::new),
            None => Ok(()),
        }
    }

    async fn rewind(&self, position: i64) -> Result<(), SourceError> {
        self.forget_consumer().await;
        let stream = self.bus.stream().await.map_err(SourceError::new)?;
        // Missing is fine: it is created at the new position either way.
        let _ = stream.delete_consumer(&self.durable).await;
        let consumer = self.create(position).await.map_err(SourceError::new)?;
        *self.consumer.lock().await = Some(consumer);
        Ok(())
    }

    async fn keep_alive(&self) {
        let messages: Vec<Message> = self.held().iter().map(|(_, _, m)| m.clone()).collect();
        for message in messages {
            let _ = message.ack_with(AckKind::Progress).await;
        }
    }

    fn exhausted(&self, offset: i64) -> Option<u32> {
        let max = self.bus.config().max_deliver;
        self.held()
            .iter()
            .find(|(o, _, _)| *o == offset)
            .and_then(|(_, deliveries, _)| {
                (max > 0 && *deliveries >= max)
                    .then(|| u32::try_from(*deliveries).unwrap_or(u32::MAX))
            })
    }

    async fn dead_letter(&self, note: DeadLetterNote<'_>) -> Result<(), SourceError> {
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::from(note.envelope.to_owned()))
            .message_id(format!("{}:{}", note.consumer, note.offset))
            .header(OFFSET_HEADER, note.offset.to_string().as_str())
            .header("Invsync-Consumer", note.consumer)
            .header("Invsync-Attempts", note.attempts.to_string().as_str())
            .header("Invsync-Failure-Reason", one_line(note.error).as_str());
        self.bus
            .jetstream()
            .send_publish(subject::dlq_subject(note.consumer), publish)
            .await
            .map_err(SourceError::new)?
            .await
            .map_err(SourceError::new)?;
        Ok(())
    }

    fn long_polls(&self) -> bool {
        true
    }

    fn pending(&self) -> Option<i64> {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}

/// A header value: one line, bounded.
fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect();
    line
}
