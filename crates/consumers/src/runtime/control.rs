//! What operators ask of a running consumer: replay from an offset or a time, and
//! redrive a dead letter.

use chrono::{DateTime, Utc};
use invsync_core::CloudEvent;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::*;

/// Where a replay starts.
#[derive(Debug, Clone, Copy)]
pub enum ReplayFrom {
    Offset(i64),
    Time(DateTime<Utc>),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("offset {requested} is past retention; the oldest retained offset is {oldest}")]
    Gone { requested: i64, oldest: i64 },
    #[error("dead letter not found")]
    NotFound,
    /// A shared consumer is replayed on the instance that works it.
    #[error("the {0} consumer is shared and works on the instance that leads; this one does not now: send the request to the leader")]
    Elsewhere(String),
    /// The consumer's machinery failed (its store, the ledger).
    #[error("{0}")]
    Failed(#[from] ConsumerError),
    /// The redelivery was tried and failed again: the receiver's answer.
    #[error("redelivery failed: {0}")]
    Redelivery(String),
    #[error("the dead letter is not a valid event: {0}")]
    InvalidDeadLetter(String),
    #[error("the consumer has stopped")]
    Stopped,
}

pub(super) enum Command {
    Replay(ReplayFrom, oneshot::Sender<Result<(), ControlError>>),
    Redrive(Uuid, oneshot::Sender<Result<(), ControlError>>),
}

impl Runner {
    pub(super) async fn handle(&mut self, command: Command) {
        match command {
            Command::Replay(from, reply) => {
                let result = self.replay(from).await;
                let _ = reply.send(result);
            }
            Command::Redrive(id, reply) => {
                let result = self.redrive(id).await;
                if let Err(error) = &result {
                    tracing::warn!(dead_letter.id = %id, consumer.name = %self.config.name, %error, "redrive failed");
                }
                let _ = reply.send(result);
            }
        }
    }

    pub(super) async fn replay(&mut self, from: ReplayFrom) -> Result<(), ControlError> {
        if self.config.shared.is_some() && !self.active() {
            return Err(ControlError::Elsewhere(self.config.name.clone()));
        }
        let from = match from {
            ReplayFrom::Offset(offset) => offset.max(1),
            ReplayFrom::Time(since) => self
                .ledger
                .offset_at(since)
                .await
                .map_err(ConsumerError::from)?,
        };
        let page = self
            .ledger
            .events(0, 1)
            .await
            .map_err(ConsumerError::from)?;
        if from < page.oldest_offset && !self.sink.keeps_view() {
            return Err(ControlError::Gone {
                requested: from,
                oldest: page.oldest_offset,
            });
        }
        tracing::info!(consumer.name = %self.config.name, from, "replay requested");
        if self.sink.keeps_view() {
            return self.rebuild().await.map_err(step_failed);
        }
        let position = from - 1;
        self.db(move |store| {
            let tx = store.transaction()?;
            store::forget_applied(&tx)?;
            store::set_position(&tx, position, None)?;
            tx.commit()
        })
        .await
        .map_err(step_failed)?;
        if let Some(shared) = &self.config.shared {
            let term = self.shared().term.clone();
            shared
                .set(position, term.as_ref())
                .await
                .map_err(ConsumerError::from)?;
        }
        self.moved_to(position).await.map_err(step_failed)
    }

    pub(super) async fn redrive(&mut self, id: Uuid) -> Result<(), ControlError> {
        let found = self
            .db(move |store| store.dead_letter(id))
            .await
            .map_err(step_failed)?;
        let Some((offset, envelope, attempts)) = found else {
            return Err(ControlError::NotFound);
        };
        let event = CloudEvent::parse(envelope.as_bytes())
            .map_err(|e| ControlError::InvalidDeadLetter(e.to_string()))?;
        let incoming = Incoming {
            offset,
            event: event.data,
            envelope,
        };
        // A redrive gets a bounded number of attempts: an operator is waiting.
        let policy = RetryPolicy {
            transient_attempts: Some(self.config.retry.transient_attempts.unwrap_or(5)),
            ..self.config.retry.clone()
        };
        let outcome = if self.sink.delivers() {
            deliver_with_retry(
                self.sink.as_ref(),
                &policy,
                &incoming,
                &self.shutdown,
                &self.shared,
                None,
            )
            .await
            .map_err(step_failed)?
        } else {
            Outcome::Delivered
        };
        let sink = self.sink.clone();
        let result = self
            .db(move |store| {
                let tx = store.transaction()?;
                match &outcome {
                    Outcome::Delivered => {
                        if sink.keeps_view() {
                            store::view_apply(&tx, &incoming.event)?;
                        }
                        store::delete_dead_letter(&tx, id)?;
                    }
                    // (Without a deadline nothing is parked.)
                    Outcome::Dead {
                        attempts: more,
                        error,
                    }
                    | Outcome::Parked {
                        attempts: more,
                        error,
                        ..
                    } => {
                        store::dead_letter_failed_again(
                            &tx,
                            id,
                            attempts + i64::from(*more),
                            error,
                        )?;
                    }
                }
                tx.commit()?;
                Ok(outcome)
            })
            .await
            .map_err(step_failed)?;
        match result {
            Outcome::Delivered => {
                self.shared().dead_letters -= 1;
                self.publish_gauges();
                tracing::info!(consumer.name = %self.config.name, dead_letter.id = %id, "dead letter redriven");
                Ok(())
            }
            Outcome::Dead { error, .. } | Outcome::Parked { error, .. } => {
                Err(ControlError::Redelivery(error))
            }
        }
    }
}

/// A control command that ran into a failed step.
fn step_failed(e: StepError) -> ControlError {
    match e {
        StepError::Retry(e) => ControlError::Failed(e),
        StepError::Stopping | StepError::Deposed => ControlError::Stopped,
    }
}
