//! The commit stage: what one batch writes to the consumer's store, in one
//! transaction, and the dedupe that decides what a batch still has to deliver.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::parked::Hold;
use super::Outcome;
use crate::store::{self, Store};
use crate::{Incoming, Sink};

/// Drops events already applied: by event_id, or by a version not above the last one
/// applied for the key (including earlier events of the same batch).
pub(super) fn filter_fresh(
    store: &Store,
    incoming: Vec<Incoming>,
) -> rusqlite::Result<Vec<Incoming>> {
    let mut newest: HashMap<(String, String), i64> = HashMap::new();
    let mut fresh = Vec::with_capacity(incoming.len());
    for e in incoming {
        let key = (
            e.event.store_id.to_string(),
            e.event.product_sku.to_string(),
        );
        if newest.get(&key).is_some_and(|v| e.event.version <= *v) {
            continue;
        }
        if store.already_applied(e.event.event_id, &key.0, &key.1, e.event.version)? {
            continue;
        }
        newest.insert(key, e.event.version);
        fresh.push(e);
    }
    Ok(fresh)
}

/// What one batch commits in the consumer's store.
pub(super) struct Batch {
    /// Each event not applied before, with what delivery made of it.
    pub(super) settled: Vec<(Incoming, Outcome)>,
    /// Channel configuration events, for a view-keeping consumer.
    pub(super) configs: Vec<store::ConfigEvent>,
    /// Events that are not valid v1 envelopes: (offset, stored text, why).
    pub(super) invalid: Vec<(i64, String, String)>,
    /// The checkpoint after this batch: the last offset read.
    pub(super) last: i64,
    /// When the last applied event occurred, if any was.
    pub(super) as_of: Option<DateTime<Utc>>,
    /// Dedup marks below this offset are dropped.
    pub(super) keep_marks_from: i64,
    /// The SKUs whose events this batch parks.
    pub(super) holds: Vec<Hold>,
}

/// One transaction: the sink's effect and the dedup mark of every delivered event, the
/// dead letters, and the checkpoint. Returns how many events were dead-lettered.
pub(super) fn commit(
    store: &mut Store,
    sink: &dyn Sink,
    batch: &mut Batch,
) -> rusqlite::Result<i64> {
    let tx = store.transaction()?;
    let now = Utc::now();
    let mut dead = 0;
    for config in &batch.configs {
        store::config_apply(&tx, config)?;
    }
    let mut parked: HashMap<&str, usize> = HashMap::new();
    for (event, outcome) in &batch.settled {
        match outcome {
            Outcome::Parked {
                attempts,
                permanent,
                error,
                retry_at,
            } => {
                let sku = event.event.product_sku.as_str();
                let new = store::park(
                    &tx,
                    event.offset,
                    sku,
                    &event.envelope,
                    event.event.occurred_at,
                    &store::Attempts {
                        attempts: *attempts,
                        permanent: *permanent,
                        error,
                        retry_at: *retry_at,
                    },
                )?;
                *parked.entry(sku).or_default() += usize::from(new);
                // Marked like an applied event: a redelivered copy is skipped, and a
                // later version of the key is still fresh (and parked behind it).
                store::mark_applied(
                    &tx,
                    event.event.event_id,
                    event.offset,
                    event.event.store_id.as_str(),
                    sku,
                    event.event.version,
                )?;
            }
            Outcome::Delivered => {
                if sink.keeps_view() {
                    store::view_apply(&tx, &event.event)?;
                }
                store::mark_applied(
                    &tx,
                    event.event.event_id,
                    event.offset,
                    event.event.store_id.as_str(),
                    event.event.product_sku.as_str(),
                    event.event.version,
                )?;
            }
            Outcome::Dead { attempts, error } => {
                store::insert_dead_letter(
                    &tx,
                    event.offset,
                    &event.envelope,
                    *attempts,
                    error,
                    now,
                )?;
                dead += 1;
            }
        }
    }
    for (offset, envelope, error) in &batch.invalid {
        store::insert_dead_letter(&tx, *offset, envelope, 1, error, now)?;
        dead += 1;
    }
    store::set_position(&tx, batch.last, batch.as_of)?;
    store::prune_marks(&tx, batch.keep_marks_from)?;
    tx.commit()?;
    let parked: HashMap<String, usize> = parked
        .into_iter()
        .map(|(sku, n)| (sku.to_owned(), n))
        .collect();
    for hold in batch.holds.drain(..) {
        let rows = parked.get(hold.sku()).copied().unwrap_or(0);
        hold.committed(rows);
    }
    Ok(dead)
}

impl Batch {
    /// The batch of `fresh` events with what delivery made of them (`outcomes`, in
    /// the same order), the configuration and invalid events read with them, the
    /// checkpoint `last`, and where dedupe marks may be dropped.
    pub(super) fn new(
        fresh: Vec<Incoming>,
        outcomes: Vec<Outcome>,
        configs: Vec<store::ConfigEvent>,
        invalid: Vec<(i64, String, String)>,
        last: i64,
        keep_marks_from: i64,
        holds: Vec<Hold>,
    ) -> Self {
        let as_of = fresh
            .iter()
            .zip(&outcomes)
            .rev()
            .find(|(_, o)| matches!(o, Outcome::Delivered))
            .map(|(e, _)| e.event.occurred_at);
        Self {
            settled: fresh.into_iter().zip(outcomes).collect(),
            configs,
            invalid,
            last,
            as_of,
            keep_marks_from,
            holds,
        }
    }
}
