//! Adjustments of on-hand stock, and the reallocation they may set off.

use invsync_core::channel::reallocate;
use invsync_core::{
    Adjust, Cause, Change, DomainError, EventType, Reason, Reservation, Sku, StoreId,
};

use super::reserve::shelf_of;
use super::{held_for, Engine, Tx};
use crate::error::LedgerError;
use crate::model::AdjustmentOutcome;

impl<T: Tx> Engine<'_, T> {
    pub(crate) fn adjust(&mut self, cmd: &Adjust) -> Result<AdjustmentOutcome, LedgerError> {
        let fingerprint = cmd.fingerprint();
        let records = cmd.records();
        if let Some(outcome) = self.recall(&records, &fingerprint)? {
            return serde_json::from_str(&outcome)
                .map_err(|e| LedgerError::Internal(format!("stored adjustment outcome: {e}")));
        }
        let existing = self.tx.stock(&cmd.store_id, &cmd.sku)?;
        let level = existing.unwrap_or_default();
        if let Some(expected) = cmd.if_version {
            if expected != level.version() {
                return Err(DomainError::VersionConflict {
                    expected,
                    actual: level.version(),
                }
                .into());
            }
        }
        let delta = match cmd.change {
            Change::Delta(d) => d.get(),
            Change::SetOnHand(count) => count.get() - level.on_hand(),
        };
        let (level, event_id) = if delta == 0 {
            // A count that confirms what the ledger holds changes nothing: no event.
            (level, None)
        } else {
            let after = level.adjust(delta)?;
            let cause = Cause {
                event_type: EventType::Adjusted,
                reason: cmd.reason.into(),
                quantity: delta,
                order_id: None,
                reservation_id: None,
                external_ref: cmd.external_ref.clone(),
                channel: cmd.channel.clone(),
            };
            let event = self.change(&cmd.store_id, &cmd.sku, after, cause)?;
            // A shortage, before or after: the row as this command leaves it is the
            // one after any reallocation.
            let after = if level.shortage() > 0 || after.shortage() > 0 {
                self.reconcile(&cmd.store_id, &cmd.sku)?;
                self.tx.stock(&cmd.store_id, &cmd.sku)?.unwrap_or(after)
            } else {
                after
            };
            (after, Some(event.event_id))
        };
        let outcome = AdjustmentOutcome {
            event_id,
            store_id: cmd.store_id.clone(),
            sku: cmd.sku.clone(),
            on_hand: level.on_hand(),
            reserved: level.reserved(),
            available: level.available(),
            version: level.version(),
            shortage: level.shortage(),
        };
        if !records.is_empty() {
            let text = serde_json::to_string(&outcome)
                .map_err(|e| LedgerError::Internal(format!("encoding adjustment outcome: {e}")))?;
            self.remember(&records, &fingerprint, &text)?;
        }
        Ok(outcome)
    }

    /// Keeps the channel reservations held at a (store, sku) in step with the row's
    /// shortage (`reserved − on_hand`) after a change of it (channels.md,
    /// reallocation). A shortage larger than what is already marked `short` is taken
    /// from channel reservations newest first: each one's units move to other
    /// locations of its channel where they fit, and what cannot move is marked
    /// short. A shortage that shrank (stock came in, a reservation let go) clears
    /// `short` oldest reservation first. Store-direct reservations never move and are
    /// never marked: their part of a shortage stays the row's alone.
    pub(super) fn reconcile(&mut self, store: &StoreId, sku: &Sku) -> Result<(), LedgerError> {
        let shortage = self.tx.stock(store, sku)?.unwrap_or_default().shortage();
        let mut holds = self.tx.channel_holds(store, sku)?;
        holds.retain(|r| r.allocation(sku, store).is_some_and(|a| a.held() > 0));
        holds.sort_by(|a, b| {
            (b.created_at(), b.reservation_id()).cmp(&(a.created_at(), a.reservation_id()))
        });
        let short_of = |r: &Reservation| r.allocation(sku, store).map_or(0, |a| a.short());
        let marked: i64 = holds.iter().map(short_of).sum();
        if shortage > marked {
            let mut need = shortage - marked;
            for mut r in holds {
                let Some(a) = r.allocation(sku, store) else {
                    continue;
                };
                let (short, take) = (a.short(), (a.held() - a.short()).min(need));
                if take == 0 {
                    continue;
                }
                let moved = self.move_held(&mut r, sku, store, take)?;
                r.set_short(sku, store, short + take - moved);
                self.tx.rewrite_reservation(&r, self.now)?;
                need -= take;
                if need == 0 {
                    break;
                }
            }
        } else if shortage < marked {
            let mut excess = marked - shortage;
            for mut r in holds.into_iter().rev() {
                let short = short_of(&r);
                let clear = short.min(excess);
                if clear == 0 {
                    continue;
                }
                r.set_short(sku, store, short - clear);
                self.tx.update_reservation(&r, self.now)?;
                excess -= clear;
                if excess == 0 {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Moves up to `wanted` units of a channel reservation's `sku` held at `from` to
    /// other locations of its channel (its current configuration and safety stock):
    /// a `RELEASED` at `from`, then a `RESERVED` at each location, all of reason
    /// `reallocated`. Returns how many moved.
    fn move_held(
        &mut self,
        r: &mut Reservation,
        sku: &Sku,
        from: &StoreId,
        wanted: i64,
    ) -> Result<i64, LedgerError> {
        let Some(id) = r.channel().cloned() else {
            return Ok(0);
        };
        let Some(channel) = self.tx.channel(&id)? else {
            return Ok(0);
        };
        let shelves = self.shelves(&channel, std::slice::from_ref(sku))?;
        let to = reallocate(&channel.config, sku, wanted, from, |st, sk| {
            shelf_of(&shelves, st, sk)
        });
        let moved: i64 = to.iter().map(|(_, n)| n).sum();
        if moved == 0 {
            return Ok(0);
        }
        r.relocate(sku, from, &to)?;
        let level = self.tx.stock(from, sku)?.unwrap_or_default();
        let cause = held_for(r, EventType::Released, Reason::Reallocated, -moved);
        self.change(from, sku, level.release(moved)?, cause)?;
        for (store, n) in &to {
            let level = shelf_of(&shelves, store, sku).level.unwrap_or_default();
            let after = level
                .reserve(*n)
                .map_err(|_| LedgerError::Internal("reallocation over availability".into()))?;
            let cause = held_for(r, EventType::Reserved, Reason::Reallocated, *n);
            self.change(store, sku, after, cause)?;
        }
        Ok(moved)
    }
}
