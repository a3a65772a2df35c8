//! Channels (docs/design/channels.md): the locations a channel sells from, how it
//! allocates an order to them, and the safety stock it leaves on each shelf. The
//! configuration is validated here, and allocation is a pure function of a
//! configuration and the stock it is shown, so the ledger (both back ends) and its
//! tests share one definition of it.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::command::RequestError;
use crate::error::ShortLine;
use crate::ids::{ChannelId, Sku, StoreId};
use crate::quantity::LineQuantity;
use crate::stock::StockLevel;

/// Most locations one channel may sell from.
pub const MAX_LOCATIONS: usize = 100;
/// Longest display name of a channel, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// In which order a channel's locations are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// Lowest `priority` number first; ties by `store_id`.
    Priority,
    /// The location with the most channel-available units first (of the line's SKU;
    /// with `split: none`, of all the order's lines together); ties by `store_id`.
    MostAvailable,
}

impl Allocation {
    /// Every strategy, for documents that list them.
    pub const ALL: [Self; 2] = [Self::Priority, Self::MostAvailable];
}

/// How an order may be divided between locations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The whole order from one location: the first, in allocation order, that can
    /// fill every line.
    None,
    /// Each line from one location; lines may differ.
    ByLine,
    /// A line may be split across locations.
    ByUnit,
}

impl Split {
    /// Every rule, for documents that list them.
    pub const ALL: [Self; 3] = [Self::None, Self::ByLine, Self::ByUnit];
}

/// One location of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelLocation {
    pub store_id: StoreId,
    #[serde(default)]
    pub priority: i32,
    /// Units at this location the channel may not reserve (a per-SKU override may
    /// replace it).
    #[serde(default)]
    pub safety_stock: i64,
}

/// A channel's configuration, valid by construction ([`ChannelConfig::new`]); read
/// back (from an event, from storage) through the same checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct ChannelConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    allocation: Allocation,
    split: Split,
    locations: Vec<ChannelLocation>,
}

/// A configuration as read, before its checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    name: Option<String>,
    allocation: Allocation,
    split: Split,
    locations: Vec<ChannelLocation>,
}

impl TryFrom<RawConfig> for ChannelConfig {
    type Error = RequestError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        Self::new(raw.name, raw.allocation, raw.split, raw.locations)
    }
}

/// A stored channel: its configuration and the version every change of it bumps
/// (compare-and-set with `if_version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub channel_id: ChannelId,
    pub version: i64,
    #[serde(flatten)]
    pub config: ChannelConfig,
}

/// Most safety-stock overrides one request may set.
pub const MAX_SAFETY_ITEMS: usize = 1_000;
/// Largest safety stock, as for `on_hand`.
pub const MAX_SAFETY_STOCK: i64 = 1_000_000_000;

/// A per-SKU safety stock of one channel at one location; `safety_stock: None`
/// removes the override (the location's default applies again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyOverride {
    pub store_id: StoreId,
    pub sku: Sku,
    pub safety_stock: Option<i64>,
}

/// The items of one safety-stock request, validated: 1 to 1,000 of them, each buffer
/// 0..=1e9 or `None`, no (store, sku) twice. Only [`SafetyOverrides::new`] makes one,
/// so the ledger never sees two values for one override in one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyOverrides(Vec<SafetyOverride>);

impl SafetyOverrides {
    /// Checks the items; an error names `items` or `items[i]…`.
    pub fn new(items: Vec<SafetyOverride>) -> Result<Self, RequestError> {
        if items.is_empty() || items.len() > MAX_SAFETY_ITEMS {
            return Err(RequestError::new(
                "items",
                format!("must have 1 to {MAX_SAFETY_ITEMS} items"),
            ));
        }
        let mut seen = HashSet::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(n) = item.safety_stock {
                if !(0..=MAX_SAFETY_STOCK).contains(&n) {
                    return Err(RequestError::new(
                        format!("items[{i}].safety_stock"),
                        format!("must be 0 to {MAX_SAFETY_STOCK}, or null to remove the override"),
                    ));
                }
            }
            if !seen.insert((&item.store_id, &item.sku)) {
                return Err(RequestError::new(
                    format!("items[{i}]"),
                    format!(
                        "store {} and sku {} appear more than once",
                        item.store_id, item.sku
                    ),
                ));
            }
        }
        Ok(Self(items))
    }
}

impl std::ops::Deref for SafetyOverrides {
    type Target = [SafetyOverride];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl ChannelConfig {
    /// Checks a configuration; an error names the field (`locations[2].store_id`).
    /// Unknown store ids are allowed: a location may get stock later.
    pub fn new(
        name: Option<String>,
        allocation: Allocation,
        split: Split,
        locations: Vec<ChannelLocation>,
    ) -> Result<Self, RequestError> {
        if let Some(name) = &name {
            if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control)
            {
                return Err(RequestError::new(
                    "name",
                    format!("must be 1 to {MAX_NAME_BYTES} bytes without control characters"),
                ));
            }
        }
        if locations.is_empty() {
            return Err(RequestError::new(
                "locations",
                "must list at least one location",
            ));
        }
        if locations.len() > MAX_LOCATIONS {
            return Err(RequestError::new(
                "locations",
                format!("must list at most {MAX_LOCATIONS} locations"),
            ));
        }
        let mut seen = HashSet::with_capacity(locations.len());
        for (i, location) in locations.iter().enumerate() {
            if !seen.insert(&location.store_id) {
                return Err(RequestError::new(
                    format!("locations[{i}].store_id"),
                    format!("store {} is listed more than once", location.store_id),
                ));
            }
            if !(0..=MAX_SAFETY_STOCK).contains(&location.safety_stock) {
                return Err(RequestError::new(
                    format!("locations[{i}].safety_stock"),
                    format!("must be 0 to {MAX_SAFETY_STOCK}"),
                ));
            }
        }
        Ok(Self {
            name,
            allocation,
            split,
            locations,
        })
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn allocation(&self) -> Allocation {
        self.allocation
    }

    pub fn split(&self) -> Split {
        self.split
    }

    pub fn locations(&self) -> &[ChannelLocation] {
        &self.locations
    }
}

/// What allocation is shown of one (location, sku): its level (`None` when the
/// location has no row for the SKU) and the channel's safety stock there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shelf {
    pub level: Option<StockLevel>,
    pub safety_stock: i64,
}

impl Shelf {
    /// Units the channel may take here: `max(0, available − safety_stock)`.
    pub fn channel_available(&self) -> i64 {
        self.level
            .map_or(0, |l| channel_available(l.available(), self.safety_stock))
    }
}

/// The channel formula of channels.md, the one place it is written: of `available`
/// units at a location, a channel may take what is above its safety stock there,
/// never less than 0. (The storefront's view keeps `available` only, so it applies
/// this directly.)
pub fn channel_available(available: i64, safety_stock: i64) -> i64 {
    (available - safety_stock).max(0)
}

/// Where one line of an order is taken from: (location, quantity), in allocation
/// order.
pub type LineAllocation = Vec<(StoreId, i64)>;

/// Allocates every line of an order to the channel's locations, or none: the
/// allocation of each line in the order given, or every short line with the
/// channel's availability of its SKU. `shelf(store, sku)` shows the stock; it is
/// asked about every location of the channel for every line.
pub fn allocate(
    config: &ChannelConfig,
    lines: &[(Sku, LineQuantity)],
    shelf: impl Fn(&StoreId, &Sku) -> Shelf,
) -> Result<Vec<LineAllocation>, Vec<ShortLine>> {
    // The channel-available units of every (line, location), read once.
    let grid: Vec<Vec<i64>> = lines
        .iter()
        .map(|(sku, _)| {
            config
                .locations
                .iter()
                .map(|l| shelf(&l.store_id, sku).channel_available())
                .collect()
        })
        .collect();
    let short = || -> Vec<ShortLine> {
        lines
            .iter()
            .zip(&grid)
            .filter_map(|((sku, q), row)| {
                let total: i64 = row.iter().sum();
                let fits = match config.split {
                    Split::ByUnit => total >= q.get(),
                    _ => row.iter().any(|a| *a >= q.get()),
                };
                // With `split: none` every line is reported when no single location
                // fills them all, though a line may fit somewhere on its own.
                (!fits || config.split == Split::None).then(|| ShortLine {
                    sku: sku.clone(),
                    requested: q.get(),
                    available: total,
                })
            })
            .collect()
    };
    match config.split {
        Split::None => {
            let totals: Vec<i64> = (0..config.locations.len())
                .map(|j| grid.iter().map(|row| row[j]).sum())
                .collect();
            let order = config.order(&totals);
            let whole = order.into_iter().find(|&j| {
                lines
                    .iter()
                    .zip(&grid)
                    .all(|((_, q), row)| row[j] >= q.get())
            });
            match whole {
                Some(j) => Ok(lines
                    .iter()
                    .map(|(_, q)| vec![(config.locations[j].store_id.clone(), q.get())])
                    .collect()),
                None => Err(short()),
            }
        }
        Split::ByLine | Split::ByUnit => {
            let mut out = Vec::with_capacity(lines.len());
            for ((_, q), row) in lines.iter().zip(&grid) {
                let order = config.order(row);
                let mut taken = Vec::new();
                if config.split == Split::ByLine {
                    if let Some(j) = order.into_iter().find(|&j| row[j] >= q.get()) {
                        taken.push((config.locations[j].store_id.clone(), q.get()));
                    }
                } else {
                    let mut left = q.get();
                    for j in order {
                        if left == 0 {
                            break;
                        }
                        let take = row[j].min(left);
                        if take > 0 {
                            taken.push((config.locations[j].store_id.clone(), take));
                            left -= take;
                        }
                    }
                    if left > 0 {
                        taken.clear();
                    }
                }
                if taken.is_empty() {
                    return Err(short());
                }
                out.push(taken);
            }
            Ok(out)
        }
    }
}

/// Where up to `wanted` units of `sku`, held at `from` but no longer on hand there,
/// can go instead (reallocation, channels.md): the channel's other locations, by its
/// allocation order and split rule, never into safety stock. Moves as many units as
/// fit — all to one location unless the split rule is `by_unit` (for one line,
/// `none` and `by_line` are the same rule) — and returns (location, units) in
/// allocation order; empty when nothing fits.
pub fn reallocate(
    config: &ChannelConfig,
    sku: &Sku,
    wanted: i64,
    from: &StoreId,
    shelf: impl Fn(&StoreId, &Sku) -> Shelf,
) -> LineAllocation {
    let elsewhere = |store: &StoreId, sku: &Sku| {
        if store == from {
            Shelf {
                level: None,
                safety_stock: 0,
            }
        } else {
            shelf(store, sku)
        }
    };
    let room: Vec<i64> = config
        .locations
        .iter()
        .map(|l| elsewhere(&l.store_id, sku).channel_available())
        .collect();
    let fits = match config.split {
        Split::ByUnit => room.iter().sum(),
        _ => room.iter().copied().max().unwrap_or(0),
    };
    let Ok(quantity) = LineQuantity::new(wanted.min(fits)) else {
        return Vec::new();
    };
    allocate(config, &[(sku.clone(), quantity)], elsewhere)
        .ok()
        .and_then(|mut lines| lines.pop())
        .unwrap_or_default()
}

impl ChannelConfig {
    /// The location indexes in allocation order, given each location's
    /// channel-available units (used by `most_available`).
    fn order(&self, available: &[i64]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.locations.len()).collect();
        let l = &self.locations;
        match self.allocation {
            Allocation::Priority => order.sort_by(|&a, &b| {
                (l[a].priority, &l[a].store_id).cmp(&(l[b].priority, &l[b].store_id))
            }),
            Allocation::MostAvailable => order.sort_by(|&a, &b| {
                available[b]
                    .cmp(&available[a])
                    .then_with(|| l[a].store_id.cmp(&l[b].store_id))
            }),
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn store(s: &str) -> StoreId {
        StoreId::parse(s).unwrap()
    }
    fn sku(s: &str) -> Sku {
        Sku::parse(s).unwrap()
    }
    fn q(n: i64) -> LineQuantity {
        LineQuantity::new(n).unwrap()
    }
    fn loc(s: &str, priority: i32, safety_stock: i64) -> ChannelLocation {
        ChannelLocation {
            store_id: store(s),
            priority,
            safety_stock,
        }
    }
    fn channel(
        allocation: Allocation,
        split: Split,
        locations: Vec<ChannelLocation>,
    ) -> ChannelConfig {
        ChannelConfig::new(None, allocation, split, locations).unwrap()
    }

    /// Stock as (store, sku) → (on_hand, reserved); a missing key has no row.
    fn stock(rows: &[(&str, &str, i64, i64)]) -> HashMap<(StoreId, Sku), StockLevel> {
        rows.iter()
            .map(|(st, sk, on_hand, reserved)| {
                (
                    (store(st), sku(sk)),
                    StockLevel::new(*on_hand, *reserved, 1).unwrap(),
                )
            })
            .collect()
    }

    /// An allocation as (store, quantity) per line, or the short lines as (sku,
    /// requested, available).
    type Outcome = Result<Vec<Vec<(String, i64)>>, Vec<(String, i64, i64)>>;

    fn run(
        config: &ChannelConfig,
        rows: &HashMap<(StoreId, Sku), StockLevel>,
        order: &[(&str, i64)],
    ) -> Outcome {
        let lines: Vec<(Sku, LineQuantity)> = order.iter().map(|(s, n)| (sku(s), q(*n))).collect();
        let safety: HashMap<StoreId, i64> = config
            .locations()
            .iter()
            .map(|l| (l.store_id.clone(), l.safety_stock))
            .collect();
        allocate(config, &lines, |st, sk| Shelf {
            level: rows.get(&(st.clone(), sk.clone())).copied(),
            safety_stock: safety[st],
        })
        .map(|lines| {
            lines
                .into_iter()
                .map(|l| l.into_iter().map(|(s, n)| (s.to_string(), n)).collect())
                .collect()
        })
        .map_err(|short| {
            short
                .into_iter()
                .map(|s| (s.sku.to_string(), s.requested, s.available))
                .collect()
        })
    }

    fn at(s: &str, n: i64) -> (String, i64) {
        (s.to_owned(), n)
    }

    #[test]
    fn priority_takes_the_lowest_number_first_and_breaks_ties_by_store() {
        let rows = stock(&[("WH1", "A", 10, 0), ("S1", "A", 10, 0), ("S2", "A", 10, 0)]);
        let c = channel(
            Allocation::Priority,
            Split::ByUnit,
            vec![loc("S2", 1, 0), loc("WH1", 2, 0), loc("S1", 1, 0)],
        );
        // S1 and S2 tie on priority 1: S1 first by store id.
        assert_eq!(
            run(&c, &rows, &[("A", 15)]),
            Ok(vec![vec![at("S1", 10), at("S2", 5)]])
        );
    }

    #[test]
    fn most_available_takes_the_fullest_shelf_first_and_breaks_ties_by_store() {
        let rows = stock(&[("WH1", "A", 5, 0), ("S1", "A", 9, 2), ("S2", "A", 7, 0)]);
        let c = channel(
            Allocation::MostAvailable,
            Split::ByUnit,
            vec![loc("WH1", 1, 0), loc("S1", 2, 0), loc("S2", 3, 0)],
        );
        // S1 and S2 both have 7 available: S1 first by store id, then S2, then WH1.
        assert_eq!(
            run(&c, &rows, &[("A", 16)]),
            Ok(vec![vec![at("S1", 7), at("S2", 7), at("WH1", 2)]])
        );
    }

    #[test]
    fn safety_stock_is_never_taken_and_its_boundary_is_exact() {
        let rows = stock(&[("S1", "A", 5, 1)]); // 4 available
        let c = channel(Allocation::Priority, Split::ByUnit, vec![loc("S1", 1, 2)]);
        assert_eq!(
            run(&c, &rows, &[("A", 2)]),
            Ok(vec![vec![at("S1", 2)]]),
            "4 − 2 = 2: exactly"
        );
        assert_eq!(
            run(&c, &rows, &[("A", 3)]),
            Err(vec![("A".into(), 3, 2)]),
            "one more dips in"
        );
        // A buffer larger than what is there leaves 0, never a negative.
        let c = channel(Allocation::Priority, Split::ByUnit, vec![loc("S1", 1, 9)]);
        assert_eq!(run(&c, &rows, &[("A", 1)]), Err(vec![("A".into(), 1, 0)]));
    }

    #[test]
    fn locations_without_a_stock_row_have_nothing_to_give() {
        let rows = stock(&[("S2", "A", 3, 0)]);
        let c = channel(
            Allocation::Priority,
            Split::ByUnit,
            vec![loc("GHOST", 1, 0), loc("S2", 2, 0)],
        );
        assert_eq!(run(&c, &rows, &[("A", 3)]), Ok(vec![vec![at("S2", 3)]]));
        let c = channel(
            Allocation::MostAvailable,
            Split::None,
            vec![loc("GHOST", 1, 0)],
        );
        assert_eq!(run(&c, &rows, &[("A", 1)]), Err(vec![("A".into(), 1, 0)]));
    }

    #[test]
    fn split_none_takes_the_whole_order_from_the_first_location_that_fills_it() {
        let rows = stock(&[
            ("WH1", "A", 10, 0),
            ("WH1", "B", 0, 0),
            ("S1", "A", 2, 0),
            ("S1", "B", 2, 0),
        ]);
        let c = channel(
            Allocation::Priority,
            Split::None,
            vec![loc("WH1", 1, 0), loc("S1", 2, 0)],
        );
        // WH1 comes first but has no B; S1 fills both lines.
        assert_eq!(
            run(&c, &rows, &[("A", 2), ("B", 1)]),
            Ok(vec![vec![at("S1", 2)], vec![at("S1", 1)]])
        );
        // No single location fills both: every line is reported, with the
        // channel's availability of its SKU.
        assert_eq!(
            run(&c, &rows, &[("A", 3), ("B", 1)]),
            Err(vec![("A".into(), 3, 12), ("B".into(), 1, 2)])
        );
    }

    #[test]
    fn split_by_line_takes_each_line_from_one_location() {
        let rows = stock(&[("WH1", "A", 10, 0), ("S1", "A", 4, 0), ("S1", "B", 4, 0)]);
        let c = channel(
            Allocation::Priority,
            Split::ByLine,
            vec![loc("WH1", 1, 0), loc("S1", 2, 0)],
        );
        assert_eq!(
            run(&c, &rows, &[("A", 6), ("B", 3)]),
            Ok(vec![vec![at("WH1", 6)], vec![at("S1", 3)]])
        );
        // 11 A exist across locations, but no one location has 11: short.
        assert_eq!(
            run(&c, &rows, &[("A", 11), ("B", 3)]),
            Err(vec![("A".into(), 11, 14)])
        );
    }

    #[test]
    fn split_by_unit_spreads_a_line_and_reports_only_the_short_lines() {
        let rows = stock(&[("WH1", "A", 3, 1), ("S1", "A", 4, 0), ("S1", "B", 1, 0)]);
        let c = channel(
            Allocation::Priority,
            Split::ByUnit,
            vec![loc("WH1", 1, 0), loc("S1", 2, 1)],
        );
        assert_eq!(
            run(&c, &rows, &[("A", 5)]),
            Ok(vec![vec![at("WH1", 2), at("S1", 3)]])
        );
        assert_eq!(
            run(&c, &rows, &[("A", 6), ("B", 1)]),
            Err(vec![("A".into(), 6, 5), ("B".into(), 1, 0)])
        );
    }

    #[test]
    fn allocation_is_deterministic_whatever_the_listing_order() {
        let rows = stock(&[("A1", "X", 5, 0), ("A2", "X", 5, 0), ("A3", "X", 5, 0)]);
        let locations = vec![loc("A1", 1, 0), loc("A2", 1, 0), loc("A3", 1, 0)];
        for allocation in [Allocation::Priority, Allocation::MostAvailable] {
            let mut reversed = locations.clone();
            reversed.reverse();
            let a = channel(allocation, Split::ByUnit, locations.clone());
            let b = channel(allocation, Split::ByUnit, reversed);
            assert_eq!(run(&a, &rows, &[("X", 7)]), run(&b, &rows, &[("X", 7)]));
        }
    }

    #[test]
    fn a_bad_configuration_names_the_field() {
        let bad = |locations: Vec<ChannelLocation>, name: Option<&str>| {
            ChannelConfig::new(
                name.map(str::to_owned),
                Allocation::Priority,
                Split::None,
                locations,
            )
            .unwrap_err()
            .field
        };
        assert_eq!(bad(vec![], None), "locations");
        assert_eq!(
            bad(vec![loc("S1", 1, 0), loc("S1", 2, 0)], None),
            "locations[1].store_id"
        );
        assert_eq!(
            bad(vec![loc("S1", 1, -1)], None),
            "locations[0].safety_stock"
        );
        assert_eq!(bad(vec![loc("S1", 1, 0)], Some("")), "name");
        // Unknown strategies are refused when the JSON is read.
        assert!(serde_json::from_str::<Allocation>("\"random\"").is_err());
        assert!(serde_json::from_str::<Split>("\"by_unit\"").is_ok());
    }

    /// Where `wanted` units held at `from` go, as (store, units).
    fn moved(
        config: &ChannelConfig,
        rows: &HashMap<(StoreId, Sku), StockLevel>,
        from: &str,
        wanted: i64,
    ) -> Vec<(String, i64)> {
        let safety: HashMap<StoreId, i64> = config
            .locations()
            .iter()
            .map(|l| (l.store_id.clone(), l.safety_stock))
            .collect();
        reallocate(config, &sku("A"), wanted, &store(from), |st, sk| Shelf {
            level: rows.get(&(st.clone(), sk.clone())).copied(),
            safety_stock: safety[st],
        })
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect()
    }

    #[test]
    fn reallocation_moves_what_fits_elsewhere_by_the_channels_rules() {
        // S1 is the short location: it has units available, but they must not be used.
        let rows = stock(&[("S1", "A", 9, 0), ("S2", "A", 3, 1), ("WH1", "A", 4, 0)]);
        let locations = || vec![loc("S1", 1, 0), loc("S2", 2, 0), loc("WH1", 3, 1)];
        let by_unit = channel(Allocation::Priority, Split::ByUnit, locations());
        // S2 gives 2, WH1 gives 3 (4 less a buffer of 1): 5 of the 6 wanted.
        assert_eq!(
            moved(&by_unit, &rows, "S1", 6),
            vec![at("S2", 2), at("WH1", 3)]
        );
        assert_eq!(moved(&by_unit, &rows, "S1", 1), vec![at("S2", 1)]);
        // One location only: the fullest that fits, all of it or as much as one holds.
        for split in [Split::ByLine, Split::None] {
            let one = channel(Allocation::Priority, split, locations());
            assert_eq!(moved(&one, &rows, "S1", 2), vec![at("S2", 2)]);
            assert_eq!(moved(&one, &rows, "S1", 3), vec![at("WH1", 3)]);
            assert_eq!(moved(&one, &rows, "S1", 6), vec![at("WH1", 3)]);
        }
        let most = channel(Allocation::MostAvailable, Split::ByUnit, locations());
        assert_eq!(
            moved(&most, &rows, "S1", 4),
            vec![at("WH1", 3), at("S2", 1)]
        );
        // Nowhere else to go: nothing moves.
        let alone = channel(Allocation::Priority, Split::ByUnit, vec![loc("S1", 1, 0)]);
        assert!(moved(&alone, &rows, "S1", 2).is_empty());
        let empty = stock(&[("S1", "A", 9, 0), ("S2", "A", 1, 1)]);
        assert!(moved(&by_unit, &empty, "S1", 2).is_empty());
    }
}
