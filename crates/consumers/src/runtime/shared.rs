//! A consumer shared by several instances, one working at a time: taking it over
//! from the one record of its position, and keeping that record current.

use super::*;

impl Runner {
    /// Starts working: resumes from the shared record when there is one. Local marks
    /// and parked events belong to an earlier turn (another instance may have settled
    /// them since), so they are dropped and the log is read again from the record.
    pub(super) async fn take_over(&mut self) -> Result<(), StepError> {
        // The term this turn works under: everything it records is fenced by it.
        self.shared().term = self.config.active.as_ref().and_then(Turn::current);
        let Some(shared) = self.config.shared.clone() else {
            return Ok(());
        };
        let recorded = shared
            .load()
            .await
            .map_err(|e| StepError::Retry(e.into()))?;
        let settled = self.db(|store| store::settled(store.conn())).await?;
        if recorded == 0 {
            // Never recorded (a first start, or an upgrade): this instance's own.
            self.share_position(settled).await;
            return Ok(());
        }
        if recorded == settled {
            return Ok(());
        }
        tracing::info!(consumer.name = %self.config.name, from = recorded, own = settled, "taking over the shared consumer at its recorded position");
        let parking = self.parking.clone();
        self.db(move |store| {
            let tx = store.transaction()?;
            store::forget_applied(&tx)?;
            store::clear_parked(&tx)?;
            store::set_position(&tx, recorded, None)?;
            tx.commit()?;
            parking.clear();
            Ok(())
        })
        .await?;
        {
            let mut shared = self.shared();
            shared.parked = 0;
            shared.parked_skus = 0;
            shared.oldest_parked = None;
            shared.parked_error = None;
        }
        self.moved_to(recorded).await
    }

    pub(super) async fn share_position(&self, settled: i64) {
        share_position(&self.config, &self.shared, settled).await;
    }
}

/// Advances a shared consumer's record to `settled`, fenced by the turn's term (a
/// failure is logged: the next commit or the next worker's takeover covers it, at the
/// price of re-deliveries; a fenced one means another process works it now).
pub(super) async fn share_position(config: &ConsumerConfig, state: &Mutex<Shared>, settled: i64) {
    if let Some(shared) = &config.shared {
        let term = Shared::term_of(state);
        if let Err(error) = shared.advance(settled, term.as_ref()).await {
            tracing::warn!(consumer.name = %config.name, %error, "could not record the shared position");
        }
    }
}
