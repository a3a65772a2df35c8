//! A reservation's lines as both back ends store them: inline in the reservation's
//! row, as a JSON array with one element per allocation (`rows_json`), in line and
//! allocation order. A store-direct reservation's elements leave the store null (its
//! location is the reservation's), as rows written before channels existed.

use invsync_core::{
    Allocated, ChannelId, Reservation, ReservationLine, Sku, StoreId, StoredReservation, Target,
};

use crate::error::LedgerError;

/// One stored allocation row: owned when read, borrowed from the reservation when
/// written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartRow<S = String> {
    pub(crate) sku: S,
    /// `None`: the reservation's own store (store-direct).
    pub(crate) store_id: Option<S>,
    pub(crate) quantity: i64,
    pub(crate) released: i64,
    pub(crate) fulfilled: i64,
    pub(crate) short: i64,
}

/// The rows of a reservation, in line and allocation order.
pub(crate) fn rows(r: &Reservation) -> impl Iterator<Item = PartRow<&str>> {
    let direct = r.channel().is_none();
    r.lines().iter().flat_map(move |line| {
        line.allocations().iter().map(move |a| PartRow {
            sku: line.sku().as_str(),
            store_id: (!direct).then(|| a.store_id().as_str()),
            quantity: a.quantity(),
            released: a.released(),
            fulfilled: a.fulfilled(),
            short: a.short(),
        })
    })
}

/// One allocation row as the embedded ledger stores it inline, in a JSON array:
/// `[sku, store or null, quantity, released, fulfilled, short]`.
type InlineRow<S> = (S, Option<S>, i64, i64, i64, i64);

/// The rows of a reservation as the JSON text the embedded ledger keeps inline.
pub(crate) fn rows_json(r: &Reservation) -> Result<String, LedgerError> {
    let inline: Vec<InlineRow<&str>> = rows(r)
        .map(|p| {
            (
                p.sku,
                p.store_id,
                p.quantity,
                p.released,
                p.fulfilled,
                p.short,
            )
        })
        .collect();
    serde_json::to_string(&inline)
        .map_err(|e| LedgerError::Internal(format!("encoding reservation lines: {e}")))
}

/// The rows kept inline, read back.
pub(crate) fn rows_from_json(text: &str) -> Result<Vec<PartRow>, LedgerError> {
    let inline: Vec<InlineRow<String>> =
        serde_json::from_str(text).map_err(|e| corrupt("reservation lines", e))?;
    Ok(inline
        .into_iter()
        .map(
            |(sku, store_id, quantity, released, fulfilled, short)| PartRow {
                sku,
                store_id,
                quantity,
                released,
                fulfilled,
                short,
            },
        )
        .collect())
}

/// Who a stored reservation is held for: its store, or its channel when it has one
/// (a channel reservation stores '' as its store).
pub(crate) fn place(store_id: String, channel: Option<String>) -> Result<Target, LedgerError> {
    Ok(match channel {
        Some(c) => Target::Channel(ChannelId::parse(c).map_err(|e| corrupt("channel", e))?),
        None => Target::Store(StoreId::parse(store_id).map_err(|e| corrupt("store_id", e))?),
    })
}

/// A stored reservation, read back through the reservation's own checks: a row
/// that breaks the line invariant is a corrupt row (an error), never a reservation
/// that answers wrongly.
pub(crate) fn reservation(
    mut stored: StoredReservation,
    rows: Vec<PartRow>,
) -> Result<Reservation, LedgerError> {
    stored.lines = lines(stored.target.store(), rows)?;
    Reservation::restore(stored).map_err(|e| corrupt("reservation", e))
}

/// A channel's configuration as stored (JSON text).
pub(crate) fn config_json(
    config: &invsync_core::channel::ChannelConfig,
) -> Result<String, LedgerError> {
    serde_json::to_string(config)
        .map_err(|e| LedgerError::Internal(format!("encoding a channel: {e}")))
}

/// A stored channel, read back through the configuration's checks.
pub(crate) fn channel(
    id: &str,
    version: i64,
    config: &str,
) -> Result<invsync_core::channel::Channel, LedgerError> {
    Ok(invsync_core::channel::Channel {
        channel_id: ChannelId::parse(id).map_err(|e| corrupt("channel_id", e))?,
        version,
        config: serde_json::from_str(config).map_err(|e| corrupt("channel configuration", e))?,
    })
}

/// A stored override row, removed ones included.
pub(crate) fn override_row(
    channel: &str,
    store: &str,
    sku: &str,
    safety_stock: Option<i64>,
    version: i64,
) -> Result<crate::model::OverrideRow, LedgerError> {
    Ok(crate::model::OverrideRow {
        channel_id: ChannelId::parse(channel).map_err(|e| corrupt("channel_id", e))?,
        store_id: StoreId::parse(store).map_err(|e| corrupt("store_id", e))?,
        sku: Sku::parse(sku).map_err(|e| corrupt("sku", e))?,
        safety_stock,
        version,
    })
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> LedgerError {
    LedgerError::Internal(format!("stored {what} is invalid: {err}"))
}

/// The lines made of stored rows (in the order written): consecutive rows of one SKU
/// are one line's allocations. `store`: the reservation's store, for rows without one.
fn lines(store: Option<&StoreId>, rows: Vec<PartRow>) -> Result<Vec<ReservationLine>, LedgerError> {
    let mut lines: Vec<(Sku, Vec<Allocated>)> = Vec::new();
    for row in rows {
        let at = match (&row.store_id, store) {
            (Some(s), _) => StoreId::parse(s.as_str()).map_err(|e| corrupt("store_id", e))?,
            (None, Some(s)) => s.clone(),
            (None, None) => return Err(corrupt("reservation line", "no store")),
        };
        let part = Allocated::restore(at, row.quantity, row.released, row.fulfilled, row.short)
            .map_err(|e| corrupt("reservation line", e))?;
        match lines.last_mut() {
            Some((sku, parts)) if sku.as_str() == row.sku => parts.push(part),
            _ => {
                let sku = Sku::parse(row.sku).map_err(|e| corrupt("sku", e))?;
                lines.push((sku, vec![part]));
            }
        }
    }
    lines
        .into_iter()
        .map(|(sku, parts)| {
            ReservationLine::allocated(sku, parts).map_err(|e| corrupt("reservation line", e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use invsync_core::{LineQuantity, OrderId, ReservationStatus};
    use uuid::Uuid;

    use super::*;

    fn id(s: &str) -> StoreId {
        StoreId::parse(s).unwrap()
    }

    /// The rows as written, read back as owned rows.
    fn owned(r: &Reservation) -> Vec<PartRow> {
        rows(r)
            .map(|p| PartRow {
                sku: p.sku.to_owned(),
                store_id: p.store_id.map(str::to_owned),
                quantity: p.quantity,
                released: p.released,
                fulfilled: p.fulfilled,
                short: p.short,
            })
            .collect()
    }

    fn stored(target: Target, lines: Vec<ReservationLine>) -> StoredReservation {
        StoredReservation {
            reservation_id: Uuid::nil(),
            order_id: OrderId::parse("O-1").unwrap(),
            target,
            status: ReservationStatus::Active,
            lines,
            expires_at: None,
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    fn q(n: i64) -> LineQuantity {
        LineQuantity::new(n).unwrap()
    }

    fn sku(s: &str) -> Sku {
        Sku::parse(s).unwrap()
    }

    /// Reads `r`'s rows back into a reservation of the same head.
    fn round_trip(r: &Reservation, rows: Vec<PartRow>) -> Result<Reservation, LedgerError> {
        reservation(stored(r.target().clone(), Vec::new()), rows)
    }

    #[test]
    fn lines_round_trip_through_rows_for_both_kinds_of_reservation() {
        let direct = Reservation::restore(stored(
            Target::Store(id("S1")),
            vec![
                ReservationLine::new(id("S1"), sku("A"), q(2)),
                ReservationLine::new(id("S1"), sku("B"), q(1)),
            ],
        ))
        .unwrap();
        let rows = owned(&direct);
        assert!(rows.iter().all(|r| r.store_id.is_none()));
        assert_eq!(round_trip(&direct, rows).unwrap(), direct);

        let channel = Reservation::restore(stored(
            Target::Channel(ChannelId::parse("online").unwrap()),
            vec![
                ReservationLine::allocated(
                    sku("A"),
                    vec![
                        Allocated::new(id("WH1"), q(3)),
                        Allocated::new(id("S1"), q(2)),
                    ],
                )
                .unwrap(),
                ReservationLine::allocated(sku("B"), vec![Allocated::new(id("S1"), q(1))]).unwrap(),
            ],
        ))
        .unwrap();
        let rows = owned(&channel);
        assert_eq!(rows.len(), 3);
        assert_eq!(round_trip(&channel, rows).unwrap(), channel);
    }

    #[test]
    fn a_stored_row_that_breaks_the_line_invariant_is_a_corrupt_row() {
        let direct = Reservation::restore(stored(
            Target::Store(id("S1")),
            vec![ReservationLine::new(id("S1"), sku("A"), q(2))],
        ))
        .unwrap();
        let broken = |edit: fn(&mut PartRow)| {
            let mut rows = owned(&direct);
            edit(&mut rows[0]);
            round_trip(&direct, rows).unwrap_err().to_string()
        };
        assert!(broken(|r| r.released = 3).contains("exceeds quantity"));
        assert!(broken(|r| r.short = 3).contains("short"));
        assert!(broken(|r| r.store_id = Some("S2".into())).contains("S2"));
        // Fully released but still active.
        assert!(broken(|r| r.released = 2).contains("status active"));
        assert!(round_trip(&direct, Vec::new()).is_err(), "no line");
    }
}
