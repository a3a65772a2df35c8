//! The external effect: events of one SKU in version order, SKUs in parallel, each
//! retried per the consumer's [`RetryPolicy`].

use std::collections::BTreeMap;

use futures::StreamExt;
use tokio::time::Instant;

use crate::retry::Verdict;

use super::*;

impl Runner {
    /// Runs the sink's external effect: per SKU in order, SKUs in parallel. A SKU that
    /// is parked, or whose event is not delivered by the park deadline, has the rest
    /// of its events in the batch parked too; the holds say which SKUs.
    pub(super) async fn deliver(
        &self,
        events: &[Incoming],
    ) -> Result<(Vec<Outcome>, Vec<Hold>), StepError> {
        if !self.sink.delivers() {
            return Ok((
                events.iter().map(|_| Outcome::Delivered).collect(),
                Vec::new(),
            ));
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
                let sku = events[indices[0]].event.product_sku.as_str();
                let mut out = Vec::with_capacity(indices.len());
                let mut hold = self.parking.hold_if_parked(sku);
                for i in indices {
                    if hold.is_some() {
                        out.push((i, behind_parked()));
                        continue;
                    }
                    if !self.sink.wants(&events[i].event) {
                        out.push((i, Outcome::Delivered));
                        continue;
                    }
                    let deadline = Instant::now() + self.config.park_after;
                    let outcome = self.deliver_one(&events[i], Some(deadline)).await?;
                    if let Outcome::Parked { error, .. } = &outcome {
                        tracing::warn!(consumer.name = %self.config.name, product.sku = sku, log.offset = events[i].offset, %error, "delivery of this SKU parked; other SKUs go on");
                        hold = Some(self.parking.hold(sku));
                    }
                    out.push((i, outcome));
                }
                Ok((out, hold))
            })
            .buffer_unordered(self.config.parallelism.max(1))
            .collect::<Vec<Result<_, StepError>>>();
        // Deliveries may retry for a while: keep the source from redelivering meanwhile.
        let keep_alive = async {
            loop {
                tokio::time::sleep(KEEP_ALIVE).await;
                self.source.keep_alive().await;
            }
        };
        // An instance that stops leading while it delivers (a shared endpoint) drops
        // the batch at once: the next worker re-delivers it from the shared position,
        // and two instances never deliver the same SKU's events side by side.
        let term = self.shared().term.clone();
        let deposed = async {
            match (self.config.active.clone(), term) {
                (Some(mut active), Some(term)) => active.lost(&term).await,
                _ => std::future::pending().await,
            }
        };
        let results = tokio::select! {
            results = work => results,
            () = keep_alive => Vec::new(),
            () = deposed => return Err(StepError::Deposed),
        };
        let mut outcomes: Vec<Option<Outcome>> = events.iter().map(|_| None).collect();
        let mut holds = Vec::new();
        for group in results {
            let (group, hold) = group?;
            holds.extend(hold);
            for (i, outcome) in group {
                outcomes[i] = Some(outcome);
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| {
                o.ok_or_else(|| {
                    StepError::Retry(ConsumerError::Invariant("a delivery did not report"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((outcomes, holds))
    }

    /// Delivers one event, retrying per the policy; gives up only into the dead
    /// letters (or when shutting down, leaving the batch to be redone).
    pub(super) async fn deliver_one(
        &self,
        event: &Incoming,
        deadline: Option<Instant>,
    ) -> Result<Outcome, StepError> {
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
            deadline,
        )
        .await
    }
}

/// An event of a SKU whose earlier events are parked: parked behind them, untried.
fn behind_parked() -> Outcome {
    Outcome::Parked {
        attempts: 0,
        permanent: 0,
        error: "waiting behind earlier parked events of this SKU".to_owned(),
        retry_at: Utc::now(),
    }
}

/// Delivers one event, retrying per the policy, until it is delivered or dead; or,
/// given a `deadline`, parked once the next attempt would start (or the one in flight
/// would end) after it. `Err(Stopping)` when shutting down: the batch is redone.
pub(super) async fn deliver_with_retry(
    sink: &dyn Sink,
    policy: &RetryPolicy,
    event: &Incoming,
    shutdown: &watch::Receiver<bool>,
    shared: &Mutex<Shared>,
    deadline: Option<Instant>,
) -> Result<Outcome, StepError> {
    let mut attempt = 0u32;
    let mut permanent = 0u32;
    let mut shutdown = shutdown.clone();
    let park = |attempts, permanent, error, pause: Duration| Outcome::Parked {
        attempts,
        permanent,
        error,
        retry_at: Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default(),
    };
    // The lease term the work is done under: once it ends (a frozen process waking
    // past its deadline, a lease lost), not one more attempt is made.
    let term = Shared::term_of(shared);
    loop {
        if term.as_ref().is_some_and(|t| !t.valid()) {
            return Err(StepError::Deposed);
        }
        attempt += 1;
        let past_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            result = sink.deliver_under(event, term.as_ref()) => result,
            () = past_deadline => {
                let error = "no answer before the park deadline".to_owned();
                return Ok(park(attempt, permanent, error, policy.backoff(attempt)));
            }
        };
        let (error, pause) =
            match policy.judge(result, attempt, &mut permanent, event.event.occurred_at) {
                Verdict::Delivered => return Ok(Outcome::Delivered),
                Verdict::Dead(error) => {
                    return Ok(Outcome::Dead {
                        attempts: attempt,
                        error,
                    })
                }
                Verdict::Retry { error, pause } => (error, pause),
            };
        if deadline.is_some_and(|at| Instant::now() + pause > at) {
            return Ok(park(attempt, permanent, error, pause));
        }
        tracing::debug!(log.offset = event.offset, attempt, %error, "delivery failed; will retry");
        // Shown by /v1/consumers and the dashboard while the retries go on.
        shared.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some(format!(
            "delivering offset {} (attempt {attempt}): {error}",
            event.offset
        ));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|s| *s) => return Err(StepError::Stopping),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::Failure;

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
    pub(super) async fn a_retry_after_is_waited_out_and_capped() {
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
                None,
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
    pub(super) async fn a_transient_failure_older_than_dead_after_is_dead_lettered() {
        let (_stop, shutdown) = watch::channel(false);
        let shared = Mutex::new(Shared::default());
        let policy = RetryPolicy {
            dead_after: Some(Duration::from_secs(60)),
            ..RetryPolicy::default()
        };
        let mut old = event(1, 1);
        old.event.occurred_at = Utc::now() - chrono::TimeDelta::seconds(61);
        let outcome = deliver_with_retry(&Down, &policy, &old, &shutdown, &shared, None)
            .await
            .unwrap();
        assert!(
            matches!(outcome, Outcome::Dead { attempts: 1, ref error } if error.contains("503")),
            "{outcome:?}"
        );
        // A young event under the same policy is retried (and here then delivered).
        let young = ThrottledOnce(AtomicUsize::new(0), Duration::from_secs(1));
        let outcome = deliver_with_retry(&young, &policy, &event(2, 1), &shutdown, &shared, None)
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Delivered));
    }

    /// Never answers (a receiver that hangs).
    struct Hangs;

    #[async_trait::async_trait]
    impl Sink for Hangs {
        fn delivers(&self) -> bool {
            true
        }
        async fn deliver(&self, _event: &Incoming) -> Result<(), Failure> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_still_failing_at_the_deadline_is_parked_with_its_attempts() {
        let (_stop, shutdown) = watch::channel(false);
        let shared = Mutex::new(Shared::default());
        let policy = RetryPolicy::default(); // 100 ms doubling, with jitter
        let started = Instant::now();
        let deadline = started + Duration::from_secs(2);
        let outcome = deliver_with_retry(
            &Down,
            &policy,
            &event(1, 1),
            &shutdown,
            &shared,
            Some(deadline),
        )
        .await
        .unwrap();
        let Outcome::Parked {
            attempts, error, ..
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        // Backoffs of 50-100, 100-200, 200-400, 400-800 ms… fit 4 to 6 attempts in
        // 2 s; the attempt whose pause would end past the deadline parks instead.
        assert!((4..=6).contains(&attempts), "{attempts} attempts");
        assert!(error.contains("503"), "{error}");
        assert!(
            started.elapsed() <= Duration::from_secs(2),
            "never past the deadline"
        );

        // A hanging request is cut at the deadline itself.
        let started = Instant::now();
        let outcome = deliver_with_retry(
            &Hangs,
            &policy,
            &event(2, 1),
            &shutdown,
            &shared,
            Some(started + Duration::from_secs(2)),
        )
        .await
        .unwrap();
        assert!(
            matches!(outcome, Outcome::Parked { attempts: 1, .. }),
            "{outcome:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        // Without a deadline (a redrive) nothing is parked: it waits for an answer.
        let outcome = deliver_with_retry(
            &ThrottledOnce(AtomicUsize::new(0), Duration::from_secs(5)),
            &policy,
            &event(3, 1),
            &shutdown,
            &shared,
            None,
        )
        .await
        .unwrap();
        assert!(matches!(outcome, Outcome::Delivered));
    }

    /// Deliveries that each wait for a permit from the test, recording what they
    /// delivered and how many wait (a delivery dropped mid-way leaves the count
    /// through its guard).
    struct Gated {
        permits: tokio::sync::Semaphore,
        delivered: Mutex<Vec<i64>>,
        in_flight: AtomicUsize,
    }

    struct InFlight<'a>(&'a AtomicUsize);

    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[async_trait::async_trait]
    impl Sink for Gated {
        fn delivers(&self) -> bool {
            true
        }
        async fn deliver(&self, event: &Incoming) -> Result<(), Failure> {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let _guard = InFlight(&self.in_flight);
            if let Ok(permit) = self.permits.acquire().await {
                permit.forget();
            }
            self.delivered.lock().unwrap().push(event.event.version);
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn losing_leadership_mid_batch_drops_the_batch_uncommitted() {
        use crate::runtime::testing::{until, MemLog};
        let dir = tempfile::tempdir().unwrap();
        let log = MemLog::new();
        for v in 1..=40 {
            log.append("A", v); // one SKU: delivered one after another
        }
        let sink = Arc::new(Gated {
            permits: tokio::sync::Semaphore::new(2),
            delivered: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
        });
        let (lead, leading) = watch::channel(Some(Term::forever("relay")));
        let mut config = ConsumerConfig::new("webhook", dir.path().join("webhook.db"));
        config.active = Some(Turn::new(leading));
        let (_stop, shutdown) = watch::channel(false);
        let (handle, run) = crate::runtime::start(
            config,
            sink.clone(),
            log.clone(),
            Arc::new(crate::LedgerSource(log.clone())),
            shutdown,
        )
        .unwrap();
        tokio::spawn(run);
        // Two deliveries go through; the third waits for a permit that never comes.
        until("the third delivery waits", || {
            sink.delivered.lock().unwrap().len() == 2 && sink.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;

        lead.send_replace(None);
        until("the waiting delivery is dropped", || {
            sink.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
        let delivered = sink.delivered.lock().unwrap().len();
        assert_eq!(delivered, 2, "nothing more was delivered");
        assert_eq!(handle.status().position, 0, "nothing committed");

        // Leading again, it delivers the whole batch, in order.
        sink.permits.add_permits(100);
        lead.send_replace(Some(Term::forever("relay")));
        until("caught up", || handle.status().position == 40).await;
        let all = sink.delivered.lock().unwrap().clone();
        assert_eq!(all[delivered..], (1..=40).collect::<Vec<_>>()[..]);
    }

    /// What a frozen leader meets when it wakes: its term ran out and nobody told it
    /// (its renewer was frozen too). The delivery in flight — in the batch, or parked
    /// (after `park_after`, 2 s) and retried by the side loop — is abandoned at the
    /// deadline, and not one more delivery is made, though nothing was sent on the
    /// channel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_term_that_runs_out_unrenewed_stops_every_delivery() {
        use crate::runtime::testing::{until, MemLog};
        let dir = tempfile::tempdir().unwrap();
        let log = MemLog::new();
        for v in 1..=40 {
            log.append("A", v);
        }
        let sink = Arc::new(Gated {
            permits: tokio::sync::Semaphore::new(2),
            delivered: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
        });
        // Renewed once, now, and never again.
        let term = Term::new("relay", 1, std::time::Instant::now());
        let (lead, leading) = watch::channel(Some(term.clone()));
        let mut config = ConsumerConfig::new("webhook", dir.path().join("webhook.db"));
        config.active = Some(Turn::new(leading));
        let (_stop, shutdown) = watch::channel(false);
        let (handle, run) = crate::runtime::start(
            config,
            sink.clone(),
            log.clone(),
            Arc::new(crate::LedgerSource(log.clone())),
            shutdown,
        )
        .unwrap();
        tokio::spawn(run);
        until("the third delivery waits", || {
            sink.delivered.lock().unwrap().len() == 2 && sink.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
        until("the term ran out", || !term.valid()).await;
        until("the waiting delivery is dropped", || {
            sink.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
        // Room for every delivery now: none is made.
        sink.permits.add_permits(100);
        handle.quiesce().await;
        handle.quiesce().await;
        assert_eq!(sink.delivered.lock().unwrap().len(), 2, "nothing more");
        // A new term: the same runtime goes on from where it was, in order (so it was
        // the term, and nothing else, that held it back).
        lead.send_replace(Some(Term::forever("relay")));
        until("caught up", || {
            sink.delivered.lock().unwrap().last() == Some(&40)
        })
        .await;
        let all = sink.delivered.lock().unwrap().clone();
        assert_eq!(all[2..], (3..=40).collect::<Vec<_>>()[..]);
    }

    pub(super) fn event(version: i64, available: i64) -> Incoming {
        crate::test_event(version, available)
    }
}
