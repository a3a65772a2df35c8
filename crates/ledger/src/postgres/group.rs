//! The processes that share a consumer's partitions, as leases (see [`crate::lease`]
//! and [`PartitionClaims`]).
//!
//! Each member holds the lease `group:<g>:member:<holder>` while it lives, and one
//! [`partition_lease`] per partition it works; a member renews all of them in one
//! statement every [`RENEW_EVERY`]. A partition has at most one valid term at a time,
//! and one whose member died, froze or lost the database lapses within [`LEASE_TTL`]
//! (its member's own term ended a margin sooner), after which another member claims
//! it under a higher epoch. The member count is read from the unexpired member leases.
//!
//! [`LEASE_TTL`]: crate::lease::LEASE_TTL

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use postgres::error::SqlState;
use postgres::Client;

use super::lease;
use crate::error::LedgerError;
use crate::lease::{partition_lease, Term, RENEW_EVERY};
use crate::{Census, PartitionClaims};

pub(crate) struct PgClaims {
    pg: postgres::Config,
    group: String,
    state: Arc<Mutex<Member>>,
}

/// This process as a member: its session, identity and terms.
struct Member {
    /// `None` after it was found lost, until `rejoin`.
    session: Option<Client>,
    /// This member as a lease holder (new at every join).
    holder: String,
    /// The terms held, by lease name (the membership's own included).
    terms: HashMap<String, Term>,
    last_renewal: Option<Instant>,
}

fn member_prefix(group: &str) -> String {
    format!("group:{group}:member:")
}

fn partition_prefix(group: &str) -> String {
    format!("group:{group}:partition:")
}

impl PgClaims {
    pub(crate) async fn join(pg: postgres::Config, group: &str) -> Result<Self, LedgerError> {
        let claims = Self {
            pg,
            group: group.to_owned(),
            state: Arc::new(Mutex::new(Member {
                session: None,
                holder: lease::holder(),
                terms: HashMap::new(),
                last_renewal: None,
            })),
        };
        claims.rejoin().await?;
        Ok(claims)
    }

    /// Runs `f` on the member in a blocking task. A failure of the session itself
    /// drops it: nothing may be worked on its strength any more (the terms end too).
    async fn on_member<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client, &mut Member) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
            let member = &mut *guard;
            let Some(mut client) = member.session.take() else {
                return Err(LedgerError::Unavailable("the group session is gone".into()));
            };
            let out = f(&mut client, member);
            // Only a lost connection ends the member: a statement that timed out (a
            // lock held by a frozen process) leaves the session and its terms as
            // they were.
            let broken = client.is_closed();
            if broken {
                for term in member.terms.values() {
                    term.end();
                }
                member.terms.clear();
                // Dropped here, on a blocking thread (the sync client must not be
                // dropped on an async worker).
                drop(client);
            } else {
                member.session = Some(client);
            }
            out
        })
        .await
        .map_err(|e| LedgerError::Internal(format!("group task failed: {e}")))?
    }
}

/// Renews every term `member` holds; ends those the database no longer has (lapsed:
/// another member may hold them now). Fails when the membership itself is gone.
fn renew(c: &mut Client, member: &mut Member, group: &str) -> Result<(), LedgerError> {
    let (held, sent) = lease::renew_all(c, &member.holder)?;
    member.last_renewal = Some(sent);
    let held: HashMap<String, i64> = held.into_iter().collect();
    member.terms.retain(|name, term| {
        let kept = held.get(name) == Some(&term.epoch());
        if kept {
            term.renewed(sent);
        } else {
            term.end();
        }
        kept
    });
    let prefix = member_prefix(group);
    if !member.terms.keys().any(|name| name.starts_with(&prefix)) {
        return Err(LedgerError::Unavailable(
            "this member's lease lapsed: it left the group".into(),
        ));
    }
    Ok(())
}

#[async_trait]
impl PartitionClaims for PgClaims {
    async fn census(&self) -> Result<Census, LedgerError> {
        let group = self.group.clone();
        self.on_member(move |c, member| {
            if member
                .last_renewal
                .is_none_or(|at| at.elapsed() >= RENEW_EVERY)
            {
                renew(c, member, &group)?;
            }
            let sql = format!(
                "SELECT count(*) FILTER (WHERE starts_with(l.name, $1)), \
                        count(*) FILTER (WHERE starts_with(l.name, $2)) \
                 FROM leases l WHERE {}",
                lease::LIVE
            );
            let row = c.query_one(&sql, &[&member_prefix(&group), &partition_prefix(&group)])?;
            let (members, claimed): (i64, i64) = (row.get(0), row.get(1));
            Ok(Census {
                members: members.max(1) as u32,
                claimed: claimed as u32,
            })
        })
        .await
    }

    async fn claim(&self, partition: u32) -> Result<Option<Term>, LedgerError> {
        let name = partition_lease(&self.group, partition);
        self.on_member(move |c, member| {
            let term = match lease::acquire(c, &name, &member.holder) {
                Ok(term) => term,
                // The lease row is locked (its holder froze inside a transaction that
                // fenced on it): not free yet; the next count tries again.
                Err(e)
                    if !c.is_closed()
                        && matches!(
                            e.code(),
                            Some(&SqlState::LOCK_NOT_AVAILABLE | &SqlState::QUERY_CANCELED)
                        ) =>
                {
                    tracing::debug!(error = %e, lease = %name, "lease busy; not claimed now");
                    None
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(term) = &term {
                if let Some(old) = member.terms.insert(name, term.clone()) {
                    if old != *term {
                        old.end();
                    }
                }
            }
            Ok(term)
        })
        .await
    }

    async fn release(&self, partition: u32) -> Result<(), LedgerError> {
        let name = partition_lease(&self.group, partition);
        self.on_member(move |c, member| {
            if let Some(term) = member.terms.remove(&name) {
                term.end();
            }
            lease::give_up(c, &name, &member.holder)?;
            Ok(())
        })
        .await
    }

    async fn rejoin(&self) -> Result<(), LedgerError> {
        let (pg, state, group) = (self.pg.clone(), self.state.clone(), self.group.clone());
        tokio::task::spawn_blocking(move || {
            let mut client = lease::session(&pg)?;
            // A new holder: whatever the last one held is over.
            let holder = lease::holder();
            let name = format!("{}{holder}", member_prefix(&group));
            let term = lease::acquire(&mut client, &name, &holder)?
                .ok_or_else(|| LedgerError::Internal("a new member's own lease is taken".into()))?;
            // Members that left long ago leave no rows behind.
            client.execute(
                "DELETE FROM leases WHERE starts_with(name, $1) \
                 AND expires_at < clock_timestamp() - interval '1 hour'",
                &[&member_prefix(&group)],
            )?;
            let mut member = state.lock().unwrap_or_else(|e| e.into_inner());
            for old in member.terms.values() {
                old.end();
            }
            let old = std::mem::replace(
                &mut *member,
                Member {
                    session: Some(client),
                    holder,
                    terms: HashMap::from([(name, term)]),
                    last_renewal: Some(Instant::now()),
                },
            );
            drop(member);
            drop(old);
            Ok(())
        })
        .await
        .map_err(|e| LedgerError::Internal(format!("group task failed: {e}")))?
    }
}

impl Drop for PgClaims {
    fn drop(&mut self) {
        // Gives every lease up and ends the session on a plain thread (see
        // `on_member`), so the others claim this member's partitions at once.
        let mut member = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let session = member.session.take();
        let holder = member.holder.clone();
        for term in member.terms.values() {
            term.end();
        }
        let names: Vec<String> = member.terms.drain().map(|(name, _)| name).collect();
        drop(member);
        if let Some(mut session) = session {
            let _ = std::thread::Builder::new()
                .name("group-close".into())
                .spawn(move || {
                    for name in names {
                        let _ = lease::give_up(&mut session, &name, &holder);
                    }
                    drop(session);
                });
        }
    }
}
