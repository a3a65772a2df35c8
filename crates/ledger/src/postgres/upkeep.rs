//! Retention, the head, stopping, and health.

use super::PgLedger;
use crate::error::LedgerError;
use async_trait::async_trait;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[async_trait]
impl crate::Housekeeping for PgLedger {
    async fn purge_events(&self, retention: std::time::Duration) -> Result<usize, LedgerError> {
        let retention = crate::retention_delta(retention)?;
        crate::in_chunks(crate::PURGE_CHUNK, || {
            self.write(move |e| e.purge_events(retention, crate::PURGE_CHUNK))
        })
        .await
    }

    async fn flush(&self, timeout: Duration) -> Result<(), LedgerError> {
        // Committed events are in the log already; wait until this instance's head
        // (what wakes its consumers) has seen them too.
        let last: i64 = self
            .read(|c| {
                Ok(
                    c.query_one("SELECT value FROM meta WHERE key = 'last_offset'", &[])?
                        .get(0),
                )
            })
            .await?;
        let mut head = self.head.clone();
        let reached = tokio::time::timeout(timeout, head.wait_for(|h| *h >= last))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(LedgerError::Unavailable(format!(
                "the head has not reached offset {last}"
            )))
        }
    }

    async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let handle = self
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

#[async_trait]
impl crate::Health for PgLedger {
    async fn ping(&self) -> Result<(), LedgerError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LedgerError::Unavailable(
                "the ledger is shutting down".into(),
            ));
        }
        let server: String = self
            .read(|c| {
                Ok(c.query_one(
                    "SELECT coalesce(host(inet_server_addr()) || ':' || inet_server_port(), 'local socket')",
                    &[],
                )?
                .get(0))
            })
            .await?;
        let mut known = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if known.as_deref() != Some(server.as_str()) {
            tracing::info!(ledger.server = %server, was = ?*known, "the ledger is served by this PostgreSQL server now");
            *known = Some(server);
        }
        Ok(())
    }

    fn server(&self) -> Option<String> {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
