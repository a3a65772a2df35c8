//! Holes and retention: filling what a bus skipped from the ledger's log, and what a
//! consumer does when the log no longer holds the next event it needs (a rebuild from
//! a snapshot, or resuming at the oldest retained event).

use invsync_ledger::LoggedEvent;

use super::*;

impl Runner {
    /// Events after the position without a hole. A hole (a bus that lost or aged out
    /// messages) is filled from the ledger's log; when the log no longer has it either,
    /// the consumer fell behind retention, which is handled here (`None`).
    pub(super) async fn contiguous(
        &mut self,
        mut fetched: Vec<LoggedEvent>,
    ) -> Result<Option<Vec<LoggedEvent>>, StepError> {
        fetched.retain(|e| e.offset > self.position);
        let next = self.position + 1;
        let first = fetched.first().map(|e| e.offset);
        let behind = *self.head.borrow() > self.position;
        match first {
            Some(first) if first > next => {}
            // Nothing new although the head is ahead: has the log moved past us?
            None if behind => {}
            _ => return Ok(Some(fetched)),
        }
        let want = first.map_or(1, |f| ((f - next) as usize).min(self.config.batch));
        let page = self
            .ledger
            .events(self.position, want)
            .await
            .map_err(|e| StepError::Retry(e.into()))?;
        if next < page.oldest_offset {
            self.fell_behind(page.oldest_offset).await?;
            return Ok(None);
        }
        let Some(first) = first else {
            return Ok(Some(fetched));
        };
        tracing::warn!(consumer.name = %self.config.name, from = next, to = first - 1, "the source skipped events; reading them from the ledger's log");
        let mut events: Vec<LoggedEvent> = page
            .events
            .into_iter()
            .filter(|e| e.offset < first)
            .collect();
        if events.last().map(|e| e.offset) == Some(first - 1) {
            events.extend(fetched);
        }
        Ok(Some(events))
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
        self.db(move |store| {
            let tx = store.transaction()?;
            store::view_reset(&tx)?;
            store::forget_applied(&tx)?;
            for row in &rows {
                store::view_load(&tx, row)?;
            }
            store::set_position(&tx, position, None)?;
            tx.commit()
        })
        .await?;
        tracing::info!(consumer.name = %self.config.name, position, "view rebuilt from a snapshot");
        self.moved_to(position).await
    }
}
