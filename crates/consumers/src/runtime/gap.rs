//! Holes and retention: filling what a bus skipped from the ledger's log, and what a
//! consumer does when the log no longer holds the next event it needs (a rebuild from
//! a snapshot, or resuming at the oldest retained event).

use invsync_ledger::LoggedEvent;

use super::*;

/// How long a bus may hand out nothing while the log's head is ahead before the
/// consumer reads the log itself: longer than a healthy bus ever lags (the relay
/// publishes within milliseconds of a commit), shorter than the SLA by far.
pub(super) const BUS_GRACE: Duration = Duration::from_secs(1);

impl Runner {
    /// Events after the position without a hole. A hole (a bus that lost or aged out
    /// messages) — before the first event fetched or between two of them — is filled
    /// from the ledger's log; when the log no longer has it either, the consumer fell
    /// behind retention, which is handled here (`None`). What cannot be filled now is
    /// cut off: the batch ends before it, and the next step finds it at its start.
    pub(super) async fn contiguous(
        &mut self,
        mut fetched: Vec<LoggedEvent>,
    ) -> Result<Option<Vec<LoggedEvent>>, StepError> {
        fetched.retain(|e| e.offset > self.position);
        fetched.sort_by_key(|e| e.offset);
        fetched.dedup_by_key(|e| e.offset);
        let behind = *self.head.borrow() > self.position;
        if fetched.is_empty() {
            // Nothing new although the head is ahead: has the log moved past us? (A
            // bus that is merely slower than the log is waited for, not bypassed.)
            if behind {
                let oldest = self.read_log(self.position, 1).await?.oldest_offset;
                if self.position + 1 < oldest {
                    self.fell_behind(oldest).await?;
                    return Ok(None);
                }
            }
            return Ok(Some(fetched));
        }
        let mut out = Vec::with_capacity(fetched.len());
        let mut expected = self.position + 1;
        for event in fetched {
            if event.offset > expected {
                let Some(filled) = self.fill(expected, event.offset, out.is_empty()).await? else {
                    return Ok(None);
                };
                let reached = filled.last().map(|e| e.offset + 1);
                out.extend(filled);
                if reached != Some(event.offset) {
                    // Only part of the hole could be read: stop before the rest.
                    return Ok(Some(out));
                }
            }
            expected = event.offset + 1;
            out.push(event);
        }
        Ok(Some(out))
    }

    /// How long the next fetch from a bus may take: what is left of the grace while
    /// the log's head is ahead of the position (the silence counted from now if it
    /// had not begun); `None` when nothing is waiting, or the source is the log.
    pub(super) fn bus_patience(&mut self) -> Option<Duration> {
        let behind = *self.head.borrow() > self.position;
        if !behind || self.source.kind() == "embedded" {
            return None;
        }
        let since = *self
            .bus_silent_since
            .get_or_insert_with(std::time::Instant::now);
        Some(
            BUS_GRACE
                .saturating_sub(since.elapsed())
                .max(Duration::from_millis(10)),
        )
    }

    /// What a bus handed out, or — when it has handed out nothing, or failed, for
    /// [`BUS_GRACE`] while the log's head was ahead — the next batch read from the
    /// ledger's log itself. The log is the record and the bus a fast path: a stream
    /// electing a new leader (NATS takes 4–9 s), or down altogether, does not hold
    /// the consumer back. What the bus hands out later is at or below the position by
    /// then and dropped. A failure within the grace is the step's failure (retried).
    pub(super) async fn bypass(
        &mut self,
        fetched: Result<Vec<LoggedEvent>, crate::SourceError>,
    ) -> Result<Vec<LoggedEvent>, StepError> {
        let behind = *self.head.borrow() > self.position;
        let quiet = match &fetched {
            Ok(events) => !events.iter().any(|e| e.offset > self.position),
            Err(_) => true,
        };
        if !(behind && quiet) || self.source.kind() == "embedded" {
            self.bus_silent_since = None;
            return fetched.map_err(|e| StepError::Retry(e.into()));
        }
        let since = *self
            .bus_silent_since
            .get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < BUS_GRACE {
            return fetched.map_err(|e| StepError::Retry(e.into()));
        }
        let page = self.read_log(self.position, self.config.batch).await?;
        if page.events.is_empty() {
            return Ok(Vec::new());
        }
        tracing::info!(consumer.name = %self.config.name, consumer.position = self.position, events = page.events.len(), silent_ms = since.elapsed().as_millis() as u64, "the bus is silent while the log moved on: reading the log");
        metrics::counter!("invsync_consumer_log_bypass_total", "consumer" => self.config.name.clone())
            .increment(page.events.len() as u64);
        Ok(page.events)
    }

    /// Reads the hole `[from, until)` from the ledger's log (at most a batch of it).
    /// `None` when the log no longer has its start and nothing precedes it in this
    /// batch (the consumer fell behind retention, handled here); an empty or partial
    /// fill when the log lacks it otherwise.
    async fn fill(
        &mut self,
        from: i64,
        until: i64,
        first_in_batch: bool,
    ) -> Result<Option<Vec<LoggedEvent>>, StepError> {
        let want = ((until - from) as usize).min(self.config.batch);
        let page = self.read_log(from - 1, want).await?;
        if from < page.oldest_offset {
            if first_in_batch {
                self.fell_behind(page.oldest_offset).await?;
                return Ok(None);
            }
            return Ok(Some(Vec::new()));
        }
        tracing::warn!(consumer.name = %self.config.name, log.offset = from, to = until - 1, "the source skipped events; reading them from the ledger's log");
        let mut expected = from;
        Ok(Some(
            page.events
                .into_iter()
                .take_while(|e| {
                    let next = e.offset == expected && e.offset < until;
                    expected += 1;
                    next
                })
                .collect(),
        ))
    }

    async fn read_log(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<invsync_ledger::EventPage, StepError> {
        self.ledger
            .events(after, limit)
            .await
            .map_err(|e| StepError::Retry(e.into()))
    }

    /// The log no longer holds the next event this consumer needs.
    pub(super) async fn fell_behind(&mut self, oldest: i64) -> Result<(), StepError> {
        tracing::warn!(consumer.name = %self.config.name, consumer.position = self.position, log.oldest = oldest, "consumer fell behind retention");
        if self.sink.keeps_view() {
            self.rebuild().await
        } else {
            // A delivery consumer cannot get the purged events back; it resumes at the
            // oldest retained one. Events carry full state, so each key converges with
            // its next change.
            let position = oldest - 1;
            self.db(move |store| {
                let tx = store.transaction()?;
                store::set_position(&tx, position, None)?;
                tx.commit()
            })
            .await?;
            self.moved_to(position).await
        }
    }

    /// Records a new position (replay, rebuild, fell behind) and tells the source.
    pub(super) async fn moved_to(&mut self, position: i64) -> Result<(), StepError> {
        self.position = position;
        self.shared().position = position;
        self.source
            .rewind(position)
            .await
            .map_err(|e| StepError::Retry(e.into()))
    }

    /// Replaces the view with a snapshot of the ledger in one transaction (readers see
    /// the old view until it commits), then follows the log from the snapshot's offset.
    pub(super) async fn rebuild(&mut self) -> Result<(), StepError> {
        let mut rows = Vec::new();
        let mut after = None;
        let mut log_offset = None;
        loop {
            let page = self
                .ledger
                .snapshot(after.clone(), 1000)
                .await
                .map_err(|e| StepError::Retry(e.into()))?;
            log_offset.get_or_insert(page.log_offset);
            let done = page.items.len() < 1000;
            after = page
                .items
                .last()
                .map(|r| (r.store_id.clone(), r.sku.clone()));
            rows.extend(page.items);
            if done {
                break;
            }
        }
        let position = log_offset.unwrap_or(0);
        // Read after the stock pages: configuration only ever moves forward, and events
        // of it after `position` carry versions that the view then skips as stale.
        let channels = self
            .ledger
            .channel_snapshot()
            .await
            .map_err(|e| StepError::Retry(e.into()))?;
        self.db(move |store| {
            let tx = store.transaction()?;
            store::view_reset(&tx)?;
            store::forget_applied(&tx)?;
            for row in &rows {
                store::view_load(&tx, row)?;
            }
            store::config_load(&tx, &channels)?;
            store::set_position(&tx, position, None)?;
            tx.commit()
        })
        .await?;
        tracing::info!(consumer.name = %self.config.name, position, "view rebuilt from a snapshot");
        self.moved_to(position).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::runtime::testing::{until, MemLog, Recorder};
    use crate::runtime::{start, ConsumerConfig};
    use crate::source::{EventSource, LedgerSource};
    use crate::SourceError;

    /// A bus that lost offsets 3 to 5: it never hands them out.
    struct Lossy(LedgerSource);

    #[async_trait]
    impl EventSource for Lossy {
        async fn fetch(
            &self,
            position: i64,
            max: usize,
            wait: Duration,
        ) -> Result<Vec<LoggedEvent>, SourceError> {
            let mut events = self.0.fetch(position, max, wait).await?;
            events.retain(|e| !(3..=5).contains(&e.offset));
            Ok(events)
        }

        fn kind(&self) -> &'static str {
            "lossy"
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hole_the_source_leaves_is_read_from_the_ledgers_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = MemLog::new();
        for v in 1..=8 {
            log.append("A", v);
        }
        let sink = Arc::new(Recorder::default());
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let (handle, run) = start(
            ConsumerConfig::new("webhook", dir.path().join("webhook.db")),
            sink.clone(),
            log.clone(),
            Arc::new(Lossy(LedgerSource(log.clone()))),
            shutdown,
        )
        .unwrap();
        tokio::spawn(run);
        until("caught up", || handle.status().position == 8).await;
        assert_eq!(
            *sink.0.lock().unwrap(),
            (1..=8).collect::<Vec<_>>(),
            "the lost events were read from the log, in order"
        );
    }

    /// A bus that hands out nothing (a stream electing a new leader, say), or fails
    /// every fetch (a bus that is down).
    struct Stalled {
        fails: bool,
    }

    #[async_trait]
    impl EventSource for Stalled {
        async fn fetch(
            &self,
            _position: i64,
            _max: usize,
            wait: Duration,
        ) -> Result<Vec<LoggedEvent>, SourceError> {
            tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
            if self.fails {
                Err(SourceError::new(std::io::Error::other("no stream leader")))
            } else {
                Ok(Vec::new())
            }
        }

        fn long_polls(&self) -> bool {
            true
        }

        fn kind(&self) -> &'static str {
            "stalled"
        }
    }

    /// The log is the record, the bus a fast path: a consumer whose bus stays silent
    /// (or keeps failing) while the log's head moves on reads the log itself, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_whose_bus_stalls_reads_the_ledgers_log() {
        for fails in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let log = MemLog::new();
            for v in 1..=6 {
                log.append("A", v);
            }
            let sink = Arc::new(Recorder::default());
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            let (handle, run) = start(
                ConsumerConfig::new("webhook", dir.path().join("webhook.db")),
                sink.clone(),
                log.clone(),
                Arc::new(Stalled { fails }),
                shutdown,
            )
            .unwrap();
            tokio::spawn(run);
            until("caught up through the log", || {
                handle.status().position == 6
            })
            .await;
            // And it keeps following the log while the bus stays so.
            log.append("A", 7);
            until("the next event too", || handle.status().position == 7).await;
            assert_eq!(
                *sink.0.lock().unwrap(),
                (1..=7).collect::<Vec<_>>(),
                "bus fails: {fails}"
            );
        }
    }
}
