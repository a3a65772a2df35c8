//! How failed deliveries are retried.

use std::time::Duration;

use rand::Rng;

/// The longest a receiver's `Retry-After` is honoured: a larger value (or a date far
/// ahead) waits this long, so a mistaken header cannot stall a consumer for hours.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date, as a
/// delay from `now`. `None` when it is neither.
pub(crate) fn parse_retry_after(
    value: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// What the policy makes of one delivery attempt.
#[derive(Debug)]
pub(crate) enum Verdict {
    Delivered,
    /// Give up: into the dead letters.
    Dead(String),
    /// Try again after `pause`.
    Retry {
        error: String,
        pause: Duration,
    },
}

/// Capped exponential backoff with jitter; permanent failures get a few attempts,
/// transient ones as many as configured (unlimited by default, as `operations.md` says).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts before a permanently failing event goes to the dead letters.
    pub permanent_attempts: u32,
    /// Attempts before a transiently failing event goes to the dead letters; `None`
    /// retries until it succeeds (the backlog shows in lag metrics).
    pub transient_attempts: Option<u32>,
    /// Age (since the event occurred) after which a transiently failing event goes to
    /// the dead letters instead of being retried again; `None`: never.
    pub dead_after: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
            permanent_attempts: 3,
            transient_attempts: None,
            dead_after: None,
        }
    }
}

impl RetryPolicy {
    /// Judges attempt number `attempts` (1-based) at delivering an event that occurred
    /// at `occurred_at`; `permanent` counts the permanent failures so far and is
    /// updated. A permanent failure is retried `permanent_attempts` times in all; a
    /// transient one until `transient_attempts` or `dead_after` says stop, never
    /// sooner than a `Retry-After` asked (capped at [`MAX_RETRY_AFTER`]).
    pub(crate) fn judge(
        &self,
        result: Result<(), crate::Failure>,
        attempts: u32,
        permanent: &mut u32,
        occurred_at: chrono::DateTime<chrono::Utc>,
    ) -> Verdict {
        use crate::Failure;
        let pause = self.backoff(attempts);
        match result {
            Ok(()) => Verdict::Delivered,
            Err(Failure::Permanent(error)) => {
                *permanent += 1;
                if *permanent >= self.permanent_attempts {
                    Verdict::Dead(error)
                } else {
                    Verdict::Retry { error, pause }
                }
            }
            Err(Failure::Transient(error)) | Err(Failure::Later { error, .. })
                if self.gives_up(attempts, occurred_at) =>
            {
                Verdict::Dead(error)
            }
            Err(Failure::Transient(error)) => Verdict::Retry { error, pause },
            Err(Failure::Later { error, after }) => Verdict::Retry {
                error,
                pause: pause.max(after.min(MAX_RETRY_AFTER)),
            },
        }
    }

    /// Whether a transiently failing event is dead-lettered after `attempts` attempts:
    /// the attempt bound reached, or the event older than `dead_after`.
    fn gives_up(&self, attempts: u32, occurred_at: chrono::DateTime<chrono::Utc>) -> bool {
        self.transient_attempts.is_some_and(|max| attempts >= max)
            || self.dead_after.is_some_and(|age| {
                (chrono::Utc::now() - occurred_at)
                    .to_std()
                    .is_ok_and(|old| old >= age)
            })
    }

    /// The pause after failed attempt `attempt` (1-based): base·2^(attempt-1), capped,
    /// then scaled by a random factor in [0.5, 1) so that many retrying deliveries do
    /// not hit a recovering receiver in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        exp.min(self.cap)
            .mul_f64(rand::rng().random_range(0.5..1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("1994-11-06T08:49:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(37))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let first = p.backoff(1);
            assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
            let third = p.backoff(3);
            assert!(third >= Duration::from_millis(200) && third < Duration::from_millis(400));
            assert!(p.backoff(30) < Duration::from_secs(1));
        }
    }
}
