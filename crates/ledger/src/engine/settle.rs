//! Releases and fulfilments: what they take from a reservation and give back to
//! the stock rows.

use invsync_core::{
    settle_fingerprint, DomainError, EventType, Lines, Reason, ReleaseKind, Reservation, Sku,
    StockLevel, StoreId, WriteRecord,
};
use uuid::Uuid;

use super::{held_for, Engine, Tx};
use crate::error::LedgerError;

impl<T: Tx> Engine<'_, T> {
    /// A client's release, applied once per `key` (see [`Self::settle_once`]).
    pub(crate) fn client_release(
        &mut self,
        id: Uuid,
        lines: Option<&Lines>,
        reason: invsync_core::ReleaseReason,
        key: Option<&str>,
    ) -> Result<Reservation, LedgerError> {
        let fingerprint = settle_fingerprint("release", id, lines, Some(reason));
        self.settle_once(id, key, &fingerprint, |e| {
            e.release(id, lines, Reason::from(reason), ReleaseKind::Requested)
        })
    }

    /// A client's fulfilment, applied once per `key` (see [`Self::settle_once`]).
    pub(crate) fn client_fulfil(
        &mut self,
        id: Uuid,
        lines: Option<&Lines>,
        key: Option<&str>,
    ) -> Result<Reservation, LedgerError> {
        let fingerprint = settle_fingerprint("fulfil", id, lines, None);
        self.settle_once(id, key, &fingerprint, |e| e.fulfil(id, lines))
    }

    /// Applies a release or fulfilment once per `key`: a retry under the same key
    /// answers the reservation as it is now, with no second change (a partial release
    /// retried without a key would release twice).
    fn settle_once(
        &mut self,
        id: Uuid,
        key: Option<&str>,
        fingerprint: &str,
        apply: impl FnOnce(&mut Self) -> Result<Reservation, LedgerError>,
    ) -> Result<Reservation, LedgerError> {
        let records: Vec<WriteRecord> = key.map(WriteRecord::for_key).into_iter().collect();
        if self.recall(&records, fingerprint)?.is_some() {
            return self.load(id);
        }
        let reservation = apply(self)?;
        self.remember(&records, fingerprint, "{}")?;
        Ok(reservation)
    }

    /// Releases (part of) a reservation; `kind` tells a client's release from expiry.
    pub(crate) fn release(
        &mut self,
        id: Uuid,
        lines: Option<&Lines>,
        reason: Reason,
        kind: ReleaseKind,
    ) -> Result<Reservation, LedgerError> {
        let mut reservation = self.load(id)?;
        let taken = reservation.release(lines, kind)?;
        self.settle(
            &reservation,
            &taken,
            |level, q| level.release(q),
            EventType::Released,
            reason,
        )?;
        Ok(reservation)
    }

    pub(crate) fn fulfil(
        &mut self,
        id: Uuid,
        lines: Option<&Lines>,
    ) -> Result<Reservation, LedgerError> {
        let mut reservation = self.load(id)?;
        let taken = reservation.fulfil(lines)?;
        self.settle(
            &reservation,
            &taken,
            |level, q| level.fulfil(q),
            EventType::Adjusted,
            Reason::Fulfilled,
        )?;
        Ok(reservation)
    }

    fn load(&mut self, id: Uuid) -> Result<Reservation, LedgerError> {
        self.tx
            .reservation(id)?
            .ok_or_else(|| DomainError::NotFound("reservation").into())
    }

    /// Applies what a release or fulfilment took from the reservation to the stock
    /// rows (in (store, sku) order), with one event per row, then stores the
    /// reservation. Both lower a count by what was taken, so each event's `quantity`
    /// is negative.
    fn settle(
        &mut self,
        reservation: &Reservation,
        taken: &[(StoreId, Sku, i64)],
        step: impl Fn(&StockLevel, i64) -> Result<StockLevel, DomainError>,
        event_type: EventType,
        reason: Reason,
    ) -> Result<(), LedgerError> {
        if taken.is_empty() {
            return Ok(());
        }
        let mut taken = taken.to_vec();
        taken.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        // Every row is checked before any is written (a reservation holds one (store,
        // sku) at most once), so a refusal — a shortage left fewer units on hand than
        // a line ships — leaves nothing behind for the back end to undo.
        // Each row's level before and after.
        let mut levels = Vec::with_capacity(taken.len());
        for (store, sku, quantity) in &taken {
            let level = self.tx.stock(store, sku)?.ok_or_else(|| {
                LedgerError::Internal(format!(
                    "reservation holds {sku} in {store} but the row is gone"
                ))
            })?;
            levels.push((level, step(&level, *quantity)?));
        }
        for ((store, sku, quantity), (_, after)) in taken.iter().zip(&levels) {
            let cause = held_for(reservation, event_type, reason, -quantity);
            self.change(store, sku, *after, cause)?;
        }
        self.tx.update_reservation(reservation, self.now)?;
        // A release lowers a row's shortage: fewer units of the channel reservations
        // still held there are short.
        for ((store, sku, _), (before, _)) in taken.iter().zip(&levels) {
            if before.shortage() > 0 {
                self.reconcile(store, sku)?;
            }
        }
        Ok(())
    }
}
