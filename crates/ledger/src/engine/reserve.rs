//! A new reservation: at one store, or allocated through a channel.

use std::collections::HashMap;

use invsync_core::channel::{allocate, Channel, Shelf};
use invsync_core::{
    Allocated, ChannelId, DomainError, EventType, LineQuantity, Reason, Reservation,
    ReservationLine, Reserve, ShortLine, Sku, StoreId, Target,
};

use super::{held_for, Engine, Part, Tx};
use crate::error::LedgerError;
use crate::model::ReserveOutcome;

impl<T: Tx> Engine<'_, T> {
    pub(crate) fn reserve(&mut self, cmd: &Reserve) -> Result<ReserveOutcome, LedgerError> {
        let key = cmd.idempotency_key();
        let fingerprint = cmd.fingerprint();
        if let Some((stored, reservation)) = self.tx.reservation_by_key(&key)? {
            if stored != fingerprint {
                return Err(cmd.key_conflict().into());
            }
            return Ok(ReserveOutcome {
                reservation,
                created: false,
            });
        }
        let (lines, mut parts) = match cmd.target() {
            Target::Store(store) => self.at_store(store, cmd)?,
            Target::Channel(channel) => self.in_channel(channel, cmd)?,
        };
        let reservation = Reservation::open(
            cmd.order_id().clone(),
            cmd.target().clone(),
            lines,
            cmd.ttl()
                .map(|ttl| self.now + chrono::TimeDelta::seconds(ttl.get())),
            self.now,
        )
        .map_err(|e| LedgerError::Internal(format!("a new reservation: {e}")))?;
        // Written in (store, sku) order, as the rows were read.
        parts.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        for (store, sku, quantity, after) in parts {
            let cause = held_for(
                &reservation,
                EventType::Reserved,
                Reason::OrderPlaced,
                quantity,
            );
            self.change(&store, &sku, after, cause)?;
        }
        self.tx
            .insert_reservation(&reservation, &key, &fingerprint)?;
        Ok(ReserveOutcome {
            reservation,
            created: true,
        })
    }

    /// The lines of a store-direct reservation, every one at `store`, or the short
    /// lines. Rows are visited in (store, sku) order: on a back end with row locks,
    /// two orders over the same SKUs then lock in the same order and cannot deadlock.
    fn at_store(
        &mut self,
        store: &StoreId,
        cmd: &Reserve,
    ) -> Result<(Vec<ReservationLine>, Vec<Part>), LedgerError> {
        let mut order: Vec<usize> = (0..cmd.lines().len()).collect();
        order.sort_by(|&a, &b| cmd.lines()[a].0.cmp(&cmd.lines()[b].0));
        let mut parts = Vec::with_capacity(order.len());
        let mut short = Vec::new();
        for &i in &order {
            let (sku, quantity) = &cmd.lines()[i];
            let level = self.tx.stock(store, sku)?.unwrap_or_default();
            match level.reserve(quantity.get()) {
                Ok(after) => parts.push((store.clone(), sku.clone(), quantity.get(), after)),
                Err(available) => short.push(ShortLine {
                    sku: sku.clone(),
                    requested: quantity.get(),
                    available,
                }),
            }
        }
        if !short.is_empty() {
            return Err(DomainError::InsufficientStock { lines: short }.into());
        }
        let lines = cmd
            .lines()
            .iter()
            .map(|(sku, q)| ReservationLine::new(store.clone(), sku.clone(), *q))
            .collect();
        Ok((lines, parts))
    }

    /// The lines of a channel reservation, allocated to the channel's locations by its
    /// rules and never into safety stock, or the short lines with the channel's
    /// availability. Every candidate row is read (and locked) in (store, sku) order.
    fn in_channel(
        &mut self,
        id: &ChannelId,
        cmd: &Reserve,
    ) -> Result<(Vec<ReservationLine>, Vec<Part>), LedgerError> {
        let channel = self
            .tx
            .channel(id)?
            .ok_or(DomainError::NotFound("channel"))?;
        let skus: Vec<Sku> = cmd.lines().iter().map(|(sku, _)| sku.clone()).collect();
        let shelves = self.shelves(&channel, &skus)?;
        let shelf = |store: &StoreId, sku: &Sku| shelf_of(&shelves, store, sku);
        let allocation = allocate(&channel.config, cmd.lines(), shelf)
            .map_err(|lines| DomainError::InsufficientStock { lines })?;
        let mut parts = Vec::new();
        let mut lines = Vec::with_capacity(allocation.len());
        for ((sku, _), taken) in cmd.lines().iter().zip(allocation) {
            let mut allocations = Vec::with_capacity(taken.len());
            for (store, quantity) in taken {
                let level = shelf(&store, sku).level.unwrap_or_default();
                // `allocate` only hands out channel-available units, so this holds;
                // checked all the same rather than trusted.
                let after = level
                    .reserve(quantity)
                    .map_err(|_| LedgerError::Internal("allocation over availability".into()))?;
                parts.push((store.clone(), sku.clone(), quantity, after));
                let units = LineQuantity::new(quantity).map_err(|e| {
                    LedgerError::Internal(format!("an allocation of {quantity}: {e}"))
                })?;
                allocations.push(Allocated::new(store, units));
            }
            let line = ReservationLine::allocated(sku.clone(), allocations)
                .map_err(|e| LedgerError::Internal(format!("a new reservation line: {e}")))?;
            lines.push(line);
        }
        Ok((lines, parts))
    }

    /// What the channel sees of each of its locations for `skus`: the level and the
    /// safety stock there (the per-SKU override, else the location's). Rows are read
    /// in (store, sku) order.
    pub(super) fn shelves(
        &mut self,
        channel: &Channel,
        skus: &[Sku],
    ) -> Result<HashMap<(StoreId, Sku), Shelf>, LedgerError> {
        let overrides = self.tx.safety_overrides(&channel.channel_id, skus)?;
        let mut rows: Vec<(StoreId, Sku, i64)> = channel
            .config
            .locations()
            .iter()
            .flat_map(|l| {
                skus.iter()
                    .map(move |sku| (l.store_id.clone(), sku.clone(), l.safety_stock))
            })
            .collect();
        rows.sort();
        let mut shelves = HashMap::with_capacity(rows.len());
        for (store, sku, default) in rows {
            let level = self.tx.stock(&store, &sku)?;
            let key = (store, sku);
            let safety_stock = match overrides.get(&key) {
                Some((Some(n), _)) => *n,
                _ => default,
            };
            shelves.insert(
                key,
                Shelf {
                    level,
                    safety_stock,
                },
            );
        }
        Ok(shelves)
    }
}

/// What the channel sees at (store, sku): nothing where the location has no row.
pub(super) fn shelf_of(
    shelves: &HashMap<(StoreId, Sku), Shelf>,
    store: &StoreId,
    sku: &Sku,
) -> Shelf {
    shelves
        .get(&(store.clone(), sku.clone()))
        .copied()
        .unwrap_or(Shelf {
            level: None,
            safety_stock: 0,
        })
}
