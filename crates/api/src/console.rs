//! What the operator console shows beyond single requests: reservation outcomes since
//! start, and the last hour of throughput and lag, sampled in memory (bounded).
//!
//! The server's housekeeping calls [`Console::observe`] every few seconds with what it
//! measured (ledger and bus state, backlog, shortages, the log's head); the console
//! turns the differences into rates and keeps one point per observation for an hour.
//! `GET /v1/overview` serves it with each consumer's live status.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long the charts reach back.
pub const HISTORY: Duration = Duration::from_secs(3600);
/// At most this many points are kept (one per observation; observations come every
/// few seconds).
const MAX_POINTS: usize = 1440;

/// Reservation outcomes since this process started, by the `result` label of
/// `invsync_reservations_total`.
#[derive(Debug, Default)]
pub(crate) struct Tallies {
    reserved: AtomicU64,
    insufficient: AtomicU64,
    conflict: AtomicU64,
    error: AtomicU64,
}

impl Tallies {
    pub(crate) fn count(&self, result: &str) {
        let counter = match result {
            "reserved" => &self.reserved,
            "insufficient" => &self.insufficient,
            "conflict" => &self.conflict,
            // A repeat answered from the first reservation: no new outcome.
            "replayed" => return,
            _ => &self.error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> Outcomes {
        Outcomes {
            reserved: self.reserved.load(Ordering::Relaxed),
            insufficient: self.insufficient.load(Ordering::Relaxed),
            conflict: self.conflict.load(Ordering::Relaxed),
            error: self.error.load(Ordering::Relaxed),
        }
    }
}

/// Reservation outcomes.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct Outcomes {
    pub reserved: u64,
    pub insufficient: u64,
    pub conflict: u64,
    pub error: u64,
}

/// What housekeeping measured, for [`Console::observe`].
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub ledger_up: bool,
    /// Whether the bus answers (the embedded one is up with the ledger).
    pub bus_up: bool,
    /// Events committed and not yet on the bus.
    pub backlog: Option<i64>,
    /// (store, sku) rows with a shortage.
    pub shortages: Option<i64>,
    /// The log's head offset.
    pub head: i64,
    /// Each consumer's current lag in seconds.
    pub lag_seconds: BTreeMap<String, f64>,
}

/// One point of the charts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// How long before the answer this point was taken.
    pub seconds_ago: f64,
    /// Events appended to the log per second since the point before.
    pub events_per_s: f64,
    pub reserved_per_s: f64,
    /// Reservations refused for want of stock, per second.
    pub refused_per_s: f64,
    /// Each consumer's lag in seconds at that moment.
    pub lag_seconds: BTreeMap<String, f64>,
}

struct Sample {
    at: Instant,
    head: i64,
    outcomes: Outcomes,
    point: Point,
}

#[derive(Default)]
struct State {
    last: Option<Observation>,
    samples: VecDeque<Sample>,
}

/// The console's in-memory state (one per server process).
#[derive(Default)]
pub struct Console {
    pub(crate) tallies: Tallies,
    state: Mutex<State>,
}

impl Console {
    /// Records one observation: a new chart point (rates against the previous one).
    pub fn observe(&self, observation: Observation) {
        self.observe_at(Instant::now(), observation);
    }

    fn observe_at(&self, now: Instant, observation: Observation) {
        let outcomes = self.tallies.read();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let rate = |previous: Option<&Sample>, f: &dyn Fn(&Sample) -> f64, current: f64| {
            previous.map_or(0.0, |p| {
                let seconds = now.duration_since(p.at).as_secs_f64();
                if seconds > 0.0 {
                    ((current - f(p)) / seconds).max(0.0)
                } else {
                    0.0
                }
            })
        };
        let previous = state.samples.back();
        let point = Point {
            seconds_ago: 0.0,
            events_per_s: rate(previous, &|p| p.head as f64, observation.head as f64),
            reserved_per_s: rate(
                previous,
                &|p| p.outcomes.reserved as f64,
                outcomes.reserved as f64,
            ),
            refused_per_s: rate(
                previous,
                &|p| p.outcomes.insufficient as f64,
                outcomes.insufficient as f64,
            ),
            lag_seconds: observation.lag_seconds.clone(),
        };
        state.samples.push_back(Sample {
            at: now,
            head: observation.head,
            outcomes,
            point,
        });
        while state.samples.len() > MAX_POINTS
            || state
                .samples
                .front()
                .is_some_and(|s| now.duration_since(s.at) > HISTORY)
        {
            state.samples.pop_front();
        }
        state.last = Some(observation);
    }

    /// The latest observation (`None` before the first) and the chart points, oldest
    /// first, aged as of now.
    pub(crate) fn read(&self) -> (Option<Observation>, Outcomes, Vec<Point>) {
        self.read_at(Instant::now())
    }

    fn read_at(&self, now: Instant) -> (Option<Observation>, Outcomes, Vec<Point>) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let points = state
            .samples
            .iter()
            .map(|s| Point {
                seconds_ago: now.duration_since(s.at).as_secs_f64(),
                ..s.point.clone()
            })
            .collect();
        (state.last.clone(), self.tallies.read(), points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_carry_rates_between_observations_and_stay_bounded() {
        let console = Console::default();
        let t0 = Instant::now();
        console.observe_at(
            t0,
            Observation {
                head: 100,
                ..Observation::default()
            },
        );
        for _ in 0..3 {
            console.tallies.count("reserved");
        }
        console.tallies.count("insufficient");
        let t1 = t0 + Duration::from_secs(2);
        console.observe_at(
            t1,
            Observation {
                head: 200,
                ..Observation::default()
            },
        );
        let (last, outcomes, points) = console.read_at(t1);
        assert_eq!(last.map(|o| o.head), Some(200));
        assert_eq!((outcomes.reserved, outcomes.insufficient), (3, 1));
        assert_eq!(points.len(), 2);
        assert_eq!(
            points[0].events_per_s, 0.0,
            "no rate without a point before"
        );
        // 100 events, 3 reservations and 1 refusal over 2 seconds.
        assert_eq!(points[1].events_per_s, 50.0);
        assert_eq!(points[1].reserved_per_s, 1.5);
        assert_eq!(points[1].refused_per_s, 0.5);
        assert_eq!((points[0].seconds_ago, points[1].seconds_ago), (2.0, 0.0));
        for i in 0..MAX_POINTS + 10 {
            console.observe_at(t1 + Duration::from_millis(i as u64), Observation::default());
        }
        assert_eq!(console.read().2.len(), MAX_POINTS);
        // Points older than the hour go.
        console.observe_at(
            t1 + HISTORY + Duration::from_secs(5),
            Observation::default(),
        );
        assert_eq!(
            console
                .read_at(t1 + HISTORY + Duration::from_secs(5))
                .2
                .len(),
            1
        );
    }
}
