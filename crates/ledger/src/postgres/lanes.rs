//! Request coalescing for PostgreSQL: concurrent write commands share transactions.
//!
//! Each command is routed by its key — (store, first SKU) for reservations and
//! adjustments, the reservation id for release and fulfil — to one of a few *lanes*.
//! A lane is a thread that takes every command queued for it (up to `max_batch`) and
//! runs them as one unit of work ([`batch`](super::batch)): rows are read and locked
//! once, writes are buffered and written set-based, and one COMMIT answers everyone.
//! So:
//!
//! - one commit (one WAL flush) serves the whole batch instead of one per request;
//! - commands for the same hot row queue in the same lane, so the row lock is taken
//!   once per batch instead of being passed from connection to connection, and the
//!   row is written once;
//! - a refused command's buffered writes are undone before the next command runs: it
//!   never affects its neighbours, and its caller gets its own answer;
//! - commands of a batch run in arrival order, so idempotency (a repeat in the same
//!   batch sees the first) and per-key event order hold.
//!
//! A batch that loses a race with another lane (unique key, serialization failure,
//! deadlock) is rolled back and run again as a whole; nobody is answered before the
//! commit that makes their answer true. A batch whose set-based write fails for
//! another reason is run again one command per transaction, so only the command at
//! fault gets the error.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::batch::{self, BufferedTx, Prefetch};
use super::{Pool, ATTEMPTS};
use crate::clock::Clock;
use crate::engine::Engine;
use crate::error::LedgerError;

/// What a lane does with one queued command.
trait Job: Send {
    fn prefetch(&self) -> &Prefetch;
    /// Runs the command inside the batch's transaction.
    fn run(&mut self, engine: &mut Engine<'_, BufferedTx<'_, '_>>) -> Step;
    /// Answers the caller once the batch's fate is known (`Err`: it did not commit).
    fn answer(self: Box<Self>, committed: Result<(), &LedgerError>);
}

enum Step {
    /// Applied: keep its writes.
    Applied,
    /// Refused (a business answer or a bad row): undo its writes, answer it alone.
    Refused,
    /// The transaction cannot go on (lost a race, connection gone).
    Doomed(LedgerError),
}

struct Typed<T, F> {
    prefetch: Prefetch,
    f: F,
    result: Option<Result<T, LedgerError>>,
    reply: oneshot::Sender<Result<T, LedgerError>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send,
    F: FnMut(&mut Engine<'_, BufferedTx<'_, '_>>) -> Result<T, LedgerError> + Send,
{
    fn prefetch(&self) -> &Prefetch {
        &self.prefetch
    }

    fn run(&mut self, engine: &mut Engine<'_, BufferedTx<'_, '_>>) -> Step {
        self.result = None;
        match (self.f)(engine) {
            Ok(value) => {
                self.result = Some(Ok(value));
                Step::Applied
            }
            Err(e @ (LedgerError::Contention(_) | LedgerError::Unavailable(_))) => Step::Doomed(e),
            Err(e) => {
                self.result = Some(Err(e));
                Step::Refused
            }
        }
    }

    fn answer(self: Box<Self>, committed: Result<(), &LedgerError>) {
        let result = match (self.result, committed) {
            (Some(Err(refused)), _) => Err(refused),
            (Some(Ok(value)), Ok(())) => Ok(value),
            // The batch's commit may have happened: so may this command.
            (_, Err(LedgerError::OutcomeUnknown(e))) => Err(LedgerError::OutcomeUnknown(e.clone())),
            (_, Err(e)) => Err(LedgerError::Unavailable(e.to_string())),
            (None, Ok(())) => Err(LedgerError::Internal("a batched command never ran".into())),
        };
        let _ = self.reply.send(result);
    }
}

/// The lanes of one ledger. Dropping it lets the lane threads finish what is queued
/// and stop.
pub(crate) struct Lanes {
    senders: Vec<mpsc::Sender<Box<dyn Job>>>,
    units: Units,
}

/// Runs batches of jobs as units of work: what a lane needs besides its queue.
#[derive(Clone)]
struct Units {
    pool: Pool,
    clock: Arc<dyn Clock>,
    source: Arc<str>,
}

impl Lanes {
    pub(crate) fn start(
        count: usize,
        max_batch: usize,
        pool: Pool,
        clock: Arc<dyn Clock>,
        source: Arc<str>,
    ) -> Result<Self, LedgerError> {
        let units = Units {
            pool,
            clock,
            source,
        };
        let mut senders = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let (tx, rx) = mpsc::channel(4096);
            let lane = Lane {
                jobs: rx,
                units: units.clone(),
                max_batch: max_batch.max(1),
            };
            std::thread::Builder::new()
                .name(format!("ledger-lane-{i}"))
                .spawn(move || lane.run())
                .map_err(|e| LedgerError::Internal(format!("cannot start a lane: {e}")))?;
            senders.push(tx);
        }
        Ok(Self { senders, units })
    }

    /// Runs `f` alone, in its own transaction on a blocking thread: for commands no
    /// request waits on in bulk (expiry, purging, cursors).
    pub(crate) async fn alone<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnMut(&mut Engine<'_, BufferedTx<'_, '_>>) -> Result<T, LedgerError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Typed {
            prefetch: Prefetch::default(),
            f,
            result: None,
            reply,
        });
        let units = self.units.clone();
        tokio::task::spawn_blocking(move || units.settle(vec![job]))
            .await
            .map_err(|e| LedgerError::Internal(format!("write task failed: {e}")))?;
        answer
            .await
            .map_err(|_| LedgerError::Unavailable("the write was not answered".into()))?
    }

    /// Runs `f` in the batch of the lane that `key` maps to; answers after its commit.
    pub(crate) async fn run<T, F>(
        &self,
        key: impl Hash,
        prefetch: Prefetch,
        f: F,
    ) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnMut(&mut Engine<'_, BufferedTx<'_, '_>>) -> Result<T, LedgerError> + Send + 'static,
    {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let lane = &self.senders[(hasher.finish() % self.senders.len() as u64) as usize];
        let (reply, answer) = oneshot::channel();
        lane.send(Box::new(Typed {
            prefetch,
            f,
            result: None,
            reply,
        }))
        .await
        .map_err(|_| LedgerError::Unavailable("the ledger is shutting down".into()))?;
        answer
            .await
            .map_err(|_| LedgerError::Unavailable("the ledger lane stopped".into()))?
    }
}

struct Lane {
    jobs: mpsc::Receiver<Box<dyn Job>>,
    units: Units,
    max_batch: usize,
}

impl Lane {
    fn run(mut self) {
        let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(self.max_batch);
        while let Some(job) = self.jobs.blocking_recv() {
            batch.push(job);
            while batch.len() < self.max_batch {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.units.settle(std::mem::take(&mut batch));
        }
    }
}

impl Units {
    /// Commits the batch and answers every job in it.
    fn settle(&self, mut jobs: Vec<Box<dyn Job>>) {
        match self.commit(&mut jobs) {
            Err(LedgerError::Internal(e)) if jobs.len() > 1 => {
                tracing::warn!(error = %e, commands = jobs.len(), "a batch failed to write; running its commands one by one");
                for job in jobs {
                    self.settle(vec![job]);
                }
            }
            outcome => {
                for job in jobs {
                    job.answer(outcome.as_ref().map(|_| ()));
                }
            }
        }
    }

    /// Runs the batch in one transaction, retrying it whole after a lost race.
    fn commit(&self, batch: &mut [Box<dyn Job>]) -> Result<(), LedgerError> {
        let mut conn = self.pool.get()?;
        let super::PgConn { client, statements } = &mut *conn;
        let mut last_error = String::new();
        // What earlier attempts found they needed beyond the commands' prefetch.
        let mut learned = Prefetch::default();
        for _ in 0..ATTEMPTS {
            let mut tx = client.transaction()?;
            let now = self.clock.now();
            let mut state = batch::State::default();
            let mut wanted: Vec<&Prefetch> = batch.iter().map(|j| j.prefetch()).collect();
            wanted.push(&learned);
            if let Err(e) = batch::prefetch(&mut tx, statements, &mut state, &wanted) {
                match e {
                    LedgerError::Contention(e) => {
                        last_error = e;
                        continue;
                    }
                    other => return Err(other),
                }
            }
            let mut undo = Vec::new();
            let mut doomed = None;
            for job in batch.iter_mut() {
                let step = {
                    let mut btx = BufferedTx {
                        pg: &mut tx,
                        statements,
                        state: &mut state,
                        undo: &mut undo,
                        source: &self.source,
                    };
                    job.run(&mut Engine { tx: &mut btx, now })
                };
                match step {
                    Step::Applied => undo.clear(),
                    Step::Refused => batch::roll_back(&mut state, &mut undo),
                    Step::Doomed(e) => {
                        doomed = Some(e);
                        break;
                    }
                }
            }
            let result = match doomed {
                None => batch::flush(&mut tx, statements, &state, now)
                    .and_then(|()| tx.commit().map_err(LedgerError::from_commit)),
                Some(e) => Err(e),
            };
            learned.absorb(std::mem::take(&mut state.learned));
            match result {
                Err(LedgerError::Contention(e)) => last_error = e,
                other => return other,
            }
        }
        Err(LedgerError::Unavailable(format!(
            "gave up after {ATTEMPTS} collisions: {last_error}"
        )))
    }
}
