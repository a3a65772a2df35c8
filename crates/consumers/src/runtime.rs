//! The consumer runtime every consumer uses.
//!
//! It reads events after its position in batches from an [`EventSource`] — the
//! ledger's log, woken by the ledger's head notification (with a fallback poll), or a
//! bus that long-polls. A hole in what the source hands out (a bus that lost or aged
//! out messages) is filled from the ledger's log, the durable record. Events already applied are skipped (by
//! event_id, and by per-(store, sku) version, so a stale or repeated event never moves
//! a view backwards). The sink's external effect (an HTTP delivery) runs per SKU in
//! version order, SKUs in parallel, with retries. Then one transaction of the
//! consumer's own store writes the sink's view, the dedup marks, the dead letters and
//! the checkpoint together: a crash before that commit redoes the batch, and after it
//! nothing is applied twice.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use invsync_core::CloudEvent;
use invsync_ledger::{Ledger, LoggedEvent};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::retry::RetryPolicy;
use crate::source::{DeadLetterNote, EventSource};
use crate::stats::Latencies;
use crate::store::{self, Store, StoreReader};
use crate::{Failure, Incoming, Sink};

/// How often a source hears that fetched events are still being delivered.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How one consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The consumer's name (`storefront`, `webhook`): in metrics, the API, its store.
    pub name: String,
    /// Its store file.
    pub path: PathBuf,
    /// Most events read and committed together.
    pub batch: usize,
    /// Most SKUs delivered in parallel (events of one SKU are always sequential).
    pub parallelism: usize,
    pub retry: RetryPolicy,
    /// Events applied later than this after they occurred count as SLA breaches.
    pub sla: Duration,
    /// Fallback poll when no head notification arrives (how long a bus long-polls).
    pub poll: Duration,
    /// When given, the consumer works only while it reads `true` (a consumer shared by
    /// several instances runs on the one that leads).
    pub active: Option<watch::Receiver<bool>>,
}

impl ConsumerConfig {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            batch: 1000,
            parallelism: 32,
            retry: RetryPolicy::default(),
            sla: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            active: None,
        }
    }
}

/// What `/v1/consumers` shows of a consumer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    /// The last offset applied (or dead-lettered).
    pub position: i64,
    pub lag_events: i64,
    pub lag_seconds: f64,
    pub dead_letters: i64,
    pub sync_latency_p50_ms: Option<f64>,
    pub sync_latency_p99_ms: Option<f64>,
    /// The time of the last event applied: the view is current up to here.
    pub as_of: Option<DateTime<Utc>>,
    /// The last error that stopped progress, until progress resumes.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    position: i64,
    /// When the oldest event not yet applied occurred (`None` when caught up): lag in
    /// seconds is measured from it at the moment it is asked for, so a consumer stuck
    /// retrying shows its lag growing.
    oldest_pending: Option<DateTime<Utc>>,
    dead_letters: i64,
    as_of: Option<DateTime<Utc>>,
    last_error: Option<String>,
    latencies: Latencies,
}

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
    #[error("{0}")]
    Failed(String),
}

enum Command {
    Replay(ReplayFrom, oneshot::Sender<Result<(), ControlError>>),
    Redrive(Uuid, oneshot::Sender<Result<(), ControlError>>),
}

/// A running consumer, as the API and the supervisor see it.
#[derive(Clone)]
pub struct ConsumerHandle {
    name: String,
    commands: mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
    /// The ledger's last committed offset, live.
    head: watch::Receiver<i64>,
    source: Arc<dyn EventSource>,
    reader: StoreReader,
}

impl ConsumerHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    pub fn status(&self) -> ConsumerStatus {
        let head = *self.head.borrow();
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        ConsumerStatus {
            name: self.name.clone(),
            position: s.position,
            lag_events: lag_events(self.source.as_ref(), head, s.position),
            lag_seconds: lag_seconds(s.oldest_pending),
            dead_letters: s.dead_letters,
            sync_latency_p50_ms: s.latencies.quantile(0.50),
            sync_latency_p99_ms: s.latencies.quantile(0.99),
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
            .map_err(|_| ControlError::Failed("the consumer has stopped".into()))?;
        rx.await
            .map_err(|_| ControlError::Failed("the consumer has stopped".into()))?
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

    /// Does this consumer hold that dead letter?
    pub async fn holds_dead_letter(&self, id: Uuid) -> Result<bool, String> {
        self.reader
            .read(move |c| {
                c.prepare("SELECT 1 FROM dead_letters WHERE id = ?1")?
                    .exists([id.as_bytes()])
            })
            .await
    }
}

/// Opens a consumer's store and returns its handle and the future that runs it until
/// `shutdown` turns true (the caller's supervisor spawns it).
pub fn start(
    config: ConsumerConfig,
    sink: Arc<dyn Sink>,
    ledger: Arc<dyn Ledger>,
    source: Arc<dyn EventSource>,
    shutdown: watch::Receiver<bool>,
) -> Result<(ConsumerHandle, futures::future::BoxFuture<'static, ()>), String> {
    let store = Store::open(&config.path, sink.schema()).map_err(|e| {
        format!(
            "opening the {} store at {}: {e}",
            config.name,
            config.path.display()
        )
    })?;
    let (position, as_of) = store.position().map_err(|e| e.to_string())?;
    let dead_letters = store.count_dead_letters().map_err(|e| e.to_string())?;
    let shared = Arc::new(Mutex::new(Shared {
        position,
        as_of,
        dead_letters,
        ..Shared::default()
    }));
    let (commands, rx) = mpsc::channel(16);
    let handle = ConsumerHandle {
        name: config.name.clone(),
        commands,
        shared: shared.clone(),
        head: ledger.subscribe(),
        source: source.clone(),
        reader: StoreReader::new(config.path.clone(), config.name.clone()),
    };
    let runner = Runner {
        head: ledger.subscribe(),
        config,
        sink,
        ledger,
        source,
        store: Arc::new(Mutex::new(store)),
        shared,
        commands: rx,
        shutdown,
        position,
    };
    Ok((handle, Box::pin(runner.run())))
}

struct Runner {
    config: ConsumerConfig,
    sink: Arc<dyn Sink>,
    ledger: Arc<dyn Ledger>,
    source: Arc<dyn EventSource>,
    store: Arc<Mutex<Store>>,
    shared: Arc<Mutex<Shared>>,
    commands: mpsc::Receiver<Command>,
    head: watch::Receiver<i64>,
    shutdown: watch::Receiver<bool>,
    position: i64,
}

enum Step {
    Progress,
    Idle,
}

/// Why a batch was not committed.
#[derive(Debug)]
enum StepError {
    /// Retry after a pause (ledger or store unavailable, …).
    Retry(String),
    /// Shutting down mid-batch: leave it uncommitted; it is redone after restart.
    Stopping,
}

#[derive(Debug)]
enum Outcome {
    Delivered,
    Dead { attempts: u32, error: String },
}

impl Runner {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs `f` on the store in a blocking task.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StepError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut store)
        })
        .await
        .map_err(|e| StepError::Retry(format!("store task failed: {e}")))?
        .map_err(|e| StepError::Retry(format!("consumer store: {e}")))
    }

    async fn run(mut self) {
        tracing::info!(consumer = %self.config.name, position = self.position, source = self.source.kind(), "consumer started");
        // Counters appear on /metrics from the start, not only after the first breach.
        metrics::counter!("invsync_sla_breaches_total", "consumer" => self.config.name.clone())
            .increment(0);
        self.publish_gauges();
        let mut failures = 0u32;
        loop {
            if self.stopping() {
                break;
            }
            while let Ok(command) = self.commands.try_recv() {
                self.handle(command).await;
            }
            if !self.active() {
                self.wait(self.config.poll).await;
                continue;
            }
            match self.step().await {
                Ok(Step::Progress) => {
                    failures = 0;
                    self.shared().last_error = None;
                }
                Ok(Step::Idle) => {
                    failures = 0;
                    self.shared().last_error = None;
                    if !self.source.long_polls() {
                        self.wait(self.config.poll).await;
                    }
                }
                Err(StepError::Stopping) => break,
                Err(StepError::Retry(error)) => {
                    failures += 1;
                    tracing::warn!(consumer = %self.config.name, %error, "consumer batch failed; retrying");
                    self.shared().last_error = Some(error);
                    let pause = self
                        .config
                        .retry
                        .backoff(failures)
                        .max(Duration::from_millis(50));
                    self.wait(pause).await;
                }
            }
        }
        tracing::info!(consumer = %self.config.name, "consumer stopped");
    }

    /// Whether this consumer is to work now (see [`ConsumerConfig::active`]).
    fn active(&self) -> bool {
        self.config.active.as_ref().is_none_or(|a| *a.borrow())
    }

    /// Waits for new events, a command, shutdown, a change of activity, or `timeout`.
    async fn wait(&mut self, timeout: Duration) {
        let mut active = self.config.active.clone();
        let activity = async move {
            match active.as_mut() {
                // A closed channel never changes again: wait forever, not at once.
                Some(a) => {
                    if a.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Ok(()) = self.head.changed() => {}
            _ = activity => {}
            Some(command) = self.commands.recv() => self.handle(command).await,
            Ok(()) = self.shutdown.changed() => {}
            _ = tokio::time::sleep(timeout) => {}
        }
    }

    async fn step(&mut self) -> Result<Step, StepError> {
        let fetched = self
            .source
            .fetch(self.position, self.config.batch, self.config.poll)
            .await
            .map_err(StepError::Retry)?;
        let Some(events) = self.contiguous(fetched).await? else {
            return Ok(Step::Progress);
        };
        let Some(last) = events.last().map(|e| e.offset) else {
            self.shared().oldest_pending = None;
            self.publish_gauges();
            return Ok(Step::Idle);
        };

        // Parse and validate: an event that is not a valid v1 envelope can never be
        // applied, so it goes straight to the dead letters.
        let mut incoming = Vec::with_capacity(events.len());
        let mut invalid = Vec::new();
        for logged in events {
            match CloudEvent::parse(logged.envelope.as_bytes()) {
                Ok(envelope) => incoming.push(Incoming {
                    offset: logged.offset,
                    event: envelope.data,
                    envelope: logged.envelope,
                }),
                Err(e) => invalid.push((logged.offset, logged.envelope, e.to_string())),
            }
        }
        if let Some(first) = incoming.first() {
            self.shared().oldest_pending = Some(first.event.occurred_at);
        }

        let fresh = self.fresh(incoming).await?;
        let outcomes = self.deliver(&fresh).await?;
        let as_of = fresh.last().map(|e| e.event.occurred_at);
        let sink = self.sink.clone();
        let keep_marks_from = last - 10 * self.config.batch as i64;
        let batch = Batch {
            settled: fresh.into_iter().zip(outcomes).collect(),
            invalid,
            last,
            as_of,
            keep_marks_from,
        };
        let (dead, batch) = self
            .db(move |store| Ok((commit(store, sink.as_ref(), &batch)?, batch)))
            .await?;
        // Recorded in our store first: if the source does not hear of it (a crash, the
        // bus down), it hands the batch out again and the marks skip it.
        if let Err(error) = self.source.commit(last).await {
            tracing::debug!(consumer = %self.config.name, %error, "the source did not take the commit; it will redeliver");
        }
        self.note_dead_letters(&batch).await;

        // Sync latency: from when the change happened to now, when it is applied.
        let applied_at = Utc::now();
        let name = self.config.name.clone();
        let mut shared = self.shared();
        for (event, outcome) in &batch.settled {
            if let Outcome::Delivered = outcome {
                let seconds = (applied_at - event.event.occurred_at)
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1e6;
                shared.latencies.record(seconds * 1000.0);
                metrics::histogram!("invsync_sync_latency_seconds", "consumer" => name.clone())
                    .record(seconds);
                if seconds > self.config.sla.as_secs_f64() {
                    metrics::counter!("invsync_sla_breaches_total", "consumer" => name.clone())
                        .increment(1);
                }
            }
        }
        shared.position = last;
        shared.oldest_pending = None;
        shared.dead_letters += dead;
        if as_of.is_some() {
            shared.as_of = as_of;
        }
        drop(shared);
        self.position = last;
        self.publish_gauges();
        if dead > 0 {
            tracing::warn!(consumer = %name, dead_letters = dead, "events moved to the dead letters");
        }
        Ok(Step::Progress)
    }

    /// Events after the position without a hole. A hole (a bus that lost or aged out
    /// messages) is filled from the ledger's log; when the log no longer has it either,
    /// the consumer fell behind retention, which is handled here (`None`).
    async fn contiguous(
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
            .map_err(|e| StepError::Retry(e.to_string()))?;
        if next < page.oldest_offset {
            self.fell_behind(page.oldest_offset).await?;
            return Ok(None);
        }
        let Some(first) = first else {
            return Ok(Some(fetched));
        };
        tracing::warn!(consumer = %self.config.name, from = next, to = first - 1, "the source skipped events; reading them from the ledger's log");
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

    /// Tells the source about the batch's dead letters (a bus may keep its own).
    async fn note_dead_letters(&self, batch: &Batch) {
        let settled = batch.settled.iter().filter_map(|(e, o)| match o {
            Outcome::Dead { attempts, error } => {
                Some((e.offset, e.envelope.as_str(), *attempts, error.as_str()))
            }
            Outcome::Delivered => None,
        });
        let invalid = batch
            .invalid
            .iter()
            .map(|(offset, envelope, error)| (*offset, envelope.as_str(), 1, error.as_str()));
        for (offset, envelope, attempts, error) in settled.chain(invalid) {
            let note = DeadLetterNote {
                consumer: &self.config.name,
                offset,
                envelope,
                attempts,
                error,
            };
            if let Err(e) = self.source.dead_letter(note).await {
                tracing::warn!(consumer = %self.config.name, log.offset = offset, error = %e, "the bus did not take the dead letter; the consumer's store keeps it");
            }
        }
    }

    fn publish_gauges(&self) {
        let status = {
            let s = self.shared();
            let head = *self.head.borrow();
            (
                lag_events(self.source.as_ref(), head, s.position),
                lag_seconds(s.oldest_pending),
                s.dead_letters,
            )
        };
        let name = self.config.name.clone();
        metrics::gauge!("invsync_consumer_lag_events", "consumer" => name.clone())
            .set(status.0 as f64);
        metrics::gauge!("invsync_consumer_lag_seconds", "consumer" => name.clone()).set(status.1);
        metrics::gauge!("invsync_dead_letters", "consumer" => name).set(status.2 as f64);
    }

    /// Drops events already applied: by event_id, or by a version not above the last
    /// one applied for the key (including earlier events of this same batch).
    async fn fresh(&self, incoming: Vec<Incoming>) -> Result<Vec<Incoming>, StepError> {
        self.db(move |store| filter_fresh(store, incoming)).await
    }

    /// Runs the sink's external effect: per SKU in order, SKUs in parallel.
    async fn deliver(&self, events: &[Incoming]) -> Result<Vec<Outcome>, StepError> {
        if !self.sink.delivers() {
            return Ok(events.iter().map(|_| Outcome::Delivered).collect());
        }
        let mut by_sku: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            by_sku
                .entry(e.event.product_sku.as_str())
                .or_default()
                .push(i);
        }
        let work = futures::stream::iter(by_sku.into_values())
            .map(|indices| async move {
                let mut out = Vec::with_capacity(indices.len());
                for i in indices {
                    out.push((i, self.deliver_one(&events[i]).await?));
                }
                Ok(out)
            })
            .buffer_unordered(self.config.parallelism.max(1))
            .collect::<Vec<Result<Vec<(usize, Outcome)>, StepError>>>();
        // Deliveries may retry for minutes: keep the source from redelivering meanwhile.
        let keep_alive = async {
            loop {
                tokio::time::sleep(KEEP_ALIVE).await;
                self.source.keep_alive().await;
            }
        };
        let results = tokio::select! {
            results = work => results,
            () = keep_alive => Vec::new(),
        };
        let mut outcomes: Vec<Option<Outcome>> = events.iter().map(|_| None).collect();
        for group in results {
            for (i, outcome) in group? {
                outcomes[i] = Some(outcome);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Delivered))
            .collect())
    }

    /// Delivers one event, retrying per the policy; gives up only into the dead
    /// letters (or when shutting down, leaving the batch to be redone).
    async fn deliver_one(&self, event: &Incoming) -> Result<Outcome, StepError> {
        if let Some(attempts) = self.source.exhausted(event.offset) {
            return Ok(Outcome::Dead {
                attempts,
                error: format!("handed out {attempts} times by the bus without ever being applied"),
            });
        }
        deliver_with_retry(
            self.sink.as_ref(),
            &self.config.retry,
            event,
            &self.shutdown,
            &self.shared,
        )
        .await
    }

    /// The log no longer holds the next event this consumer needs.
    async fn fell_behind(&mut self, oldest: i64) -> Result<(), StepError> {
        tracing::warn!(consumer = %self.config.name, position = self.position, oldest, "consumer fell behind retention");
        if self.sink.rebuilds() {
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
    async fn moved_to(&mut self, position: i64) -> Result<(), StepError> {
        self.position = position;
        self.shared().position = position;
        self.source.rewind(position).await.map_err(StepError::Retry)
    }

    /// Replaces the view with a snapshot of the ledger in one transaction (readers see
    /// the old view until it commits), then follows the log from the snapshot's offset.
    async fn rebuild(&mut self) -> Result<(), StepError> {
        let mut rows = Vec::new();
        let mut after = None;
        let mut log_offset = None;
        loop {
            let page = self
                .ledger
                .snapshot(after.clone(), 1000)
                .await
                .map_err(|e| StepError::Retry(e.to_string()))?;
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
        let sink = self.sink.clone();
        self.db(move |store| {
            let tx = store.transaction()?;
            sink.reset(&tx)?;
            store::forget_applied(&tx)?;
            for row in &rows {
                sink.load(&tx, row)?;
            }
            store::set_position(&tx, position, None)?;
            tx.commit()
        })
        .await?;
        tracing::info!(consumer = %self.config.name, position, "view rebuilt from a snapshot");
        self.moved_to(position).await
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Replay(from, reply) => {
                let result = self.replay(from).await;
                let _ = reply.send(result);
            }
            Command::Redrive(id, reply) => {
                let result = self.redrive(id).await;
                let _ = reply.send(result);
            }
        }
    }

    async fn replay(&mut self, from: ReplayFrom) -> Result<(), ControlError> {
        let failed = |e: String| ControlError::Failed(e);
        let from = match from {
            ReplayFrom::Offset(offset) => offset.max(1),
            ReplayFrom::Time(since) => self
                .ledger
                .offset_at(since)
                .await
                .map_err(|e| failed(e.to_string()))?,
        };
        let page = self
            .ledger
            .events(0, 1)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if from < page.oldest_offset && !self.sink.rebuilds() {
            return Err(ControlError::Gone {
                requested: from,
                oldest: page.oldest_offset,
            });
        }
        tracing::info!(consumer = %self.config.name, from, "replay requested");
        if self.sink.rebuilds() {
            return self.rebuild().await.map_err(|e| failed(format!("{e:?}")));
        }
        let position = from - 1;
        self.db(move |store| {
            let tx = store.transaction()?;
            store::forget_applied(&tx)?;
            store::set_position(&tx, position, None)?;
            tx.commit()
        })
        .await
        .map_err(|e| failed(format!("{e:?}")))?;
        self.moved_to(position)
            .await
            .map_err(|e| failed(format!("{e:?}")))
    }

    async fn redrive(&mut self, id: Uuid) -> Result<(), ControlError> {
        let found = self
            .db(move |store| store.dead_letter(id))
            .await
            .map_err(|e| ControlError::Failed(format!("{e:?}")))?;
        let Some((offset, envelope, attempts)) = found else {
            return Err(ControlError::NotFound);
        };
        let event = CloudEvent::parse(envelope.as_bytes()).map_err(|e| {
            ControlError::Failed(format!("the dead letter is not a valid event: {e}"))
        })?;
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
            )
            .await
            .map_err(|e| ControlError::Failed(format!("{e:?}")))?
        } else {
            Outcome::Delivered
        };
        let sink = self.sink.clone();
        let result = self
            .db(move |store| {
                let tx = store.transaction()?;
                match &outcome {
                    Outcome::Delivered => {
                        sink.apply(&tx, &incoming.event)?;
                        tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id.as_bytes()])?;
                    }
                    Outcome::Dead {
                        attempts: more,
                        error,
                    } => {
                        tx.execute(
                            "UPDATE dead_letters SET attempts = ?2, last_error = ?3 WHERE id = ?1",
                            rusqlite::params![id.as_bytes(), attempts + i64::from(*more), error],
                        )?;
                    }
                }
                tx.commit()?;
                Ok(outcome)
            })
            .await
            .map_err(|e| ControlError::Failed(format!("{e:?}")))?;
        match result {
            Outcome::Delivered => {
                self.shared().dead_letters -= 1;
                self.publish_gauges();
                tracing::info!(consumer = %self.config.name, dead_letter.id = %id, "dead letter redriven");
                Ok(())
            }
            Outcome::Dead { error, .. } => {
                Err(ControlError::Failed(format!("redelivery failed: {error}")))
            }
        }
    }
}

/// Drops events already applied: by event_id, or by a version not above the last one
/// applied for the key (including earlier events of the same batch).
fn filter_fresh(store: &Store, incoming: Vec<Incoming>) -> rusqlite::Result<Vec<Incoming>> {
    let mut newest: HashMap<(String, String), i64> = HashMap::new();
    let mut fresh = Vec::with_capacity(incoming.len());
    for e in incoming {
        let key = (
            e.event.store_id.to_string(),
            e.event.product_sku.to_string(),
        );
        if newest.get(&key).is_some_and(|v| e.event.version <= *v) {
            continue;
        }
        if store.already_applied(e.event.event_id, &key.0, &key.1, e.event.version)? {
            continue;
        }
        newest.insert(key, e.event.version);
        fresh.push(e);
    }
    Ok(fresh)
}

/// What one batch commits in the consumer's store.
struct Batch {
    /// Each event not applied before, with what delivery made of it.
    settled: Vec<(Incoming, Outcome)>,
    /// Events that are not valid v1 envelopes: (offset, stored text, why).
    invalid: Vec<(i64, String, String)>,
    /// The checkpoint after this batch: the last offset read.
    last: i64,
    /// When the last applied event occurred, if any was.
    as_of: Option<DateTime<Utc>>,
    /// Dedup marks below this offset are dropped.
    keep_marks_from: i64,
}

/// One transaction: the sink's effect and the dedup mark of every delivered event, the
/// dead letters, and the checkpoint. Returns how many events were dead-lettered.
fn commit(store: &mut Store, sink: &dyn Sink, batch: &Batch) -> rusqlite::Result<i64> {
    let tx = store.transaction()?;
    let now = Utc::now();
    let mut dead = 0;
    for (event, outcome) in &batch.settled {
        match outcome {
            Outcome::Delivered => {
                sink.apply(&tx, &event.event)?;
                store::mark_applied(
                    &tx,
                    event.event.event_id,
                    event.offset,
                    event.event.store_id.as_str(),
                    event.event.product_sku.as_str(),
                    event.event.version,
                )?;
            }
            Outcome::Dead { attempts, error } => {
                store::insert_dead_letter(
                    &tx,
                    event.offset,
                    &event.envelope,
                    *attempts,
                    error,
                    now,
                )?;
                dead += 1;
            }
        }
    }
    for (offset, envelope, error) in &batch.invalid {
        store::insert_dead_letter(&tx, *offset, envelope, 1, error, now)?;
        dead += 1;
    }
    store::set_position(&tx, batch.last, batch.as_of)?;
    store::prune_marks(&tx, batch.keep_marks_from)?;
    tx.commit()?;
    Ok(dead)
}

/// Events not yet applied: up to the ledger's head, or what the bus holds for the
/// consumer when that is more. Both are lower bounds — the bus does not count events
/// still on their way to it, and the head moves on other instances' commits — so the
/// larger one is the honest figure.
fn lag_events(source: &dyn EventSource, head: i64, position: i64) -> i64 {
    let behind = (head - position).max(0);
    source
        .pending()
        .map_or(behind, |pending| pending.max(behind))
}

/// Seconds since `oldest_pending` occurred; 0 when nothing is pending.
fn lag_seconds(oldest_pending: Option<DateTime<Utc>>) -> f64 {
    oldest_pending.map_or(0.0, |t| {
        (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
    })
}

async fn deliver_with_retry(
    sink: &dyn Sink,
    policy: &RetryPolicy,
    event: &Incoming,
    shutdown: &watch::Receiver<bool>,
    shared: &Mutex<Shared>,
) -> Result<Outcome, StepError> {
    let mut attempt = 0u32;
    let mut permanent = 0u32;
    loop {
        attempt += 1;
        let mut pause = policy.backoff(attempt);
        let error = match sink.deliver(event).await {
            Ok(()) => return Ok(Outcome::Delivered),
            Err(Failure::Permanent(error)) => {
                permanent += 1;
                if permanent >= policy.permanent_attempts {
                    return Ok(Outcome::Dead {
                        attempts: attempt,
                        error,
                    });
                }
                error
            }
            Err(Failure::Transient(error)) | Err(Failure::Later { error, .. })
                if policy.transient_attempts.is_some_and(|max| attempt >= max)
                    || policy.dead_after.is_some_and(|age| {
                        (Utc::now() - event.event.occurred_at)
                            .to_std()
                            .is_ok_and(|old| old >= age)
                    }) =>
            {
                return Ok(Outcome::Dead {
                    attempts: attempt,
                    error,
                });
            }
            Err(Failure::Transient(error)) => error,
            Err(Failure::Later { error, after }) => {
                // Never sooner than the receiver asked.
                pause = pause.max(after.min(crate::retry::MAX_RETRY_AFTER));
                error
            }
        };
        tracing::debug!(log.offset = event.offset, attempt, %error, "delivery failed; will retry");
        // Shown by /v1/consumers and the dashboard while the retries go on.
        shared.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some(format!(
            "delivering offset {} (attempt {attempt}): {error}",
            event.offset
        ));
        let mut shutdown = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|s| *s) => return Err(StepError::Stopping),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use invsync_core::InventoryEventV1;

    use super::*;
    use crate::storefront::{Storefront, StorefrontReader};

    /// A sink that answers `Later` (Retry-After) once, then accepts.
    struct ThrottledOnce(AtomicUsize, Duration);

    #[async_trait::async_trait]
    impl Sink for ThrottledOnce {
        fn delivers(&self) -> bool {
            true
        }
        async fn deliver(&self, _event: &Incoming) -> Result<(), Failure> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(Failure::Later {
                    error: "HTTP 503: busy".into(),
                    after: self.1,
                });
            }
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_is_waited_out_and_capped() {
        let (_stop, shutdown) = watch::channel(false);
        let shared = Mutex::new(Shared::default());
        for (asked, waited_at_least, at_most) in [
            (
                Duration::from_secs(7),
                Duration::from_secs(7),
                Duration::from_secs(8),
            ),
            (
                Duration::from_secs(86_400),
                crate::retry::MAX_RETRY_AFTER,
                crate::retry::MAX_RETRY_AFTER + Duration::from_secs(1),
            ),
        ] {
            let sink = ThrottledOnce(AtomicUsize::new(0), asked);
            let started = tokio::time::Instant::now();
            let outcome = deliver_with_retry(
                &sink,
                &RetryPolicy::default(),
                &event(1, 1),
                &shutdown,
                &shared,
            )
            .await
            .unwrap();
            assert!(matches!(outcome, Outcome::Delivered));
            let waited = started.elapsed();
            assert!(
                waited >= waited_at_least && waited < at_most,
                "asked {asked:?}, waited {waited:?}"
            );
            assert_eq!(sink.0.load(Ordering::SeqCst), 2);
        }
    }

    /// Always a transient failure.
    struct Down;

    #[async_trait::async_trait]
    impl Sink for Down {
        fn delivers(&self) -> bool {
            true
        }
        async fn deliver(&self, _event: &Incoming) -> Result<(), Failure> {
            Err(Failure::Transient("HTTP 503: down".into()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_older_than_dead_after_is_dead_lettered() {
        let (_stop, shutdown) = watch::channel(false);
        let shared = Mutex::new(Shared::default());
        let policy = RetryPolicy {
            dead_after: Some(Duration::from_secs(60)),
            ..RetryPolicy::default()
        };
        let mut old = event(1, 1);
        old.event.occurred_at = Utc::now() - chrono::TimeDelta::seconds(61);
        let outcome = deliver_with_retry(&Down, &policy, &old, &shutdown, &shared)
            .await
            .unwrap();
        assert!(
            matches!(outcome, Outcome::Dead { attempts: 1, ref error } if error.contains("503")),
            "{outcome:?}"
        );
        // A young event under the same policy is retried (and here then delivered).
        let young = ThrottledOnce(AtomicUsize::new(0), Duration::from_secs(1));
        let outcome = deliver_with_retry(&young, &policy, &event(2, 1), &shutdown, &shared)
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Delivered));
    }

    /// The storefront, counting how often it applies an event.
    struct Counting(AtomicUsize);

    impl Sink for Counting {
        fn schema(&self) -> &'static str {
            Storefront.schema()
        }
        fn apply(
            &self,
            tx: &rusqlite::Transaction<'_>,
            e: &InventoryEventV1,
        ) -> rusqlite::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Storefront.apply(tx, e)
        }
    }

    fn event(version: i64, available: i64) -> Incoming {
        crate::test_event(version, available)
    }

    fn run_batch(store: &mut Store, sink: &Counting, batch: Vec<Incoming>, last: i64) {
        let fresh = filter_fresh(store, batch).unwrap();
        let batch = Batch {
            settled: fresh.into_iter().map(|e| (e, Outcome::Delivered)).collect(),
            invalid: Vec::new(),
            last,
            as_of: None,
            keep_marks_from: 0,
        };
        commit(store, sink, &batch).unwrap();
    }

    #[tokio::test]
    async fn a_duplicate_or_stale_event_changes_the_view_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storefront.db");
        let sink = Counting(AtomicUsize::new(0));
        let mut store = Store::open(&path, sink.schema()).unwrap();
        let (v1, v2) = (event(1, 10), event(2, 7));

        // The same events twice in one batch, then again in the next batch.
        run_batch(
            &mut store,
            &sink,
            vec![v1.clone(), v2.clone(), v1.clone(), v2.clone()],
            2,
        );
        run_batch(&mut store, &sink, vec![v1.clone(), v2.clone()], 2);
        // An old version with a new event id after the newer one.
        run_batch(&mut store, &sink, vec![event(1, 99)], 3);
        assert_eq!(
            sink.0.load(Ordering::SeqCst),
            2,
            "each change applied exactly once"
        );

        let reader = StorefrontReader::new(StoreReader::new(path, "storefront".into()));
        let view = reader.availability("A".into()).await.unwrap();
        assert_eq!(
            (view[0].available, view[0].version),
            (7, 2),
            "never moved backwards"
        );
        assert_eq!(store.position().unwrap().0, 3);
    }
}
