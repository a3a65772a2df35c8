//! Failure isolation per SKU: a SKU whose delivery keeps failing is *parked* so that
//! it delays only its own later events.
//!
//! The main loop gives each event's delivery `park_after` (attempts and backoff
//! included). An event not delivered by then is written to the `parked` table of the
//! consumer's store, with every later event of its SKU in the batch, in the same
//! transaction that moves the checkpoint past them; so is every event of that SKU in
//! later batches while its queue is not empty. The checkpoint thus keeps moving for
//! every other SKU. A side loop ([`Retrier`]) tries the head of each SKU's queue when
//! it is due (backoff, `Retry-After`), drains the queue in offset order once the
//! receiver takes it, and dead-letters by the same rules as the main loop.
//!
//! Order per SKU holds because the main loop never delivers an event of a SKU that
//! has parked events *or* a park decided but not yet committed ([`Parking`] counts
//! both, and changes them only under the store's lock, in step with the table). A
//! crash loses nothing: parked rows commit with the checkpoint, and a parked event is
//! removed only after its delivery (at worst it is delivered again, with the same
//! event id, which receivers deduplicate).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use invsync_core::CloudEvent;
use tokio::sync::{watch, Notify};

use super::{record_delivered, run_db, ConsumerConfig, Shared, StepError};
use crate::retry::{RetryPolicy, Verdict};
use crate::store::{self, Attempts, Parked, Store};
use crate::{Incoming, Sink};

/// Which SKUs are parked: those with rows in the `parked` table, and those a batch in
/// flight decided to park. Shared by the main loop and the side loop.
#[derive(Default)]
pub(super) struct Parking {
    state: Mutex<ParkState>,
    /// Wakes the side loop when new events are parked.
    wake: Notify,
}

#[derive(Default)]
struct ParkState {
    /// Rows in the `parked` table per SKU.
    stored: HashMap<String, usize>,
    /// Batches in flight that park events of the SKU and have not committed.
    pending: HashMap<String, usize>,
}

impl Parking {
    pub(super) fn load(stored: Vec<(String, usize)>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(ParkState {
                stored: stored.into_iter().collect(),
                pending: HashMap::new(),
            }),
            wake: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ParkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A hold on `sku` if it is parked now: the caller must park its events too.
    pub(super) fn hold_if_parked(self: &Arc<Self>, sku: &str) -> Option<Hold> {
        let mut state = self.state();
        let parked = state.stored.get(sku).is_some_and(|n| *n > 0)
            || state.pending.get(sku).is_some_and(|n| *n > 0);
        parked.then(|| Self::take(self, &mut state, sku))
    }

    /// A hold on `sku`: from now on its events are parked until its queue drains.
    pub(super) fn hold(self: &Arc<Self>, sku: &str) -> Hold {
        let mut state = self.state();
        Self::take(self, &mut state, sku)
    }

    fn take(this: &Arc<Self>, state: &mut ParkState, sku: &str) -> Hold {
        *state.pending.entry(sku.to_owned()).or_default() += 1;
        Hold {
            parking: this.clone(),
            sku: sku.to_owned(),
            committed: false,
        }
    }

    /// One parked event of `sku` left the table (call under the store's lock).
    fn unparked(&self, sku: &str) {
        let mut state = self.state();
        if let Some(n) = state.stored.get_mut(sku) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.stored.remove(sku);
            }
        }
    }

    /// Forgets every parked SKU (their rows were dropped; call under the store's lock).
    pub(super) fn clear(&self) {
        self.state().stored.clear();
    }

    /// The number of SKUs with parked events.
    pub(super) fn skus(&self) -> usize {
        self.state().stored.len()
    }
}

/// A batch's decision to park events of one SKU. While it lives, the SKU counts as
/// parked; [`Hold::committed`] turns it into rows, dropping it uncommitted (the batch
/// failed and will be redone) just releases it.
pub(super) struct Hold {
    parking: Arc<Parking>,
    sku: String,
    committed: bool,
}

impl Hold {
    pub(super) fn sku(&self) -> &str {
        &self.sku
    }

    /// The batch committed `rows` new parked rows for the SKU (call under the store's
    /// lock, right after the commit).
    pub(super) fn committed(mut self, rows: usize) {
        let mut state = self.parking.state();
        if rows > 0 {
            *state.stored.entry(self.sku.clone()).or_default() += rows;
        }
        release(&mut state, &self.sku);
        self.committed = true;
        drop(state);
        self.parking.wake.notify_one();
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.committed {
            release(&mut self.parking.state(), &self.sku);
        }
    }
}

fn release(state: &mut ParkState, sku: &str) {
    if let Some(n) = state.pending.get_mut(sku) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            state.pending.remove(sku);
        }
    }
}

/// What the side loop made of one attempt at a parked event.
enum Settled {
    Delivered(Box<Incoming>),
    Dead {
        attempts: u32,
        error: String,
    },
    Again(u32, u32, String, DateTime<Utc>),
    /// The stored envelope does not parse (it did when parked): dead-lettered.
    Invalid(String),
}

/// The side loop: delivers parked events, the head of each SKU's queue when due.
///
/// Up to `parallelism` heads are in flight at once, and each is settled as soon as it
/// is answered, so a slow receiver answer for one SKU holds back only that SKU: the
/// others' successors are launched while it is still out.
pub(super) struct Retrier {
    pub(super) config: ConsumerConfig,
    pub(super) sink: Arc<dyn Sink>,
    pub(super) store: Arc<Mutex<Store>>,
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) parking: Arc<Parking>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) turn: Arc<tokio::sync::RwLock<()>>,
}

/// One attempt at a parked head, answered. It holds the consumer's turn from its
/// launch until it is settled, so that [`ConsumerHandle::quiesce`] waits for both.
///
/// [`ConsumerHandle::quiesce`]: super::ConsumerHandle::quiesce
struct Answered {
    offset: i64,
    /// `None`: abandoned unanswered, because the lease term it was launched under
    /// ended (the event stays parked, for whoever works the consumer now).
    settled: Option<Settled>,
    turn: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl Retrier {
    pub(super) async fn run(mut self) {
        if !self.sink.delivers() {
            return;
        }
        let limit = self.config.parallelism.max(1);
        let mut in_flight: FuturesUnordered<BoxFuture<'static, Answered>> = FuturesUnordered::new();
        let mut busy: HashSet<i64> = HashSet::new();
        let mut failures = 0u32;
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let pause = match self.launch(limit, &mut busy, &mut in_flight).await {
                Ok(pause) => pause,
                Err(StepError::Stopping) => break,
                Err(StepError::Deposed) => self.config.poll,
                Err(StepError::Retry(error)) => {
                    failures += 1;
                    tracing::warn!(consumer.name = %self.config.name, %error, "parked deliveries failed; retrying");
                    self.backoff(failures)
                }
            };
            let parking = self.parking.clone();
            let mut shutdown = self.shutdown.clone();
            let first = tokio::select! {
                Some(first) = in_flight.next(), if !in_flight.is_empty() => first,
                _ = tokio::time::sleep(pause) => continue,
                _ = parking.wake.notified() => continue,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            // Every answer already in, settled together in one transaction.
            let mut answered = vec![first];
            while let Some(Some(more)) = in_flight.next().now_or_never() {
                answered.push(more);
            }
            let mut results = Vec::with_capacity(answered.len());
            let mut turns = Vec::with_capacity(answered.len());
            for a in answered {
                busy.remove(&a.offset);
                if let Some(settled) = a.settled {
                    results.push((a.offset, settled));
                }
                turns.push(a.turn);
            }
            if results.is_empty() {
                continue;
            }
            let outcome = self.settle(results).await;
            drop(turns);
            match outcome {
                Ok(()) => failures = 0,
                Err(StepError::Stopping) => break,
                Err(StepError::Deposed) => {}
                Err(StepError::Retry(error)) => {
                    // The heads stay parked and are tried again: at worst one is
                    // delivered twice, with the same event id.
                    failures += 1;
                    tracing::warn!(consumer.name = %self.config.name, %error, "recording parked deliveries failed; retrying");
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff(failures)) => {}
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                }
            }
        }
    }

    /// Whether this process works the consumer now (always, unless it is switched by
    /// a lease). Under a lease, only while the term the main loop took over under is still
    /// the one held: a process waking past its deadline retries nothing.
    fn working(&self) -> bool {
        let Some(turn) = &self.config.active else {
            return true;
        };
        let term = Shared::term_of(&self.shared);
        term.is_some_and(|t| t.valid() && turn.current().as_ref() == Some(&t))
    }

    fn backoff(&self, failures: u32) -> Duration {
        self.config
            .retry
            .backoff(failures)
            .max(Duration::from_millis(50))
    }

    /// Launches every due queue head there is room for (those in flight, listed in
    /// `busy`, aside); returns how long to wait, at most, before looking again.
    async fn launch(
        &mut self,
        limit: usize,
        busy: &mut HashSet<i64>,
        in_flight: &mut FuturesUnordered<BoxFuture<'static, Answered>>,
    ) -> Result<Duration, StepError> {
        // A partition another process works now: nothing to try or to show.
        if !self.working() {
            return Ok(self.config.poll);
        }
        // Heads in flight stay at the front of their queues until settled: ask for
        // enough to see `limit` others.
        let want = limit + busy.len();
        let heads = run_db(&self.store, move |s| store::parked_heads(s.conn(), want)).await?;
        self.publish().await?;
        let now = Utc::now();
        // Until the soonest head not yet due; at most a second (a new park wakes us).
        let mut next = Duration::from_secs(1);
        for head in heads {
            if busy.contains(&head.offset) {
                continue;
            }
            if head.retry_at > now {
                let wait = (head.retry_at - now).to_std().unwrap_or_default();
                next = next.min(wait);
                continue;
            }
            if busy.len() >= limit {
                break;
            }
            // The turn, unless a hand-over waits for it (then this process is about
            // to stop working this consumer); and only while it is working it.
            let Ok(turn) = self.turn.clone().try_read_owned() else {
                return Ok(self.config.poll);
            };
            if !self.working() {
                return Ok(self.config.poll);
            }
            busy.insert(head.offset);
            let sink = self.sink.clone();
            let policy = self.config.retry.clone();
            let lease = self.config.active.clone();
            let term = Shared::term_of(&self.shared);
            in_flight.push(Box::pin(async move {
                let settled = match (lease, term) {
                    (Some(mut lease), Some(term)) => tokio::select! {
                        settled = attempt(sink.as_ref(), &policy, &head, Some(&term)) => Some(settled),
                        () = lease.lost(&term) => None,
                    },
                    _ => Some(attempt(sink.as_ref(), &policy, &head, None).await),
                };
                Answered {
                    offset: head.offset,
                    settled,
                    turn,
                }
            }));
        }
        Ok(next)
    }

    /// Records answered attempts in one transaction of the consumer's store.
    async fn settle(&self, results: Vec<(i64, Settled)>) -> Result<(), StepError> {
        let sink = self.sink.clone();
        let parking = self.parking.clone();
        let (results, dead, settled) = run_db(&self.store, move |s| {
            let tx = s.transaction()?;
            let now = Utc::now();
            let mut dead = 0;
            let mut gone = Vec::new();
            for (offset, settled) in &results {
                match settled {
                    Settled::Delivered(event) => {
                        if sink.keeps_view() {
                            store::view_apply(&tx, &event.event)?;
                        }
                        gone.extend(store::unpark(&tx, *offset)?);
                    }
                    Settled::Dead { attempts, error } => {
                        let envelope = store::parked_envelope(&tx, *offset)?;
                        store::insert_dead_letter(&tx, *offset, &envelope, *attempts, error, now)?;
                        gone.extend(store::unpark(&tx, *offset)?);
                        dead += 1;
                    }
                    Settled::Invalid(error) => {
                        let envelope = store::parked_envelope(&tx, *offset)?;
                        store::insert_dead_letter(&tx, *offset, &envelope, 1, error, now)?;
                        gone.extend(store::unpark(&tx, *offset)?);
                        dead += 1;
                    }
                    Settled::Again(attempts, permanent, error, retry_at) => {
                        store::reschedule(
                            &tx,
                            *offset,
                            &Attempts {
                                attempts: *attempts,
                                permanent: *permanent,
                                error,
                                retry_at: *retry_at,
                            },
                        )?;
                    }
                }
            }
            tx.commit()?;
            let any_gone = !gone.is_empty();
            for sku in gone {
                parking.unparked(&sku);
            }
            let settled = if any_gone {
                Some(store::settled(s.conn())?)
            } else {
                None
            };
            Ok((results, dead, settled))
        })
        .await?;
        if let Some(settled) = settled {
            super::shared::share_position(&self.config, &self.shared, settled).await;
        }
        let applied_at = Utc::now();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.dead_letters += dead;
        for (offset, settled) in &results {
            match settled {
                Settled::Delivered(event) => {
                    record_delivered(
                        &mut shared,
                        &self.config,
                        event.event.occurred_at,
                        applied_at,
                    );
                    tracing::debug!(consumer.name = %self.config.name, log.offset = offset, event.id = %event.event.event_id, "parked event delivered");
                }
                Settled::Dead { error, .. } | Settled::Invalid(error) => {
                    tracing::warn!(consumer.name = %self.config.name, log.offset = offset, %error, "parked event moved to the dead letters");
                }
                Settled::Again(attempts, _, error, _) => {
                    tracing::debug!(consumer.name = %self.config.name, log.offset = offset, attempts, %error, "parked event failed again");
                }
            }
        }
        Ok(())
    }

    /// Refreshes what status and metrics show of the parked events.
    async fn publish(&self) -> Result<(), StepError> {
        let (count, oldest, error) =
            run_db(&self.store, |s| store::parked_summary(s.conn())).await?;
        let skus = self.parking.skus();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.parked = count;
        shared.parked_skus = skus as i64;
        shared.oldest_parked = oldest;
        shared.parked_error = error;
        drop(shared);
        metrics::gauge!("invsync_consumer_parked_events", "consumer" => self.config.name.clone())
            .set(count as f64);
        Ok(())
    }
}

/// One delivery attempt at a parked event, judged by the retry policy.
async fn attempt(
    sink: &dyn Sink,
    policy: &RetryPolicy,
    parked: &Parked,
    term: Option<&invsync_ledger::Term>,
) -> Settled {
    let event = match CloudEvent::parse(parked.envelope.as_bytes()) {
        Ok(e) => Incoming {
            offset: parked.offset,
            event: e.data,
            envelope: parked.envelope.clone(),
        },
        Err(e) => return Settled::Invalid(format!("the parked event is not a valid event: {e}")),
    };
    if !sink.wants(&event.event) {
        return Settled::Delivered(Box::new(event));
    }
    let attempts = parked.attempts + 1;
    let mut permanent = parked.permanent;
    let result = sink.deliver_under(&event, term).await;
    match policy.judge(result, attempts, &mut permanent, event.event.occurred_at) {
        Verdict::Delivered => Settled::Delivered(Box::new(event)),
        Verdict::Dead(error) => Settled::Dead { attempts, error },
        Verdict::Retry { error, pause } => Settled::Again(
            attempts,
            permanent,
            error,
            Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::runtime::testing::{until, MemLog};
    use crate::runtime::{start, ConsumerHandle};
    use crate::{Failure, LedgerSource};
    use async_trait::async_trait;

    /// A receiver that refuses (503) every event of the SKUs named `STUCK…` and of
    /// `SLOW` while `stuck` is set, keeps each answer for `SLOW` waiting while
    /// `slow_open` is false, and records what it accepted, in order.
    struct Receiver {
        stuck: AtomicBool,
        slow_open: watch::Sender<bool>,
        got: Mutex<Vec<(String, i64)>>,
    }

    #[async_trait]
    impl Sink for Receiver {
        fn delivers(&self) -> bool {
            true
        }
        async fn deliver(&self, event: &Incoming) -> Result<(), Failure> {
            let sku = event.event.product_sku.to_string();
            let refused = sku.starts_with("STUCK") || sku == "SLOW";
            if refused && self.stuck.load(Ordering::SeqCst) {
                return Err(Failure::Transient("HTTP 503: not now".into()));
            }
            if sku == "SLOW" {
                let _ = self.slow_open.subscribe().wait_for(|open| *open).await;
            }
            self.got.lock().unwrap().push((sku, event.event.version));
            Ok(())
        }
    }

    impl Receiver {
        fn versions(&self, sku: &str) -> Vec<i64> {
            let got = self.got.lock().unwrap();
            got.iter()
                .filter(|(s, _)| s == sku)
                .map(|(_, v)| *v)
                .collect()
        }
    }

    fn run(
        path: &std::path::Path,
        log: &Arc<MemLog>,
        sink: &Arc<Receiver>,
    ) -> (
        ConsumerHandle,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let mut config = ConsumerConfig::new("webhook", path);
        config.park_after = Duration::from_millis(100);
        config.batch = 50;
        config.retry.base = Duration::from_millis(5);
        config.retry.cap = Duration::from_millis(40);
        let (stop, shutdown) = watch::channel(false);
        let (handle, future) = start(
            config,
            sink.clone(),
            log.clone(),
            Arc::new(LedgerSource(log.clone())),
            shutdown,
        )
        .unwrap();
        (handle, stop, tokio::spawn(future))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusing_sku_is_parked_while_the_others_flow_and_arrives_in_order_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhook.db");
        let log = MemLog::new();
        let sink = Arc::new(Receiver {
            stuck: AtomicBool::new(true),
            slow_open: watch::channel(true).0,
            got: Mutex::new(Vec::new()),
        });
        // Interleaved: every tenth event is the stuck SKU's.
        for v in 1..=20 {
            log.append("STUCK", v);
            for k in 0..9 {
                log.append(&format!("OK-{k}"), v);
            }
        }
        let (handle, stop, task) = run(&path, &log, &sink);

        until("the healthy SKUs delivered", || {
            (0..9).all(|k| sink.versions(&format!("OK-{k}")).len() == 20)
        })
        .await;
        assert!(sink.versions("STUCK").is_empty());
        // Status is put together by the main loop (position) and the side loop (its
        // recount of the store, and the error of its own retries): wait for both.
        until("the stuck SKU's events counted as parked", || {
            let status = handle.status();
            status.parked == 20
                && status.position == 200
                && status.parked_error.is_some_and(|e| e.contains("503"))
        })
        .await;
        let status = handle.status();
        assert_eq!(status.parked_skus, 1);
        assert!(
            status.lag_events >= 20,
            "parked events count as lag: {status:?}"
        );

        // More events of both kinds while it stays stuck; then an abrupt stop (the
        // consumer's future is dropped mid-flight) and a restart on the same store.
        for v in 21..=25 {
            log.append("STUCK", v);
            log.append("OK-0", v);
        }
        until("OK-0 keeps flowing", || sink.versions("OK-0").len() == 25).await;
        task.abort();
        let _ = task.await;
        drop(stop);
        let (handle, _stop, _task) = run(&path, &log, &sink);
        until("the parked events survive the restart", || {
            handle.status().parked == 25
        })
        .await;

        sink.stuck.store(false, Ordering::SeqCst);
        until("the stuck SKU drained", || handle.status().parked == 0).await;
        let versions = sink.versions("STUCK");
        assert_eq!(
            versions,
            (1..=25).collect::<Vec<_>>(),
            "in order, each once"
        );
        assert_eq!(handle.status().lag_events, 0);
        // Healthy SKUs were never delivered twice or out of order.
        for k in 0..9 {
            let v = sink.versions(&format!("OK-{k}"));
            assert!(v.windows(2).all(|w| w[0] < w[1]), "OK-{k}: {v:?}");
        }
    }

    /// A parked SKU whose receiver is slow to answer holds back only itself: the
    /// other parked SKUs drain, in order, while its first retry is still out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_parked_sku_does_not_hold_back_the_other_parked_skus() {
        let dir = tempfile::tempdir().unwrap();
        let log = MemLog::new();
        let sink = Arc::new(Receiver {
            stuck: AtomicBool::new(true),
            slow_open: watch::channel(false).0,
            got: Mutex::new(Vec::new()),
        });
        for v in 1..=8 {
            log.append("SLOW", v);
            for k in 0..5 {
                log.append(&format!("STUCK-{k}"), v);
            }
        }
        let (handle, _stop, _task) = run(&dir.path().join("webhook.db"), &log, &sink);
        until("all six SKUs parked", || {
            let status = handle.status();
            status.parked == 48 && status.parked_skus == 6
        })
        .await;

        // The receiver takes events again, but keeps its answer for SLOW waiting.
        sink.stuck.store(false, Ordering::SeqCst);
        until("the other parked SKUs drained", || {
            (0..5).all(|k| sink.versions(&format!("STUCK-{k}")).len() == 8)
        })
        .await;
        assert!(
            sink.versions("SLOW").is_empty(),
            "SLOW's first retry is still waiting for its answer"
        );
        until("only SLOW's events left parked", || {
            handle.status().parked == 8
        })
        .await;

        sink.slow_open.send_replace(true);
        until("SLOW drained", || handle.status().parked == 0).await;
        assert_eq!(sink.versions("SLOW"), (1..=8).collect::<Vec<_>>());
        for k in 0..5 {
            let versions = sink.versions(&format!("STUCK-{k}"));
            assert_eq!(versions, (1..=8).collect::<Vec<_>>(), "STUCK-{k}");
        }
    }

    #[tokio::test]
    async fn a_sku_counts_as_parked_from_the_decision_until_its_queue_drains() {
        let parking = Parking::load(vec![("A".into(), 1)]);
        assert!(parking.hold_if_parked("B").is_none());
        let a = parking.hold_if_parked("A").expect("A has a stored row");
        drop(a); // an uncommitted hold goes away without a trace
        let b = parking.hold("B");
        assert!(parking.hold_if_parked("B").is_some(), "pending counts");
        drop(b);
        assert!(
            parking.hold_if_parked("B").is_none(),
            "released: nothing stored"
        );
        parking.hold("B").committed(2);
        parking.unparked("B");
        assert!(parking.hold_if_parked("B").is_some(), "one row left");
        parking.unparked("B");
        assert!(parking.hold_if_parked("B").is_none());
        parking.unparked("A");
        assert_eq!(parking.skus(), 0);
    }
}
