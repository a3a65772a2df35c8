//! Sync latencies over time, for the p50/p99 over the last 5 and 60 minutes that
//! `/v1/consumers` reports and the console charts.
//!
//! A window of time, not of deliveries: a p99 that was high while a receiver was down
//! falls back within 5 minutes of its recovery, however few events follow. Each
//! 10-second slot of the last hour keeps a histogram of geometric buckets (each 20 %
//! wider than the one before, from 0.1 ms to about 2 hours), so a quantile is read to
//! within ±10 %, and memory is bounded: at most 360 slots of 100 counters.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long one slot covers.
pub(crate) const SLOT: Duration = Duration::from_secs(10);
/// How far back latencies are kept.
pub(crate) const HISTORY: Duration = Duration::from_secs(3600);
const SLOTS: u64 = HISTORY.as_secs() / SLOT.as_secs();
const BUCKETS: usize = 100;
const SMALLEST_MS: f64 = 0.1;
const GROWTH: f64 = 1.2;

fn bucket(ms: f64) -> usize {
    if !ms.is_finite() || ms <= SMALLEST_MS {
        return 0;
    }
    ((ms / SMALLEST_MS).ln() / GROWTH.ln())
        .floor()
        .clamp(0.0, (BUCKETS - 1) as f64) as usize
}

/// The value a bucket stands for: the geometric middle of its range.
fn value(bucket: usize) -> f64 {
    SMALLEST_MS * GROWTH.powf(bucket as f64 + 0.5)
}

/// Latencies in milliseconds by 10-second slot over the last hour.
#[derive(Debug)]
pub(crate) struct Latencies {
    origin: Instant,
    /// (slot number since `origin`, counts per bucket), oldest first; slots with no
    /// latency are absent.
    slots: VecDeque<(u64, Box<[u32; BUCKETS]>)>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            slots: VecDeque::new(),
        }
    }
}

impl Latencies {
    fn slot(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_secs() / SLOT.as_secs()
    }

    pub(crate) fn record(&mut self, ms: f64) {
        self.record_at(Instant::now(), ms);
    }

    pub(crate) fn record_at(&mut self, at: Instant, ms: f64) {
        let slot = self.slot(at);
        while self.slots.front().is_some_and(|(s, _)| s + SLOTS <= slot) {
            self.slots.pop_front();
        }
        if self.slots.back().is_none_or(|(s, _)| *s < slot) {
            self.slots.push_back((slot, Box::new([0; BUCKETS])));
        }
        // A time from before the last slot (never, with one clock) goes in the last.
        if let Some((_, counts)) = self.slots.back_mut() {
            counts[bucket(ms)] += 1;
        }
    }

    /// The `q` quantile (0..=1) of what was recorded within `window` before `now`;
    /// `None` when nothing was.
    pub(crate) fn quantile(&self, now: Instant, window: Duration, q: f64) -> Option<f64> {
        let newest = self.slot(now);
        // The slots the window reaches into (at least the current one).
        let slots = window.as_secs().div_ceil(SLOT.as_secs()).max(1);
        let oldest = newest.saturating_sub(slots - 1);
        let mut merged = [0u64; BUCKETS];
        for (_, counts) in self
            .slots
            .iter()
            .filter(|(s, _)| (oldest..=newest).contains(s))
        {
            for (m, c) in merged.iter_mut().zip(counts.iter()) {
                *m += u64::from(*c);
            }
        }
        quantile_of(&merged, q)
    }

    /// Per slot of the last hour, oldest first: how long ago it began and its `q`
    /// quantile (`None` for a slot with nothing recorded).
    pub(crate) fn series(&self, now: Instant, q: f64) -> Vec<(Duration, Option<f64>)> {
        let newest = self.slot(now);
        // Each kept slot's place in the hour, in one pass (slots are few and ordered).
        let mut by_age: Vec<Option<&[u32; BUCKETS]>> = vec![None; SLOTS as usize];
        for (slot, counts) in &self.slots {
            if let Some(ago) = newest.checked_sub(*slot).filter(|a| *a < SLOTS) {
                by_age[ago as usize] = Some(counts);
            }
        }
        (0..SLOTS)
            .rev()
            .map(|ago| {
                let q = by_age[ago as usize].and_then(|c| {
                    let wide: Vec<u64> = c.iter().map(|n| u64::from(*n)).collect();
                    quantile_of(&wide, q)
                });
                (SLOT * ago as u32, q)
            })
            .collect()
    }
}

/// Nearest rank over bucket counts.
fn quantile_of(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(value(i));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: Option<f64>, expected: f64) -> bool {
        actual.is_some_and(|a| (a - expected).abs() <= expected * 0.11)
    }

    #[test]
    fn quantiles_are_within_ten_percent() {
        let mut l = Latencies::default();
        let now = l.origin;
        assert_eq!(l.quantile(now, HISTORY, 0.5), None);
        for ms in 1..=100 {
            l.record_at(now, ms as f64);
        }
        assert!(
            close(l.quantile(now, SLOT, 0.5), 50.0),
            "{:?}",
            l.quantile(now, SLOT, 0.5)
        );
        assert!(
            close(l.quantile(now, SLOT, 0.99), 99.0),
            "{:?}",
            l.quantile(now, SLOT, 0.99)
        );
        assert!(
            close(l.quantile(now, Duration::ZERO, 0.5), 50.0),
            "a zero window is the current slot"
        );
        l.record_at(now, 0.0);
        l.record_at(now, 1e12);
        assert!(close(l.quantile(now, SLOT, 1.0), value(BUCKETS - 1)));
    }

    #[test]
    fn a_slow_spell_leaves_the_5_minute_window_but_not_the_hour() {
        let mut l = Latencies::default();
        let start = l.origin;
        for _ in 0..100 {
            l.record_at(start, 30_000.0); // the receiver was down: 30 s
        }
        let later = start + Duration::from_secs(6 * 60);
        for _ in 0..3 {
            l.record_at(later, 20.0); // recovered: a few fast deliveries
        }
        let five = Duration::from_secs(300);
        assert!(
            close(l.quantile(later, five, 0.99), 20.0),
            "{:?}",
            l.quantile(later, five, 0.99)
        );
        assert!(close(l.quantile(later, HISTORY, 0.99), 30_000.0));
        // After an hour, the slow spell is gone from everything.
        let much_later = start + HISTORY + SLOT;
        l.record_at(much_later, 5.0);
        assert!(close(l.quantile(much_later, HISTORY, 0.99), 20.0));
        assert!(close(l.quantile(much_later, HISTORY, 0.01), 5.0));
        assert!(l.slots.len() <= SLOTS as usize);
    }

    #[test]
    fn the_series_has_one_point_per_slot_of_the_hour() {
        let mut l = Latencies::default();
        let start = l.origin;
        l.record_at(start, 10.0);
        let now = start + Duration::from_secs(25);
        l.record_at(now, 100.0);
        let series = l.series(now, 0.99);
        assert_eq!(series.len(), SLOTS as usize);
        let (age, last) = series[series.len() - 1];
        assert_eq!(age, Duration::ZERO);
        assert!(close(last, 100.0));
        let (age, first_recorded) = series[series.len() - 3];
        assert_eq!(age, SLOT * 2);
        assert!(close(first_recorded, 10.0));
        assert_eq!(series[series.len() - 2].1, None);
    }
}
