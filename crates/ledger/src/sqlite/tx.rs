//! The writer's side of a SQLite transaction: [`Tx`] for the engine.

use chrono::{DateTime, Utc};
use invsync_core::channel::{Channel, SafetyOverride};
use invsync_core::{ChannelId, LogRecord, Reservation, Sku, StockLevel, StoreId};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::rows::{self, micros};
use crate::engine::{Overrides, Tx};
use crate::error::LedgerError;

pub(crate) struct SqliteTx<'a> {
    pub(crate) conn: &'a Connection,
    /// The last offset written; the writer restores it when a command rolls back.
    pub(crate) last_offset: &'a mut i64,
    /// The CloudEvents `source` of this deployment.
    pub(crate) source: &'a str,
}

impl Tx for SqliteTx<'_> {
    fn stock(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<StockLevel>, LedgerError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT on_hand, reserved, version FROM stock WHERE store_id = ?1 AND sku = ?2",
            )?
            .query_row(params![store.as_str(), sku.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        Ok(match row {
            Some((on_hand, reserved, version)) => {
                Some(StockLevel::new(on_hand, reserved, version)?)
            }
            None => None,
        })
    }

    fn put_stock(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        level: StockLevel,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO stock (store_id, sku, on_hand, reserved, version, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (store_id, sku) DO UPDATE SET on_hand = excluded.on_hand,
                     reserved = excluded.reserved, version = excluded.version,
                     updated_at = excluded.updated_at",
            )?
            .execute(params![
                store.as_str(),
                sku.as_str(),
                level.on_hand(),
                level.reserved(),
                level.version(),
                micros(now)
            ])?;
        Ok(())
    }

    fn append(&mut self, record: LogRecord) -> Result<(), LedgerError> {
        let offset = *self.last_offset + 1;
        self.conn
            .prepare_cached(
                "INSERT INTO events (log_offset, event_id, store_id, sku, version, occurred_at, envelope)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                offset,
                record.event_id.as_bytes(),
                record.store_id,
                record.key,
                record.version,
                micros(record.occurred_at),
                record.envelope
            ])?;
        *self.last_offset = offset;
        Ok(())
    }

    fn source(&self) -> &str {
        self.source
    }

    fn channel(&mut self, id: &ChannelId) -> Result<Option<Channel>, LedgerError> {
        rows::load_channel(self.conn, id)
    }

    fn put_channel(&mut self, channel: &Channel, now: DateTime<Utc>) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO channels (channel_id, version, config, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (channel_id) DO UPDATE SET version = excluded.version,
                     config = excluded.config, updated_at = excluded.updated_at",
            )?
            .execute(params![
                channel.channel_id.as_str(),
                channel.version,
                crate::parts::config_json(&channel.config)?,
                micros(now)
            ])?;
        Ok(())
    }

    fn safety_overrides(
        &mut self,
        channel: &ChannelId,
        skus: &[Sku],
    ) -> Result<Overrides, LedgerError> {
        let mut out = Overrides::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT store_id, safety_stock, version FROM safety_stock
             WHERE channel_id = ?1 AND sku = ?2",
        )?;
        for sku in skus {
            let mut found = stmt.query(params![channel.as_str(), sku.as_str()])?;
            while let Some(row) = found.next()? {
                let store = StoreId::parse(row.get::<_, String>(0)?)
                    .map_err(|e| LedgerError::Internal(format!("stored store_id: {e}")))?;
                out.insert((store, sku.clone()), (row.get(1)?, row.get(2)?));
            }
        }
        Ok(out)
    }

    fn put_safety_override(
        &mut self,
        channel: &ChannelId,
        item: &SafetyOverride,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO safety_stock (channel_id, sku, store_id, safety_stock, version, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (channel_id, sku, store_id) DO UPDATE SET
                     safety_stock = excluded.safety_stock, version = excluded.version,
                     updated_at = excluded.updated_at",
            )?
            .execute(params![
                channel.as_str(),
                item.sku.as_str(),
                item.store_id.as_str(),
                item.safety_stock,
                version,
                micros(now)
            ])?;
        Ok(())
    }

    fn reservation_by_key(
        &mut self,
        key: &str,
    ) -> Result<Option<(String, Reservation)>, LedgerError> {
        let found = self
            .conn
            .prepare_cached("SELECT id, fingerprint FROM reservations WHERE idem_key = ?1")?
            .query_row([key], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?;
        let Some((id, fingerprint)) = found else {
            return Ok(None);
        };
        let id = rows::uuid(&id)?;
        let reservation = rows::load_reservation(self.conn, id)?
            .ok_or_else(|| LedgerError::Internal(format!("reservation {id} vanished")))?;
        Ok(Some((fingerprint, reservation)))
    }

    fn reservation(&mut self, id: Uuid) -> Result<Option<Reservation>, LedgerError> {
        rows::load_reservation(self.conn, id)
    }

    fn insert_reservation(
        &mut self,
        r: &Reservation,
        key: &str,
        fingerprint: &str,
    ) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO reservations
                 (id, order_id, store_id, channel, idem_key, fingerprint, status, expires_at, created_at, updated_at, lines)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
            )?
            .execute(params![
                r.reservation_id().as_bytes(),
                r.order_id().as_str(),
                r.store_id().map_or("", StoreId::as_str),
                r.channel().map(ChannelId::as_str),
                key,
                fingerprint,
                r.status().as_str(),
                r.expires_at().map(micros),
                micros(r.created_at()),
                crate::parts::rows_json(r)?
            ])?;
        self.list_holds(r)
    }

    fn update_reservation(
        &mut self,
        r: &Reservation,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "UPDATE reservations SET status = ?2, updated_at = ?3, lines = ?4 WHERE id = ?1",
            )?
            .execute(params![
                r.reservation_id().as_bytes(),
                r.status().as_str(),
                micros(now),
                crate::parts::rows_json(r)?
            ])?;
        Ok(())
    }

    fn rewrite_reservation(
        &mut self,
        r: &Reservation,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.update_reservation(r, now)?;
        self.list_holds(r)
    }

    fn channel_holds(
        &mut self,
        store: &StoreId,
        sku: &Sku,
    ) -> Result<Vec<Reservation>, LedgerError> {
        let ids: Vec<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT h.reservation_id FROM channel_holds h
                 JOIN reservations r ON r.id = h.reservation_id
                 WHERE h.store_id = ?1 AND h.sku = ?2 AND r.status = 'active'",
            )?
            .query_map([store.as_str(), sku.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut holds = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = rows::load_reservation(self.conn, rows::uuid(&id)?)? {
                holds.push(r);
            }
        }
        Ok(holds)
    }

    fn recorded(&mut self, key: &str) -> Result<Option<(String, String)>, LedgerError> {
        // The `adjustments` table records every repeatable write: its key column holds
        // an external_ref or a key made by `record_key`.
        Ok(self
            .conn
            .prepare_cached("SELECT fingerprint, outcome FROM adjustments WHERE external_ref = ?1")?
            .query_row([key], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?)
    }

    fn record(
        &mut self,
        key: &str,
        fingerprint: &str,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO adjustments (external_ref, fingerprint, outcome, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![key, fingerprint, outcome, micros(now)])?;
        Ok(())
    }

    fn purge_events(&mut self, before: DateTime<Utc>, limit: usize) -> Result<usize, LedgerError> {
        // Offsets only grow with time, so the oldest events are the lowest offsets;
        // deleting a prefix keeps the retained log gapless.
        let Some(oldest) = self
            .conn
            .prepare_cached("SELECT log_offset FROM events ORDER BY log_offset LIMIT 1")?
            .query_row([], |r| r.get::<_, i64>(0))
            .optional()?
        else {
            return Ok(0);
        };
        let kept = match rows::first_offset_since(self.conn, before)? {
            Some(offset) => offset,
            None => *self.last_offset + 1,
        };
        let end = kept.min(oldest.saturating_add(limit as i64));
        Ok(self
            .conn
            .prepare_cached("DELETE FROM events WHERE log_offset < ?1")?
            .execute([end])?)
    }

    // One process owns a SQLite ledger: its terms never end, so there is nothing to
    // fence.
    fn advance_cursor(
        &mut self,
        name: &str,
        offset: i64,
        _term: Option<&crate::Term>,
    ) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            )?
            .execute(params![crate::cursor_key(name), offset])?;
        Ok(())
    }

    fn set_cursor(
        &mut self,
        name: &str,
        offset: i64,
        _term: Option<&crate::Term>,
    ) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![crate::cursor_key(name), offset])?;
        Ok(())
    }

    fn due_reservations(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Uuid>, LedgerError> {
        rows::reservation_ids(
            self.conn,
            "SELECT id FROM reservations
             WHERE status = 'active' AND expires_at IS NOT NULL AND expires_at <= ?1
             ORDER BY expires_at LIMIT ?2",
            params![micros(now), limit as i64],
        )
    }
}

impl SqliteTx<'_> {
    /// Lists a channel reservation's allocations in `channel_holds`, where
    /// reallocation finds them. An entry is never removed: one the reservation no
    /// longer holds (moved away, or the reservation ended) is skipped when read.
    fn list_holds(&mut self, r: &Reservation) -> Result<(), LedgerError> {
        if r.channel().is_none() {
            return Ok(());
        }
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO channel_holds (store_id, sku, reservation_id) VALUES (?1, ?2, ?3)",
        )?;
        for (store, sku) in r.rows() {
            stmt.execute(params![
                store.as_str(),
                sku.as_str(),
                r.reservation_id().as_bytes()
            ])?;
        }
        Ok(())
    }
}
