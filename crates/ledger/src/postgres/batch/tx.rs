//! [`Tx`] over the batch: reads served from what the batch holds (locking on a miss,
//! without waiting), writes buffered with how to undo them.

use chrono::{DateTime, Utc};
use invsync_core::channel::{Channel, SafetyOverride};
use invsync_core::{ChannelId, LogRecord, Reservation, Sku, StockLevel, StoreId};
use uuid::Uuid;

use crate::engine::{Overrides, Tx};
use crate::error::LedgerError;
use crate::postgres::rows::{load_reservation, load_reservations};

use super::prefetch::{channel_rows, load_overrides, lock_now, lock_reservations, lock_rows, Lock};
use super::{execute, key, query, query_opt, BufferedTx, Key, Row, State};

impl Tx for BufferedTx<'_, '_> {
    fn stock(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<StockLevel>, LedgerError> {
        let k = key(store, sku);
        if let Some(row) = self.state.stock.get(&k) {
            return Ok(row.level);
        }
        let found = query_opt(
            self.pg,
            self.statements,
            "SELECT on_hand, reserved, version FROM stock
             WHERE store_id = $1 AND sku = $2 FOR UPDATE",
            &[&store.as_str(), &sku.as_str()],
        )?;
        let level = match found {
            Some(r) => Some(StockLevel::new(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
            )?),
            None => None,
        };
        // What PostgreSQL holds (and now locks): true whatever this command decides.
        self.state.stock.insert(
            k,
            Row {
                level,
                stored: level.is_some(),
                written: None,
            },
        );
        Ok(level)
    }

    fn put_stock(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        level: StockLevel,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let k = key(store, sku);
        let before = self.state.stock.get(&k).cloned();
        let stored = before.as_ref().is_some_and(|r| r.stored);
        self.state.stock.insert(
            k.clone(),
            Row {
                level: Some(level),
                stored,
                written: Some(now),
            },
        );
        self.undo.push(Box::new(move |s: &mut State| match before {
            Some(row) => {
                s.stock.insert(k, row);
            }
            None => {
                s.stock.remove(&k);
            }
        }));
        Ok(())
    }

    fn append(&mut self, record: LogRecord) -> Result<(), LedgerError> {
        self.state.events.push(record);
        let len = self.state.events.len() - 1;
        self.undo
            .push(Box::new(move |s: &mut State| s.events.truncate(len)));
        Ok(())
    }

    fn source(&self) -> &str {
        self.source
    }

    fn channel(&mut self, id: &ChannelId) -> Result<Option<Channel>, LedgerError> {
        if let Some(found) = self.state.channels.get(id) {
            return Ok(found.clone());
        }
        // Not read by a prefetch: an admin write, which locks the channel so that two
        // changes of it serialize, and so that it waits for the reservations that
        // share-locked the channel in their prefetch (see `Lock::Share`).
        let found = query_opt(
            self.pg,
            self.statements,
            "SELECT version, config FROM channels WHERE channel_id = $1 FOR UPDATE",
            &[&id.as_str()],
        )?
        .map(|r| crate::parts::channel(id.as_str(), r.try_get(0)?, r.try_get::<_, &str>(1)?))
        .transpose()?;
        self.state.channels.insert(id.clone(), found.clone());
        Ok(found)
    }

    fn put_channel(&mut self, channel: &Channel, now: DateTime<Utc>) -> Result<(), LedgerError> {
        // Written at once: an admin write runs alone in its transaction.
        execute(
            self.pg,
            self.statements,
            "INSERT INTO channels (channel_id, version, config, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel_id) DO UPDATE SET version = EXCLUDED.version,
                 config = EXCLUDED.config, updated_at = EXCLUDED.updated_at",
            &[
                &channel.channel_id.as_str(),
                &channel.version,
                &crate::parts::config_json(&channel.config)?,
                &now,
            ],
        )?;
        self.state
            .channels
            .insert(channel.channel_id.clone(), Some(channel.clone()));
        Ok(())
    }

    fn safety_overrides(
        &mut self,
        channel: &ChannelId,
        skus: &[Sku],
    ) -> Result<Overrides, LedgerError> {
        if let Some((known, overrides)) = self.state.overrides.get(channel) {
            if skus.iter().all(|s| known.contains(s)) {
                return Ok(overrides.clone());
            }
        }
        load_overrides(self.pg, self.statements, channel, skus)
    }

    fn put_safety_override(
        &mut self,
        channel: &ChannelId,
        item: &SafetyOverride,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        execute(
            self.pg,
            self.statements,
            "INSERT INTO safety_stock (channel_id, sku, store_id, safety_stock, version, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (channel_id, sku, store_id) DO UPDATE SET
                 safety_stock = EXCLUDED.safety_stock, version = EXCLUDED.version,
                 updated_at = EXCLUDED.updated_at",
            &[
                &channel.as_str(),
                &item.sku.as_str(),
                &item.store_id.as_str(),
                &item.safety_stock,
                &version,
                &now,
            ],
        )?;
        Ok(())
    }

    fn reservation_by_key(
        &mut self,
        key: &str,
    ) -> Result<Option<(String, Reservation)>, LedgerError> {
        if let Some((fingerprint, id)) = self.state.by_key.get(key) {
            if let Some(r) = self.state.reservations.get(id) {
                return Ok(Some((fingerprint.clone(), r.clone())));
            }
        }
        if self.state.unused_keys.contains(key) {
            return Ok(None);
        }
        let Some(row) = query_opt(
            self.pg,
            self.statements,
            "SELECT id, fingerprint FROM reservations WHERE idem_key = $1",
            &[&key],
        )?
        else {
            return Ok(None);
        };
        let id: Uuid = row.try_get(0)?;
        let reservation = match self.state.reservations.get(&id) {
            Some(r) => r.clone(),
            None => load_reservation(self.pg, id)?
                .ok_or_else(|| LedgerError::Internal(format!("reservation {id} vanished")))?,
        };
        Ok(Some((row.try_get(1)?, reservation)))
    }

    fn reservation(&mut self, id: Uuid) -> Result<Option<Reservation>, LedgerError> {
        if let Some(r) = self.state.reservations.get(&id) {
            return Ok(Some(r.clone()));
        }
        // Lock the reservation so two releases of it serialize.
        if self
            .pg
            .query_opt(
                "SELECT 1 FROM reservations WHERE id = $1 FOR UPDATE",
                &[&id],
            )?
            .is_none()
        {
            return Ok(None);
        }
        let loaded = load_reservation(self.pg, id)?;
        if let Some(r) = &loaded {
            self.state.reservations.insert(id, r.clone());
        }
        Ok(loaded)
    }

    fn insert_reservation(
        &mut self,
        r: &Reservation,
        key: &str,
        fingerprint: &str,
    ) -> Result<(), LedgerError> {
        let id = r.reservation_id();
        self.state.reservations.insert(id, r.clone());
        self.state
            .inserted
            .push((id, key.to_owned(), fingerprint.to_owned()));
        self.state
            .by_key
            .insert(key.to_owned(), (fingerprint.to_owned(), id));
        let key = key.to_owned();
        self.undo.push(Box::new(move |s: &mut State| {
            s.reservations.remove(&id);
            s.inserted.pop();
            s.by_key.remove(&key);
        }));
        Ok(())
    }

    fn update_reservation(
        &mut self,
        r: &Reservation,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let id = r.reservation_id();
        let before = self.state.reservations.insert(id, r.clone());
        let is_new = self.state.inserted.iter().any(|(i, _, _)| *i == id);
        let newly_updated = !is_new && self.state.updated.insert(id);
        self.state.now = Some(now);
        self.undo.push(Box::new(move |s: &mut State| {
            match before {
                Some(r) => s.reservations.insert(id, r),
                None => s.reservations.remove(&id),
            };
            if newly_updated {
                s.updated.remove(&id);
            }
        }));
        Ok(())
    }

    fn rewrite_reservation(
        &mut self,
        r: &Reservation,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.update_reservation(r, now)?;
        let id = r.reservation_id();
        if self.state.updated.contains(&id) && self.state.relined.insert(id) {
            self.undo.push(Box::new(move |s: &mut State| {
                s.relined.remove(&id);
            }));
        }
        Ok(())
    }

    /// The prefetch could not know these reservations, nor the rows a move of them
    /// may touch (every location of their channels), so they are locked here, after
    /// the batch's other locks: out of the global order. Waiting for them could
    /// deadlock, so they are taken `NOWAIT`; if one is busy, the batch is rolled back
    /// and run again with all of them in its prefetch, where they are taken in order.
    fn channel_holds(
        &mut self,
        store: &StoreId,
        sku: &Sku,
    ) -> Result<Vec<Reservation>, LedgerError> {
        // What is stored, and what this batch made or changed and has not written yet.
        let mut ids: Vec<Uuid> = query(
            self.pg,
            self.statements,
            "SELECT h.reservation_id FROM channel_holds h
             JOIN reservations r ON r.id = h.reservation_id
             WHERE h.store_id = $1 AND h.sku = $2 AND r.status = 'active'",
            &[&store.as_str(), &sku.as_str()],
        )?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        ids.extend(
            self.state
                .reservations
                .values()
                .filter(|r| r.channel().is_some() && r.allocation(sku, store).is_some())
                .map(|r| r.reservation_id()),
        );
        ids.sort();
        ids.dedup();
        let missing: Vec<Uuid> = ids
            .iter()
            .filter(|id| !self.state.reservations.contains_key(id))
            .copied()
            .collect();
        // Read unlocked first, to know which rows they may touch.
        let unlocked = load_reservations(self.pg, &missing, false)?;
        let mut rows: Vec<Key> = Vec::new();
        let mut channels: Vec<ChannelId> = Vec::new();
        for r in unlocked
            .iter()
            .chain(ids.iter().filter_map(|id| self.state.reservations.get(id)))
        {
            rows.extend(r.rows().iter().map(|(st, sk)| key(st, sk)));
            channels.extend(r.channel().cloned());
        }
        channels.sort();
        channels.dedup();
        for c in &channels {
            rows.extend(channel_rows(
                self.pg,
                self.statements,
                self.state,
                c,
                std::slice::from_ref(sku),
                Lock::None,
            )?);
        }
        rows.retain(|k| !self.state.stock.contains_key(k));
        rows.sort();
        rows.dedup();
        if let Err(e) = lock_now(self.pg, self.state, &missing, &rows) {
            self.state.learned.reservations.extend(missing);
            self.state.learned.rows.extend(rows);
            return Err(e);
        }
        let mut holds = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.state.reservations.get(&id) {
                if r.status() == invsync_core::ReservationStatus::Active {
                    holds.push(r.clone());
                }
            }
        }
        Ok(holds)
    }

    fn recorded(&mut self, key: &str) -> Result<Option<(String, String)>, LedgerError> {
        if let Some(found) = self.state.adjustments_by_ref.get(key) {
            return Ok(Some(found.clone()));
        }
        // The `adjustments` table records every repeatable write: its key column holds
        // an external_ref or a key made by `record_key`.
        let Some(row) = query_opt(
            self.pg,
            self.statements,
            "SELECT fingerprint, outcome FROM adjustments WHERE external_ref = $1",
            &[&key],
        )?
        else {
            return Ok(None);
        };
        Ok(Some((row.try_get(0)?, row.try_get(1)?)))
    }

    fn record(
        &mut self,
        key: &str,
        fingerprint: &str,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let r = key.to_owned();
        self.state
            .adjustments
            .push((r.clone(), fingerprint.to_owned(), outcome.to_owned(), now));
        self.state
            .adjustments_by_ref
            .insert(r.clone(), (fingerprint.to_owned(), outcome.to_owned()));
        self.undo.push(Box::new(move |s: &mut State| {
            s.adjustments.pop();
            s.adjustments_by_ref.remove(&r);
        }));
        Ok(())
    }

    // Not buffered: these write (or lock) at once, inside the same transaction, which
    // commits only if the whole command succeeds.
    fn purge_events(&mut self, before: DateTime<Utc>, limit: usize) -> Result<usize, LedgerError> {
        // Offsets only grow with time, so the oldest events are the lowest offsets;
        // deleting a prefix keeps the retained log gapless.
        Ok(execute(
            self.pg,
            self.statements,
            "DELETE FROM events WHERE log_offset IN (
                 SELECT log_offset FROM events WHERE occurred_at < $1 ORDER BY log_offset LIMIT $2)",
            &[&before, &(limit as i64)],
        )? as usize)
    }

    fn due_reservations(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Uuid>, LedgerError> {
        // SKIP LOCKED: instances sweeping at once split the work instead of queueing.
        let rows = query(
            self.pg,
            self.statements,
            "SELECT id FROM reservations
             WHERE status = 'active' AND expires_at IS NOT NULL AND expires_at <= $1
             ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&now, &(limit as i64)],
        )?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    fn lock_reservations(&mut self, ids: &[Uuid]) -> Result<(), LedgerError> {
        let rows = lock_reservations(self.pg, self.state, ids.to_vec())?;
        lock_rows(self.pg, self.statements, self.state, rows)
    }

    fn advance_cursor(
        &mut self,
        name: &str,
        offset: i64,
        term: Option<&crate::Term>,
    ) -> Result<(), LedgerError> {
        self.write_cursor(
            name,
            offset,
            term,
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, EXCLUDED.value)",
        )
    }

    fn set_cursor(
        &mut self,
        name: &str,
        offset: i64,
        term: Option<&crate::Term>,
    ) -> Result<(), LedgerError> {
        self.write_cursor(
            name,
            offset,
            term,
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        )
    }
}

impl BufferedTx<'_, '_> {
    /// Writes a named cursor with `sql` (an upsert of its key and offset), after the
    /// fence check when written under a lease term.
    fn write_cursor(
        &mut self,
        name: &str,
        offset: i64,
        term: Option<&crate::Term>,
        sql: &'static str,
    ) -> Result<(), LedgerError> {
        if let Some(term) = term {
            crate::postgres::lease::check_fence(self.pg, term)?;
        }
        execute(
            self.pg,
            self.statements,
            sql,
            &[&crate::cursor_key(name), &offset],
        )?;
        Ok(())
    }
}
