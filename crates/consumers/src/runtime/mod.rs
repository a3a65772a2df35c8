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
//!
//! A SKU whose delivery keeps failing is parked (`parked`): its events wait in the
//! store for a side loop while the checkpoint moves on for every other SKU.
//!
//! - this module: the loop — fetch, deduplicate, deliver, commit;
//! - `delivery`: per-SKU delivery with retries and the park deadline;
//! - `parked`: the parked SKUs and the side loop that drains them;
//! - `gap`: holes in what the source hands out, and falling behind retention;
//! - `control`: replay and redrive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use invsync_ledger::EventLog;
use tokio::sync::{mpsc, watch};

use crate::retry::RetryPolicy;
use crate::source::{DeadLetterNote, EventSource};
use crate::stats::Latencies;
use crate::store::{self, Store, StoreReader};
use crate::{ConsumerError, Incoming, Sink};
use invsync_ledger::{LoggedEvent, Term, Turn};

mod classify;
mod commit;
mod config;
mod control;
mod delivery;
mod gap;
mod handle;
mod parked;
mod shared;
#[cfg(test)]
mod testing;

use classify::classify;
use commit::{filter_fresh, Batch};
pub use config::{ConsumerConfig, ConsumerStatus, Partition, SharedPosition, Superseded};
use control::Command;
pub use control::{ControlError, ReplayFrom};
use delivery::deliver_with_retry;
pub use handle::ConsumerHandle;
use parked::{Hold, Parking, Retrier};

/// The window of the sync latency quantiles `/v1/consumers` reports.
const FIVE_MINUTES: Duration = Duration::from_secs(300);

/// How often a source hears that fetched events are still being delivered.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

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
    parked: i64,
    parked_skus: i64,
    /// When the oldest parked event occurred.
    oldest_parked: Option<DateTime<Utc>>,
    parked_error: Option<String>,
    /// Whether the runtime works the consumer now (see [`ConsumerConfig::active`]).
    working: bool,
    /// The lease term this turn of work was taken over under (`None` when the
    /// consumer is not switched by a lease): deliveries stop once it ends, and the
    /// shared position is fenced by it.
    term: Option<Term>,
}

impl Shared {
    /// The lease term the current turn of work runs under (see `Shared::term`).
    fn term_of(state: &Mutex<Shared>) -> Option<Term> {
        state.lock().unwrap_or_else(|e| e.into_inner()).term.clone()
    }

    /// When the oldest event not applied yet occurred, parked ones included.
    fn oldest_unapplied(&self) -> Option<DateTime<Utc>> {
        match (self.oldest_pending, self.oldest_parked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Opens a consumer's store and returns its handle and the future that runs it until
/// `shutdown` turns true (the caller's supervisor spawns it).
pub fn start(
    config: ConsumerConfig,
    sink: Arc<dyn Sink>,
    ledger: Arc<dyn EventLog>,
    source: Arc<dyn EventSource>,
    shutdown: watch::Receiver<bool>,
) -> Result<(ConsumerHandle, futures::future::BoxFuture<'static, ()>), ConsumerError> {
    let store =
        Store::open(&config.path, sink.keeps_view()).map_err(|source| ConsumerError::Open {
            name: config.name.clone(),
            path: config.path.clone(),
            source,
        })?;
    let (position, as_of) = store.position()?;
    let dead_letters = store.count_dead_letters()?;
    let parking = Parking::load(store::parked_skus(store.conn())?);
    let (parked, oldest_parked, parked_error) = store::parked_summary(store.conn())?;
    let shared = Arc::new(Mutex::new(Shared {
        position,
        as_of,
        dead_letters,
        parked,
        parked_skus: parking.skus() as i64,
        oldest_parked,
        parked_error,
        ..Shared::default()
    }));
    let store = Arc::new(Mutex::new(store));
    let (commands, rx) = mpsc::channel(16);
    let turn = Arc::new(tokio::sync::RwLock::new(()));
    let handle = ConsumerHandle {
        name: config.name.clone(),
        commands,
        shared: shared.clone(),
        head: ledger.subscribe(),
        source: source.clone(),
        reader: StoreReader::new(config.path.clone(), config.name.clone()),
        turn: turn.clone(),
        partition: config.partition,
    };
    let retrier = Retrier {
        config: config.clone(),
        sink: sink.clone(),
        store: store.clone(),
        shared: shared.clone(),
        parking: parking.clone(),
        shutdown: shutdown.clone(),
        turn: turn.clone(),
    };
    let runner = Runner {
        head: ledger.subscribe(),
        config,
        sink,
        ledger,
        source,
        store,
        shared,
        parking,
        commands: rx,
        shutdown,
        position,
        turn,
        bus_silent_since: None,
    };
    Ok((
        handle,
        Box::pin(async move {
            tokio::join!(runner.run(), retrier.run());
        }),
    ))
}

struct Runner {
    config: ConsumerConfig,
    sink: Arc<dyn Sink>,
    ledger: Arc<dyn EventLog>,
    source: Arc<dyn EventSource>,
    store: Arc<Mutex<Store>>,
    shared: Arc<Mutex<Shared>>,
    parking: Arc<Parking>,
    commands: mpsc::Receiver<Command>,
    head: watch::Receiver<i64>,
    shutdown: watch::Receiver<bool>,
    position: i64,
    turn: Arc<tokio::sync::RwLock<()>>,
    /// Since when the bus has handed out nothing (or failed) while the log's head was
    /// ahead of the position (see `gap::Runner::bypass`).
    bus_silent_since: Option<std::time::Instant>,
}

/// What the fetch stage found.
enum Fetched {
    /// A gap was being filled: go round again.
    Gap,
    /// Nothing new.
    Nothing,
    /// The next events, contiguous after the position.
    Events(Vec<LoggedEvent>),
}

enum Step {
    Progress,
    Idle,
}

/// Why a batch was not committed.
#[derive(Debug)]
enum StepError {
    /// Retry after a pause (ledger or store unavailable, …).
    Retry(ConsumerError),
    /// Shutting down mid-batch: leave it uncommitted; it is redone after restart.
    Stopping,
    /// This instance stopped leading mid-batch: leave it uncommitted for the next
    /// worker.
    Deposed,
}

#[derive(Debug)]
enum Outcome {
    Delivered,
    Dead {
        attempts: u32,
        error: String,
    },
    /// Set aside for the side loop (see [`parked`]).
    Parked {
        attempts: u32,
        permanent: u32,
        error: String,
        retry_at: DateTime<Utc>,
    },
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
        run_db(&self.store, f).await
    }

    async fn run(mut self) {
        tracing::info!(consumer.name = %self.config.name, consumer.position = self.position, consumer.source = self.source.kind(), "consumer started");
        // Counters appear on /metrics from the start, not only after the first breach.
        metrics::counter!("invsync_sla_breaches_total", "consumer" => self.config.name.clone())
            .increment(0);
        self.publish_gauges();
        let mut failures = 0u32;
        // Whether this instance works the consumer now (and has taken it over).
        let mut working = false;
        loop {
            if self.stopping() {
                break;
            }
            while let Ok(command) = self.commands.try_recv() {
                self.handle(command).await;
            }
            if !self.active() {
                if std::mem::take(&mut working) {
                    self.stand_by();
                }
                self.wait(self.config.poll).await;
                continue;
            }
            let turn = self.turn.clone();
            let _turn = turn.read().await;
            let step = if working {
                self.step().await
            } else {
                self.take_over().await.map(|()| {
                    working = true;
                    self.shared().working = true;
                    Step::Progress
                })
            };
            match step {
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
                Err(StepError::Deposed) => {
                    tracing::info!(consumer.name = %self.config.name, "no longer leading: the batch in flight is left to the next worker");
                    working = false;
                    self.stand_by();
                }
                Err(StepError::Retry(error)) => {
                    failures += 1;
                    tracing::warn!(consumer.name = %self.config.name, %error, "consumer batch failed; retrying");
                    self.shared().last_error = Some(error.to_string());
                    let pause = self
                        .config
                        .retry
                        .backoff(failures)
                        .max(Duration::from_millis(50));
                    self.wait(pause).await;
                }
            }
        }
        tracing::info!(consumer.name = %self.config.name, "consumer stopped");
    }

    /// Stops working: another instance works the consumer now. A partition's gauges
    /// read zero here (its owner reports it); a shared endpoint's stay as they were.
    fn stand_by(&mut self) {
        {
            let mut shared = self.shared();
            shared.working = false;
            shared.term = None;
        }
        if self.config.partition.is_some() {
            let name = self.config.name.clone();
            for gauge in [
                "invsync_consumer_lag_events",
                "invsync_consumer_lag_seconds",
                "invsync_consumer_parked_events",
                "invsync_dead_letters",
                "invsync_consumer_sla_breached",
            ] {
                metrics::gauge!(gauge, "consumer" => name.clone()).set(0.0);
            }
        }
    }

    /// Whether this consumer is to work now (see [`ConsumerConfig::active`]).
    fn active(&self) -> bool {
        self.config.active.as_ref().is_none_or(Turn::holds)
    }

    /// Waits for new events, a command, shutdown, a change of activity, or `timeout`.
    async fn wait(&mut self, timeout: Duration) {
        let mut active = self.config.active.clone();
        let activity = async move {
            match active.as_mut() {
                Some(a) => a.changed(timeout).await,
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

    /// One batch: fetch, deduplicate, deliver, commit.
    #[tracing::instrument(level = "debug", skip_all, fields(consumer.name = %self.config.name, consumer.position = self.position, log.offset = tracing::field::Empty))]
    /// One turn of the loop, in named stages: fetch (the bus, or the log when the bus
    /// is behind) → classify (parse once; invalid envelopes to the dead letters) →
    /// dedupe (drop what the store already applied) → deliver (with retries, parking
    /// a failing SKU) → commit (one store transaction, then the source) → account
    /// (status, gauges, logs).
    async fn step(&mut self) -> Result<Step, StepError> {
        let events = match self.fetch().await? {
            Fetched::Gap => return Ok(Step::Progress),
            Fetched::Nothing => {
                self.shared().oldest_pending = None;
                self.publish_gauges();
                return Ok(Step::Idle);
            }
            Fetched::Events(events) => events,
        };
        let Some(last) = events.last().map(|e| e.offset) else {
            return Ok(Step::Idle);
        };
        tracing::Span::current().record("log.offset", last);
        let classified = classify(
            events,
            self.config.partition,
            self.sink.keeps_view(),
            &self.config.name,
        );
        if let Some(first) = classified.incoming.first() {
            self.shared().oldest_pending = Some(first.event.occurred_at);
        }
        let fresh = self.fresh(classified.incoming).await?;
        let (outcomes, holds) = self.deliver(&fresh).await?;
        let batch = Batch::new(
            fresh,
            outcomes,
            classified.configs,
            classified.invalid,
            last,
            last - 10 * self.config.batch as i64,
            holds,
        );
        let (dead, batch) = self.commit(batch).await?;
        self.account(&batch, dead);
        Ok(Step::Progress)
    }

    /// Fetch: the next events after the position, contiguous (a gap is filled from
    /// the log first).
    async fn fetch(&mut self) -> Result<Fetched, StepError> {
        let patience = self.bus_patience();
        let fetch = self
            .source
            .fetch(self.position, self.config.batch, self.config.poll);
        let fetched = match patience {
            // The log has events the bus has not handed out yet: wait for it no
            // longer than the grace (a pull may hang for seconds while a stream
            // elects a new leader).
            Some(left) => tokio::time::timeout(left, fetch)
                .await
                .unwrap_or_else(|_| Ok(Vec::new())),
            None => fetch.await,
        };
        let fetched = self.bypass(fetched).await?;
        Ok(match self.contiguous(fetched).await? {
            None => Fetched::Gap,
            Some(events) if events.is_empty() => Fetched::Nothing,
            Some(events) => Fetched::Events(events),
        })
    }

    /// Commit: the batch's effects, dead letters and checkpoint in one store
    /// transaction; then the shared position and the source. Returns how many
    /// events were dead-lettered, and the batch.
    async fn commit(&mut self, batch: Batch) -> Result<(i64, Batch), StepError> {
        let sink = self.sink.clone();
        let last = batch.last;
        let (dead, settled, batch) = self
            .db(move |store| {
                let mut batch = batch;
                let dead = commit::commit(store, sink.as_ref(), &mut batch)?;
                Ok((dead, store::settled(store.conn())?, batch))
            })
            .await?;
        self.share_position(settled).await;
        // Recorded in our store first: if the source does not hear of it (a crash, the
        // bus down), it hands the batch out again and the marks skip it.
        if let Err(error) = self.source.commit(last).await {
            tracing::debug!(consumer.name = %self.config.name, %error, "the source did not take the commit; it will redeliver");
        }
        self.note_dead_letters(&batch).await;
        Ok((dead, batch))
    }

    /// Account: the status every reader sees (latencies, parked, dead letters, the
    /// position), the gauges, and a warning for what did not get through.
    fn account(&mut self, batch: &Batch, dead: i64) {
        let applied_at = Utc::now();
        let name = self.config.name.clone();
        let mut shared = self.shared();
        let mut parked = 0;
        for (event, outcome) in &batch.settled {
            match outcome {
                Outcome::Delivered => record_delivered(
                    &mut shared,
                    &self.config,
                    event.event.occurred_at,
                    applied_at,
                ),
                Outcome::Parked { .. } => {
                    parked += 1;
                    shared.oldest_parked = Some(
                        shared
                            .oldest_parked
                            .map_or(event.event.occurred_at, |t| t.min(event.event.occurred_at)),
                    );
                }
                Outcome::Dead { .. } => {}
            }
        }
        // The side loop recounts from the store; until then, count these in.
        shared.parked += parked;
        if parked > 0 {
            shared.parked_skus = self.parking.skus() as i64;
        }
        shared.position = batch.last;
        shared.oldest_pending = None;
        shared.dead_letters += dead;
        if batch.as_of.is_some() {
            shared.as_of = batch.as_of;
        }
        drop(shared);
        self.position = batch.last;
        self.publish_gauges();
        if dead > 0 {
            tracing::warn!(consumer.name = %name, dead_letters = dead, "events moved to the dead letters");
        }
        if parked > 0 {
            tracing::warn!(consumer.name = %name, parked, "events parked behind a SKU whose delivery keeps failing");
        }
    }

    /// Tells the source about the batch's dead letters (a bus may keep its own).
    async fn note_dead_letters(&self, batch: &Batch) {
        let settled = batch.settled.iter().filter_map(|(e, o)| match o {
            Outcome::Dead { attempts, error } => {
                Some((e.offset, e.envelope.as_str(), *attempts, error.as_str()))
            }
            Outcome::Delivered | Outcome::Parked { .. } => None,
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
                tracing::warn!(consumer.name = %self.config.name, log.offset = offset, error = %e, "the bus did not take the dead letter; the consumer's store keeps it");
            }
        }
    }

    fn publish_gauges(&self) {
        let status = {
            let s = self.shared();
            let head = *self.head.borrow();
            (
                lag_events(self.source.as_ref(), head, s.position) + s.parked,
                lag_seconds(s.oldest_unapplied()),
                s.dead_letters,
                s.parked,
            )
        };
        let name = self.config.name.clone();
        metrics::gauge!("invsync_consumer_lag_events", "consumer" => name.clone())
            .set(status.0 as f64);
        metrics::gauge!("invsync_consumer_lag_seconds", "consumer" => name.clone()).set(status.1);
        metrics::gauge!("invsync_dead_letters", "consumer" => name.clone()).set(status.2 as f64);
        metrics::gauge!("invsync_consumer_parked_events", "consumer" => name).set(status.3 as f64);
    }

    /// Drops events already applied: by event_id, or by a version not above the last
    /// one applied for the key (including earlier events of this same batch).
    async fn fresh(&self, incoming: Vec<Incoming>) -> Result<Vec<Incoming>, StepError> {
        self.db(move |store| filter_fresh(store, incoming)).await
    }
}

/// Runs `f` on the store in a blocking task, under the store's lock.
async fn run_db<T: Send + 'static>(
    store: &Arc<Mutex<Store>>,
    f: impl FnOnce(&mut Store) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, StepError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut store)
    })
    .await
    .map_err(|e| StepError::Retry(e.into()))?
    .map_err(|e| StepError::Retry(e.into()))
}

/// Sync latency of one applied event — from when the change happened to `applied_at` —
/// into the status window and the metrics, counting a late one as an SLA breach.
fn record_delivered(
    shared: &mut Shared,
    config: &ConsumerConfig,
    occurred_at: DateTime<Utc>,
    applied_at: DateTime<Utc>,
) {
    let seconds = (applied_at - occurred_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
    shared.latencies.record(seconds * 1000.0);
    let name = config.name.clone();
    metrics::histogram!("invsync_sync_latency_seconds", "consumer" => name.clone()).record(seconds);
    if seconds > config.sla.as_secs_f64() {
        metrics::counter!("invsync_sla_breaches_total", "consumer" => name).increment(1);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storefront::{Storefront, StorefrontReader};

    fn event(version: i64, available: i64) -> Incoming {
        crate::test_event(version, available)
    }

    /// Runs one batch through dedup and commit; returns how many events it applied.
    fn run_batch(store: &mut Store, batch: Vec<Incoming>, last: i64) -> usize {
        let fresh = filter_fresh(store, batch).unwrap();
        let applied = fresh.len();
        let mut batch = Batch {
            settled: fresh.into_iter().map(|e| (e, Outcome::Delivered)).collect(),
            configs: Vec::new(),
            invalid: Vec::new(),
            last,
            as_of: None,
            keep_marks_from: 0,
            holds: Vec::new(),
        };
        commit::commit(store, &Storefront, &mut batch).unwrap();
        applied
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn event_types_the_consumer_does_not_handle_are_passed_over_not_dead_lettered() {
        use crate::runtime::testing::{until, MemLog, Recorder};
        let dir = tempfile::tempdir().unwrap();
        let log = MemLog::new();
        log.append("A", 1);
        log.append_raw(r#"{"specversion":"1.0","type":"com.invsync.channel.updated.v1","data":{"channel_id":"online"}}"#);
        log.append_raw("not an envelope at all");
        log.append("A", 2);
        let sink = Arc::new(Recorder::default());
        let (_stop, shutdown) = watch::channel(false);
        let (handle, run) = start(
            ConsumerConfig::new("webhook", dir.path().join("webhook.db")),
            sink.clone(),
            log.clone(),
            Arc::new(crate::LedgerSource(log.clone())),
            shutdown,
        )
        .unwrap();
        tokio::spawn(run);
        until("caught up", || handle.status().position == 4).await;
        assert_eq!(*sink.0.lock().unwrap(), [1, 2]);
        let letters = handle.reader().dead_letters().await.unwrap();
        assert_eq!(letters.len(), 1, "only the broken envelope");
        assert_eq!(letters[0].offset, 3);
    }

    /// A delivering sink that records (sku, version) in delivery order.
    #[derive(Default)]
    struct SkuRecorder(Mutex<Vec<(String, i64)>>);

    #[async_trait::async_trait]
    impl Sink for SkuRecorder {
        fn delivers(&self) -> bool {
            true
        }
        async fn deliver(&self, event: &Incoming) -> Result<(), crate::Failure> {
            let sku = event.event.product_sku.to_string();
            self.0.lock().unwrap().push((sku, event.event.version));
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_partition_delivers_its_own_skus_and_only_works_while_active() {
        use crate::runtime::testing::{until, MemLog};
        use invsync_core::event::partition;
        let dir = tempfile::tempdir().unwrap();
        let log = MemLog::new();
        let skus: Vec<String> = (0..40).map(|i| format!("SKU-{i}")).collect();
        for version in 1..=3 {
            for sku in &skus {
                log.append(sku, version);
            }
        }
        log.append_raw("not an envelope at all");
        let head = 121;
        let (_stop, shutdown) = watch::channel(false);
        let mut runs = Vec::new();
        for index in 0..2 {
            let mut config = ConsumerConfig::new(
                format!("webhook.p{index:02}"),
                dir.path().join(format!("p{index}.db")),
            );
            config.partition = Some(Partition { index, of: 2 });
            let (switch, active) = watch::channel(None);
            config.active = Some(Turn::new(active));
            let sink = Arc::new(SkuRecorder::default());
            let (handle, run) = start(
                config,
                sink.clone(),
                log.clone(),
                Arc::new(crate::LedgerSource(log.clone())),
                shutdown.clone(),
            )
            .unwrap();
            tokio::spawn(run);
            runs.push((switch, handle, sink));
        }
        // Not active: standing by, nothing delivered.
        for (_, handle, sink) in &runs {
            handle.quiesce().await;
            assert!(handle.standing_by());
            assert!(sink.0.lock().unwrap().is_empty());
        }
        for (switch, handle, _) in &runs {
            switch.send_replace(Some(Term::forever("p")));
            until("caught up", || handle.status().position == head).await;
            assert!(!handle.standing_by());
        }
        let mut all = Vec::new();
        for (index, (_, handle, sink)) in runs.iter().enumerate() {
            let delivered = sink.0.lock().unwrap().clone();
            assert!(
                !delivered.is_empty(),
                "partition {index} has SKUs of its own"
            );
            for (sku, _) in &delivered {
                assert_eq!(
                    partition(sku, 2),
                    index as u32,
                    "{sku} in partition {index}"
                );
            }
            let letters = handle.reader().dead_letters().await.unwrap();
            let expected = if index == 0 { 1 } else { 0 };
            assert_eq!(
                letters.len(),
                expected,
                "a broken envelope is partition 0's"
            );
            all.extend(delivered);
        }
        // Together: every SKU's three versions once, in order.
        assert_eq!(all.len(), skus.len() * 3);
        for sku in &skus {
            let versions: Vec<i64> = all.iter().filter(|(s, _)| s == sku).map(|e| e.1).collect();
            assert_eq!(versions, [1, 2, 3], "{sku}");
        }
        // Switched off, a partition stops: quiesced, later events are not its own.
        let (switch, handle, sink) = &runs[0];
        switch.send_replace(None);
        handle.quiesce().await;
        // (Its main loop says so at its next turn, not at the quiesce.)
        until("partition 0 stands by", || handle.standing_by()).await;
        let before = sink.0.lock().unwrap().len();
        for sku in &skus {
            log.append(sku, 4);
        }
        let (_, other, _) = &runs[1];
        until("the other partition catches up", || {
            other.status().position == head + 40
        })
        .await;
        assert_eq!(
            sink.0.lock().unwrap().len(),
            before,
            "a standing-by partition delivers nothing"
        );
    }

    #[tokio::test]
    async fn a_duplicate_or_stale_event_changes_the_view_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storefront.db");
        let mut store = Store::open(&path, true).unwrap();
        let (v1, v2) = (event(1, 10), event(2, 7));

        // The same events twice in one batch, then again in the next batch.
        let mut applied = run_batch(
            &mut store,
            vec![v1.clone(), v2.clone(), v1.clone(), v2.clone()],
            2,
        );
        applied += run_batch(&mut store, vec![v1.clone(), v2.clone()], 2);
        // An old version with a new event id after the newer one.
        applied += run_batch(&mut store, vec![event(1, 99)], 3);
        assert_eq!(applied, 2, "each change applied exactly once");

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
