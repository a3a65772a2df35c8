//! Leases: what only one process may do at a time (publish the log to the bus, work a
//! shared webhook endpoint, work one partition of a consumer group).
//!
//! A lease is a row in the ledger (`leases` on PostgreSQL: name, holder, epoch,
//! expiry by the database's clock). Its holder renews it every [`RENEW_EVERY`]; a
//! holder that stops renewing — dead, frozen (`SIGSTOP`, a VM pause, a hung disk),
//! cut off from the database — loses it [`LEASE_TTL`] after its last renewal, and
//! another process may take it. Every change of hands, and every taking again after
//! a lapse, raises the lease's **epoch**.
//!
//! Two things keep a deposed holder from doing harm when it wakes:
//!
//! - **Its own deadline.** A [`Term`] carries a local deadline: the instant the
//!   holder *sent* its last successful renewal, plus the TTL less a margin. The
//!   database's expiry is later than that (it counts from when it ran the statement),
//!   so the holder stops believing it leads before anyone else may start. Work checks
//!   [`Term::valid`] right before each delivery, so a process that wakes from a pause
//!   past its deadline delivers nothing, whatever its other threads have noticed.
//! - **The fence.** What a holder records in the ledger (the bus cursor, a shared
//!   endpoint's or a partition's position) is written only while the lease still has
//!   the epoch of the term the work was done under, checked under a share lock on the
//!   lease row in the same transaction. A deposed holder's late write is refused,
//!   and a new holder, which reads the position after its own take-over committed,
//!   sees every write the old one made before.
//!
//! `Instant` is `CLOCK_MONOTONIC`, which runs on while a process is stopped; a VM
//! whose monotonic clock stands still while it is paused is caught by the fence
//! alone, at the price of the re-delivery of the batch it had in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a lease lasts after the renewal that last extended it: a frozen holder's
/// work is taken over within about this (plus one [`RENEW_EVERY`]).
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often a holder renews, and a non-holder tries to take a free lease.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);
/// How much sooner than the database a holder gives up its lease: room for the two
/// clocks' rates to differ.
const MARGIN: Duration = Duration::from_millis(500);

/// The lease the relay leader holds (the bus and the shared webhook endpoints).
pub const RELAY_LEASE: &str = "relay";

/// The lease on partition `partition` of consumer group `group`.
pub fn partition_lease(group: &str, partition: u32) -> String {
    format!("group:{group}:partition:{partition}")
}

/// One holder's term of a lease: which lease, the epoch the ledger gave it, and the
/// local deadline its renewals keep moving. Two terms are equal when they are the
/// same lease and epoch (the deadline is not part of what a term *is*).
#[derive(Clone, Debug)]
pub struct Term {
    lease: Arc<str>,
    epoch: i64,
    deadline: Arc<Deadline>,
}

impl PartialEq for Term {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch && self.lease == other.lease
    }
}

impl Term {
    /// A term renewed by a statement sent at `sent`: valid until `sent` plus the TTL
    /// less the margin.
    pub fn new(lease: impl Into<Arc<str>>, epoch: i64, sent: Instant) -> Self {
        let term = Self {
            lease: lease.into(),
            epoch,
            deadline: Arc::new(Deadline(AtomicU64::new(0))),
        };
        term.renewed(sent);
        term
    }

    /// A term that never lapses: the holder of a ledger no other process can open.
    pub fn forever(lease: impl Into<Arc<str>>) -> Self {
        Self {
            lease: lease.into(),
            epoch: 1,
            deadline: Arc::new(Deadline(AtomicU64::new(u64::MAX))),
        }
    }

    /// A renewal sent at `sent` succeeded: the deadline moves (never back).
    pub fn renewed(&self, sent: Instant) {
        let until = sent + LEASE_TTL.saturating_sub(MARGIN);
        self.deadline.0.fetch_max(nanos(until), Ordering::SeqCst);
    }

    /// Moves this term's deadline to `fresher`'s, when later: the renewal that
    /// returned `fresher` (the same lease and epoch) succeeded.
    pub fn extend_as(&self, fresher: &Term) {
        let until = fresher.deadline.0.load(Ordering::SeqCst);
        self.deadline.0.fetch_max(until, Ordering::SeqCst);
    }

    /// Ends the term here at once (the holder gave the lease up or found it lost).
    pub fn end(&self) {
        self.deadline.0.store(0, Ordering::SeqCst);
    }

    pub fn lease(&self) -> &str {
        &self.lease
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether the holder may still act on this term: its deadline has not passed.
    pub fn valid(&self) -> bool {
        self.remaining().is_some()
    }

    /// Time left before the deadline; `None` once it passed.
    pub fn remaining(&self) -> Option<Duration> {
        let deadline = self.deadline.0.load(Ordering::SeqCst);
        if deadline == u64::MAX {
            return Some(Duration::MAX);
        }
        deadline
            .checked_sub(nanos(Instant::now()))
            .filter(|left| *left > 0)
            .map(Duration::from_nanos)
    }
}

/// A term's deadline, as nanoseconds after [`base`] (0: ended; `u64::MAX`: never).
#[derive(Debug)]
struct Deadline(AtomicU64);

/// The process's reference instant, so a deadline fits in an atomic.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base()).as_nanos())
        .unwrap_or(u64::MAX - 1)
        .min(u64::MAX - 1)
}

/// Whether, and under which term, this process holds a lease, live. The holder's
/// side sends `Some(term)` when it gains a lease and `None` when it loses it; the
/// term's own deadline ends it sooner when renewals stop (a reader needs no message
/// for that: a frozen renewer sends none).
#[derive(Clone, Debug)]
pub struct Turn(watch::Receiver<Option<Term>>);

impl Turn {
    pub fn new(receiver: watch::Receiver<Option<Term>>) -> Self {
        Self(receiver)
    }

    /// A turn that always holds `lease` (a ledger only this process can open).
    pub fn always(lease: &str) -> Self {
        let (sender, receiver) = watch::channel(Some(Term::forever(lease)));
        // The receiver reads the last value for ever once the sender is gone.
        drop(sender);
        Self(receiver)
    }

    /// The term held now, if it is still valid.
    pub fn current(&self) -> Option<Term> {
        self.0.borrow().clone().filter(Term::valid)
    }

    /// Whether a valid term is held now.
    pub fn holds(&self) -> bool {
        self.current().is_some()
    }

    /// Waits until `term` is no longer the one held: the lease was given up, lost,
    /// taken again under a new epoch, or its deadline passed.
    pub async fn lost(&mut self, term: &Term) {
        loop {
            if !term.valid() || self.0.borrow().as_ref() != Some(term) {
                return;
            }
            let left = term.remaining().unwrap_or_default();
            tokio::select! {
                changed = self.0.changed() => {
                    if changed.is_err() {
                        // No sender any more: the term can still run out.
                        tokio::time::sleep(left.min(Duration::from_secs(3600))).await;
                    }
                }
                () = tokio::time::sleep(left.min(Duration::from_secs(3600))) => {}
            }
        }
    }

    /// Waits for the next change of holding (or `timeout`).
    pub async fn changed(&mut self, timeout: Duration) {
        let left = self
            .current()
            .and_then(|t| t.remaining())
            .unwrap_or(timeout)
            .min(timeout);
        tokio::select! {
            changed = self.0.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(left).await;
                }
            }
            () = tokio::time::sleep(left) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_lapses_when_its_renewals_stop_and_renewing_moves_it_only_forward() {
        let sent = Instant::now();
        let term = Term::new("relay", 7, sent);
        assert!(term.valid());
        let left = term.remaining().unwrap();
        assert!(left <= LEASE_TTL - MARGIN);
        // A renewal sent before the last one does not shorten the term.
        term.renewed(sent - Duration::from_secs(10));
        assert!(term.remaining().unwrap() > left - Duration::from_millis(100));
        // One sent long ago (the holder was frozen since) has already lapsed.
        let stale = Term::new("relay", 8, Instant::now() - LEASE_TTL);
        assert!(!stale.valid());
        term.end();
        assert!(!term.valid());
    }

    #[test]
    fn terms_are_the_same_lease_and_epoch_whatever_their_deadlines() {
        let a = Term::new("relay", 3, Instant::now());
        let b = Term::new("relay", 3, Instant::now() - LEASE_TTL);
        assert_eq!(a, b);
        assert_ne!(a, Term::new("relay", 4, Instant::now()));
        assert_ne!(a, Term::new(partition_lease("g", 1), 3, Instant::now()));
    }

    #[tokio::test]
    async fn a_turn_is_lost_when_its_term_runs_out_without_any_message() {
        let term = Term::new("relay", 1, Instant::now() - LEASE_TTL + MARGIN * 2);
        let (sender, receiver) = watch::channel(Some(term.clone()));
        let mut turn = Turn::new(receiver);
        assert!(turn.holds());
        // Nothing is sent: the deadline alone ends the wait.
        tokio::time::timeout(Duration::from_secs(30), turn.lost(&term))
            .await
            .expect("the term's deadline ends it");
        assert!(!turn.holds());
        drop(sender);
    }

    #[tokio::test]
    async fn a_turn_is_lost_when_the_lease_is_taken_again_under_a_new_epoch() {
        let first = Term::new("relay", 1, Instant::now());
        let (sender, receiver) = watch::channel(Some(first.clone()));
        let mut turn = Turn::new(receiver);
        sender.send_replace(Some(Term::new("relay", 2, Instant::now())));
        tokio::time::timeout(Duration::from_secs(30), turn.lost(&first))
            .await
            .expect("a new epoch is a new term");
        assert_eq!(turn.current().map(|t| t.epoch()), Some(2));
    }

    #[test]
    fn always_holds() {
        let turn = Turn::always("relay");
        assert!(turn.holds());
        assert_eq!(turn.current().unwrap().remaining(), Some(Duration::MAX));
    }
}
