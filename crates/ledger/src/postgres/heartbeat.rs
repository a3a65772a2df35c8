//! The instance's heartbeat thread: it follows the log's head and holds the relay
//! lease (see [`Heartbeat`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::Client;
use tokio::sync::watch;

use super::{lease, Pool};
use crate::lease::{Term, RELAY_LEASE, RENEW_EVERY};

/// How often the head is read: consumers on this instance wake within this of a
/// commit on any instance.
const HEAD_POLL: Duration = Duration::from_millis(5);

/// The instance's heartbeat, on its own thread: every `HEAD_POLL` it reads the log's
/// head (so consumers on this instance wake within that of a commit on any
/// instance), and, when this instance may lead, every `RENEW_EVERY` it takes or
/// renews the relay lease. It relays nothing itself: the leader's bus relay
/// (`invsync_bus::BusRelay`) and shared connectors follow `leading`.
pub(super) struct Heartbeat {
    /// This instance as a lease holder.
    pub(super) holder: String,
    pub(super) pg: postgres::Config,
    pub(super) pool: Pool,
    pub(super) head: watch::Sender<i64>,
    pub(super) leading: watch::Sender<Option<Term>>,
    pub(super) closed: Arc<AtomicBool>,
    pub(super) lead: bool,
}

impl Heartbeat {
    pub(super) fn run(self) {
        // The lease's own session (statements on it time out in seconds).
        let mut session: Option<Client> = None;
        let mut next_renewal = Instant::now();
        while !self.closed.load(Ordering::SeqCst) {
            if self.lead && Instant::now() >= next_renewal {
                next_renewal = Instant::now() + RENEW_EVERY;
                self.renew(&mut session);
            }
            // Renewals that stopped succeeding end the term at its deadline, whoever
            // notices first; this thread tells the rest of the process.
            self.leading.send_if_modified(|held| {
                if held.as_ref().is_some_and(|t| !t.valid()) {
                    tracing::warn!("the relay lease ran out without a renewal; no longer leading");
                    *held = None;
                    return true;
                }
                false
            });
            // Follow the log's head, which every writing transaction moves.
            if let Ok(mut c) = self.pool.get_timeout(Duration::from_secs(1)) {
                if let Ok(row) = c
                    .client
                    .query_one("SELECT value FROM meta WHERE key = 'last_offset'", &[])
                {
                    let last: i64 = row.get(0);
                    self.head
                        .send_if_modified(|h| std::mem::replace(h, last) != last);
                }
            }
            std::thread::sleep(HEAD_POLL);
        }
        // Stepping down on a clean stop: another instance takes over at once instead
        // of after the lease lapses.
        if self.leading.borrow().is_some() {
            if let Some(c) = session.as_mut() {
                let _ = lease::give_up(c, RELAY_LEASE, &self.holder);
            }
            self.leading.send_replace(None);
        }
    }

    /// Takes the lease, or renews the term held.
    fn renew(&self, session: &mut Option<Client>) {
        if session.is_none() {
            *session = lease::session(&self.pg).ok();
        }
        let Some(c) = session.as_mut() else { return };
        match lease::acquire(c, RELAY_LEASE, &self.holder) {
            Ok(Some(term)) => {
                self.leading.send_if_modified(|held| match held {
                    Some(t) if *t == term && t.valid() => {
                        t.extend_as(&term);
                        false
                    }
                    _ => {
                        tracing::info!(
                            lease.epoch = term.epoch(),
                            "this instance now leads (publishing to the bus, shared webhooks)"
                        );
                        *held = Some(term.clone());
                        true
                    }
                });
            }
            Ok(None) => {
                self.leading.send_if_modified(|held| match held.take() {
                    Some(t) => {
                        tracing::warn!(
                            lease.epoch = t.epoch(),
                            "another instance holds the relay lease now; no longer leading"
                        );
                        t.end();
                        true
                    }
                    None => false,
                });
            }
            Err(e) => {
                // The term stays until its deadline: a renewal that fails once in a
                // while costs nothing, one that keeps failing ends the term in time.
                tracing::debug!(error = %e, "relay lease: renewal failed");
                if c.is_closed() || e.as_db_error().is_none() {
                    *session = None;
                }
            }
        }
    }
}
