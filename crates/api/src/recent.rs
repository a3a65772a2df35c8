//! `Idempotency-Key` for the consumer controls (replay, redrive). They act on a
//! consumer, not on the ledger, so their keys cannot be recorded in a ledger
//! transaction: they are remembered here, in memory, per process, for a day and at
//! most [`CAPACITY`] of them. That covers what keys are for — a client retrying a
//! request whose answer it did not get — without letting a repeat rewind a consumer
//! twice or redrive a letter that a first attempt already delivered.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use invsync_core::IdempotencyKey;

use crate::error::{ApiError, ApiResult, ErrorCode};

/// Most keys remembered; the oldest go first.
pub(crate) const CAPACITY: usize = 10_000;
/// How long a key is remembered.
const KEEP: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
pub(crate) struct RecentWrites {
    /// scope + key → (fingerprint, status of the first answer, when). Held across the
    /// control action itself, so two concurrent repeats act once.
    seen: tokio::sync::Mutex<HashMap<String, (String, StatusCode, Instant)>>,
}

impl RecentWrites {
    /// Runs `act` once per (scope, key): a repeat of the same request gets the first
    /// successful answer's status without acting again; a different request under the
    /// key is refused with 409. Without a key, `act` simply runs.
    pub(crate) async fn once(
        &self,
        scope: &str,
        key: Option<IdempotencyKey>,
        fingerprint: String,
        act: impl Future<Output = ApiResult<StatusCode>>,
    ) -> ApiResult<StatusCode> {
        let Some(key) = key else { return act.await };
        let id = format!("{scope}\u{1}{key}");
        let mut seen = self.seen.lock().await;
        let now = Instant::now();
        seen.retain(|_, (_, _, at)| now.duration_since(*at) < KEEP);
        if let Some((stored, status, _)) = seen.get(&id) {
            if *stored != fingerprint {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyConflict,
                    format!(
                        "the Idempotency-Key '{key}' was already used with a different request"
                    ),
                ));
            }
            return Ok(*status);
        }
        let status = act.await?;
        if seen.len() >= CAPACITY {
            if let Some(oldest) = seen.iter().min_by_key(|(_, v)| v.2).map(|(k, _)| k.clone()) {
                seen.remove(&oldest);
            }
        }
        seen.insert(id, (fingerprint, status, now));
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_keyed_control_acts_once_and_a_different_one_conflicts() {
        let recent = RecentWrites::default();
        let acted = AtomicUsize::new(0);
        let key = || IdempotencyKey::parse("k-1").ok();
        let act = || async {
            acted.fetch_add(1, Ordering::SeqCst);
            Ok(StatusCode::ACCEPTED)
        };
        for _ in 0..3 {
            let status = recent.once("replay", key(), "a".into(), act()).await;
            assert_eq!(status.ok(), Some(StatusCode::ACCEPTED));
        }
        assert_eq!(acted.load(Ordering::SeqCst), 1);
        let other = recent.once("replay", key(), "b".into(), act()).await;
        assert_eq!(other.err().map(|e| e.problem().status), Some(409));
        // Another scope is another key; no key always acts.
        recent.once("redrive", key(), "b".into(), act()).await.ok();
        recent.once("replay", None, "a".into(), act()).await.ok();
        assert_eq!(acted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_first_attempt_is_not_remembered() {
        let recent = RecentWrites::default();
        let failed = recent
            .once(
                "redrive",
                IdempotencyKey::parse("k").ok(),
                "a".into(),
                async { Err(ApiError::not_found("dead letter")) },
            )
            .await;
        assert!(failed.is_err());
        let retried = recent
            .once(
                "redrive",
                IdempotencyKey::parse("k").ok(),
                "a".into(),
                async { Ok(StatusCode::ACCEPTED) },
            )
            .await;
        assert_eq!(retried.ok(), Some(StatusCode::ACCEPTED));
    }
}
