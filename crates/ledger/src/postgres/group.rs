//! The processes that share a consumer's partitions, as PostgreSQL session advisory
//! locks (see [`PartitionClaims`]).
//!
//! Each member holds, on its own session, the two-key lock `(members key, its backend
//! pid)`, and one `(partitions key, p)` per partition it works. PostgreSQL grants a
//! lock to one session at a time and drops a session's locks when it ends, so a
//! partition has at most one owner, and the partitions of a process that dies are
//! free at once. The member count is read from `pg_locks`.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use postgres::{Client, NoTls};

use crate::error::LedgerError;
use crate::{Census, PartitionClaims};

/// The two lock keys of a group: its partitions, and its members. Non-negative, so
/// they read back from `pg_locks.classid` (an `oid`) unchanged; apart from the relay's
/// and the migrations' single-key locks by their `objsubid` (2 here).
fn keys(group: &str) -> (i32, i32) {
    let hash = invsync_core::event::partition(&format!("invsync consumer group {group}"), u32::MAX);
    let partitions = (hash & 0x3fff_ffff) as i32;
    (partitions, partitions | 0x4000_0000)
}

pub(crate) struct PgClaims {
    pg: postgres::Config,
    partitions_key: i32,
    members_key: i32,
    /// The member's session; `None` after it was found lost, until `rejoin`.
    session: Arc<Mutex<Option<Client>>>,
}

impl PgClaims {
    pub(crate) async fn join(pg: postgres::Config, group: &str) -> Result<Self, LedgerError> {
        let (partitions_key, members_key) = keys(group);
        let claims = Self {
            pg,
            partitions_key,
            members_key,
            session: Arc::new(Mutex::new(None)),
        };
        claims.rejoin().await?;
        Ok(claims)
    }

    /// Runs `f` on the session in a blocking task. A failure of the session itself
    /// drops it: its locks are gone (or will be when PostgreSQL notices), so nothing
    /// may be worked on its strength any more.
    async fn on_session<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let session = self.session.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = session.lock().unwrap_or_else(|e| e.into_inner());
            let client = guard
                .as_mut()
                .ok_or_else(|| LedgerError::Unavailable("the group session is gone".into()))?;
            match f(client) {
                Ok(out) => Ok(out),
                Err(e) => {
                    if client.is_closed() || e.as_db_error().is_none() {
                        // Dropped here, on a blocking thread (the sync client must not
                        // be dropped on an async worker).
                        *guard = None;
                    }
                    Err(LedgerError::from(e))
                }
            }
        })
        .await
        .map_err(|e| LedgerError::Internal(format!("group task failed: {e}")))?
    }
}

#[async_trait]
impl PartitionClaims for PgClaims {
    async fn census(&self) -> Result<Census, LedgerError> {
        let (members, partitions) = (i64::from(self.members_key), i64::from(self.partitions_key));
        self.on_session(move |c| {
            let row = c.query_one(
                "SELECT count(*) FILTER (WHERE classid::int8 = $1), \
                        count(*) FILTER (WHERE classid::int8 = $2) \
                 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2",
                &[&members, &partitions],
            )?;
            let (members, claimed): (i64, i64) = (row.get(0), row.get(1));
            Ok(Census {
                members: members.max(1) as u32,
                claimed: claimed as u32,
            })
        })
        .await
    }

    async fn claim(&self, partition: u32) -> Result<bool, LedgerError> {
        let (key, p) = (self.partitions_key, partition as i32);
        self.on_session(move |c| {
            Ok(
                c.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&key, &p])?
                    .get(0),
            )
        })
        .await
    }

    async fn release(&self, partition: u32) -> Result<(), LedgerError> {
        let (key, p) = (self.partitions_key, partition as i32);
        self.on_session(move |c| {
            c.query_one("SELECT pg_advisory_unlock($1, $2)", &[&key, &p])?;
            Ok(())
        })
        .await
    }

    async fn rejoin(&self) -> Result<(), LedgerError> {
        let (pg, session, key) = (self.pg.clone(), self.session.clone(), self.members_key);
        tokio::task::spawn_blocking(move || {
            let mut client = pg.connect(NoTls)?;
            // A member's own lock, on its pid: unique while the session lives.
            client.query_one("SELECT pg_advisory_lock($1, pg_backend_pid())", &[&key])?;
            let old = session
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(client);
            drop(old);
            Ok(())
        })
        .await
        .map_err(|e| LedgerError::Internal(format!("group task failed: {e}")))?
    }
}

impl Drop for PgClaims {
    fn drop(&mut self) {
        // Ends the session (and its claims) on a plain thread: see `on_session`.
        let session = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(session) = session {
            let _ = std::thread::Builder::new()
                .name("group-close".into())
                .spawn(move || drop(session));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_keys_are_its_own_and_readable_from_pg_locks() {
        let (p, m) = keys("erp");
        assert!(p >= 0 && m >= 0, "an oid reads back unchanged");
        assert_ne!(p, m);
        assert_eq!(keys("erp"), (p, m), "stable");
        assert_ne!(keys("erp").0, keys("crm").0);
    }
}
