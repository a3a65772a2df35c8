//! An in-memory [`Tx`] for the engine's unit tests: every row in a map, no locks,
//! nothing durable. Each test runs one command in a fresh [`Engine`] over a
//! [`Memory`] and then looks at the rows, the reservations and the log directly,
//! without a database.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use invsync_core::channel::{Channel, SafetyOverride};
use invsync_core::{ChannelId, LogRecord, Reservation, Sku, StockLevel, StoreId};
use uuid::Uuid;

use super::{Overrides, Tx};
use crate::error::LedgerError;

/// Every row of a ledger, as maps. `Clone` + `PartialEq`, so that a test can assert
/// that a refused command left everything exactly as it was.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Memory {
    pub(super) stock: BTreeMap<(StoreId, Sku), StockLevel>,
    pub(super) log: Vec<LogRecord>,
    pub(super) channels: BTreeMap<ChannelId, Channel>,
    pub(super) overrides: HashMap<(ChannelId, StoreId, Sku), (Option<i64>, i64)>,
    /// By id, with the idempotency key and fingerprint it was made under.
    pub(super) reservations: BTreeMap<Uuid, (String, String, Reservation)>,
    pub(super) records: HashMap<String, (String, String)>,
    pub(super) cursors: HashMap<String, i64>,
}

impl Tx for Memory {
    fn stock(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<StockLevel>, LedgerError> {
        Ok(self.stock.get(&(store.clone(), sku.clone())).copied())
    }

    fn put_stock(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        level: StockLevel,
        _now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.stock.insert((store.clone(), sku.clone()), level);
        Ok(())
    }

    fn append(&mut self, record: LogRecord) -> Result<(), LedgerError> {
        self.log.push(record);
        Ok(())
    }

    fn source(&self) -> &str {
        "invsync://memory"
    }

    fn channel(&mut self, id: &ChannelId) -> Result<Option<Channel>, LedgerError> {
        Ok(self.channels.get(id).cloned())
    }

    fn put_channel(&mut self, channel: &Channel, _now: DateTime<Utc>) -> Result<(), LedgerError> {
        self.channels
            .insert(channel.channel_id.clone(), channel.clone());
        Ok(())
    }

    fn safety_overrides(
        &mut self,
        channel: &ChannelId,
        skus: &[Sku],
    ) -> Result<Overrides, LedgerError> {
        Ok(self
            .overrides
            .iter()
            .filter(|((c, _, sku), _)| c == channel && skus.contains(sku))
            .map(|((_, store, sku), value)| ((store.clone(), sku.clone()), *value))
            .collect())
    }

    fn put_safety_override(
        &mut self,
        channel: &ChannelId,
        item: &SafetyOverride,
        version: i64,
        _now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let key = (channel.clone(), item.store_id.clone(), item.sku.clone());
        self.overrides.insert(key, (item.safety_stock, version));
        Ok(())
    }

    fn reservation_by_key(
        &mut self,
        key: &str,
    ) -> Result<Option<(String, Reservation)>, LedgerError> {
        Ok(self
            .reservations
            .values()
            .find(|(k, _, _)| k == key)
            .map(|(_, fingerprint, r)| (fingerprint.clone(), r.clone())))
    }

    fn reservation(&mut self, id: Uuid) -> Result<Option<Reservation>, LedgerError> {
        Ok(self.reservations.get(&id).map(|(_, _, r)| r.clone()))
    }

    fn insert_reservation(
        &mut self,
        reservation: &Reservation,
        key: &str,
        fingerprint: &str,
    ) -> Result<(), LedgerError> {
        let row = (key.to_owned(), fingerprint.to_owned(), reservation.clone());
        self.reservations.insert(reservation.reservation_id(), row);
        Ok(())
    }

    fn update_reservation(
        &mut self,
        reservation: &Reservation,
        _now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let Some(row) = self.reservations.get_mut(&reservation.reservation_id()) else {
            return Err(LedgerError::Internal(
                "update of a missing reservation".into(),
            ));
        };
        row.2 = reservation.clone();
        Ok(())
    }

    fn rewrite_reservation(
        &mut self,
        reservation: &Reservation,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.update_reservation(reservation, now)
    }

    fn channel_holds(
        &mut self,
        store: &StoreId,
        sku: &Sku,
    ) -> Result<Vec<Reservation>, LedgerError> {
        Ok(self
            .reservations
            .values()
            .map(|(_, _, r)| r)
            .filter(|r| r.channel().is_some() && r.held() > 0)
            .filter(|r| r.allocation(sku, store).is_some())
            .cloned()
            .collect())
    }

    fn recorded(&mut self, key: &str) -> Result<Option<(String, String)>, LedgerError> {
        Ok(self.records.get(key).cloned())
    }

    fn record(
        &mut self,
        key: &str,
        fingerprint: &str,
        outcome: &str,
        _now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let value = (fingerprint.to_owned(), outcome.to_owned());
        self.records.insert(key.to_owned(), value);
        Ok(())
    }

    fn purge_events(&mut self, before: DateTime<Utc>, limit: usize) -> Result<usize, LedgerError> {
        let n = self
            .log
            .iter()
            .take(limit)
            .take_while(|r| r.occurred_at < before)
            .count();
        self.log.drain(..n);
        Ok(n)
    }

    fn due_reservations(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Uuid>, LedgerError> {
        Ok(self
            .reservations
            .values()
            .map(|(_, _, r)| r)
            .filter(|r| r.held() > 0 && r.expires_at().is_some_and(|at| at <= now))
            .map(Reservation::reservation_id)
            .take(limit)
            .collect())
    }

    fn advance_cursor(
        &mut self,
        name: &str,
        offset: i64,
        _term: Option<&crate::Term>,
    ) -> Result<(), LedgerError> {
        let cursor = self.cursors.entry(name.to_owned()).or_default();
        *cursor = (*cursor).max(offset);
        Ok(())
    }

    fn set_cursor(
        &mut self,
        name: &str,
        offset: i64,
        _term: Option<&crate::Term>,
    ) -> Result<(), LedgerError> {
        self.cursors.insert(name.to_owned(), offset);
        Ok(())
    }
}
