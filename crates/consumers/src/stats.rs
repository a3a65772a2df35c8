//! Recent sync latencies, for the p50/p99 that `/v1/consumers` reports.

use std::collections::VecDeque;

/// The last `CAPACITY` latencies in milliseconds.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    recent: VecDeque<f64>,
}

const CAPACITY: usize = 4096;

impl Latencies {
    pub(crate) fn record(&mut self, ms: f64) {
        if self.recent.len() == CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(ms);
    }

    /// The `q` quantile (0..=1) by nearest rank; `None` before anything was recorded.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.recent.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank_over_the_recent_window() {
        let mut l = Latencies::default();
        assert_eq!(l.quantile(0.5), None);
        for ms in 1..=100 {
            l.record(ms as f64);
        }
        assert_eq!(l.quantile(0.5), Some(50.0));
        assert_eq!(l.quantile(0.99), Some(99.0));
        for _ in 0..CAPACITY {
            l.record(7.0);
        }
        assert_eq!(l.quantile(0.99), Some(7.0), "old values leave the window");
    }
}
