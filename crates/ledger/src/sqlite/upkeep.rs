//! Retention, the head, stopping, and health.

use super::{Job, SqliteLedger};
use crate::error::LedgerError;
use async_trait::async_trait;
use tokio::sync::oneshot;

#[async_trait]
impl crate::Housekeeping for SqliteLedger {
    async fn purge_events(&self, retention: std::time::Duration) -> Result<usize, LedgerError> {
        let retention = crate::retention_delta(retention)?;
        crate::in_chunks(crate::PURGE_CHUNK, || {
            self.write(move |e| e.purge_events(retention, crate::PURGE_CHUNK))
        })
        .await
    }

    async fn flush(&self, _timeout: std::time::Duration) -> Result<(), LedgerError> {
        Ok(())
    }

    async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(Job::Stop(done)).await.is_ok() {
            let _ = wait.await;
        }
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

#[async_trait]
impl crate::Health for SqliteLedger {
    async fn ping(&self) -> Result<(), LedgerError> {
        if self.jobs.is_closed() {
            return Err(LedgerError::Unavailable("the ledger writer stopped".into()));
        }
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}
