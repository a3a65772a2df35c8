//! How a consumer is configured and what it reports: its [`ConsumerConfig`], its
//! [`Partition`], the [`SharedPosition`] several instances take turns on, and the
//! [`ConsumerStatus`] `/v1/consumers` shows.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use invsync_core::CloudEvent;
use invsync_ledger::{LedgerError, Term, Turn};

use crate::retry::RetryPolicy;

/// How one consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The consumer's name (`storefront`, `webhook`): in metrics, the API, its store.
    pub name: String,
    /// Its store file.
    pub path: PathBuf,
    /// Most events read and committed together.
    pub batch: usize,
    /// Most SKUs delivered in parallel (events of one SKU are always sequential).
    pub parallelism: usize,
    pub retry: RetryPolicy,
    /// Events applied later than this after they occurred count as SLA breaches.
    pub sla: Duration,
    /// Fallback poll when no head notification arrives (how long a bus long-polls).
    pub poll: Duration,
    /// When given, the consumer works only while this process holds the turn's lease
    /// (a consumer shared by several instances runs on the one that leads; a
    /// partition on the member that claimed it). What it records in the ledger is
    /// fenced by the term it took over under, and it delivers nothing once that term
    /// ended (see `invsync_ledger::lease`).
    pub active: Option<Turn>,
    /// How long one event's delivery (attempts and backoff) may hold its batch before
    /// the event and its SKU's later events are parked (see `parked`).
    pub park_after: Duration,
    /// For a consumer several instances share, one working at a time: the one record
    /// of its position that whichever instance works next resumes from.
    pub shared: Option<Arc<dyn SharedPosition>>,
    /// When given, this runtime works one partition of the consumer (the events whose
    /// SKU hashes to it) and passes over every other event; several processes then
    /// share the partitions (see [`crate::group`]).
    pub partition: Option<Partition>,
}

/// One of a consumer's partitions: the events whose SKU's
/// [`partition`](invsync_core::event::partition) among `of` is `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: u32,
    pub of: u32,
}

impl Partition {
    /// Whether this partition's runtime handles the envelope. An envelope without a
    /// readable partition key belongs to partition 0, so that a broken one is
    /// dead-lettered once, not once per partition.
    pub(super) fn holds(&self, envelope: &str) -> bool {
        let owner = CloudEvent::partition_key_of(envelope.as_bytes())
            .map_or(0, |key| invsync_core::event::partition(&key, self.of));
        owner == self.index
    }
}

/// The position of a consumer that several instances share, one working at a time
/// (the webhook connector on a PostgreSQL ledger). The working instance advances it
/// after each commit to what is settled — the checkpoint, or just before its oldest
/// parked event — and an instance that starts working resumes from it, so a change
/// of worker re-delivers at most the batch in flight (and, while events are parked,
/// what came after the oldest of them).
#[async_trait::async_trait]
pub trait SharedPosition: std::fmt::Debug + Send + Sync + 'static {
    /// The recorded position; 0 when none was ever recorded.
    async fn load(&self) -> Result<i64, LedgerError>;
    /// Moves it forward; a lower value is ignored. Refused (`Fenced`) when `term` is
    /// given and its lease moved on: a deposed worker finishing late moves nothing.
    async fn advance(&self, position: i64, term: Option<&Term>) -> Result<(), LedgerError>;
    /// Sets it, also backwards (a replay); fenced like `advance`.
    async fn set(&self, position: i64, term: Option<&Term>) -> Result<(), LedgerError>;
}

impl ConsumerConfig {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            batch: 1000,
            parallelism: 32,
            retry: RetryPolicy::default(),
            sla: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            active: None,
            park_after: Duration::from_secs(2),
            shared: None,
            partition: None,
        }
    }
}

/// A dead letter older than what its endpoint already received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    pub store_id: String,
    pub sku: String,
    /// The dead letter's version of the row.
    pub version: i64,
    /// The newest version the endpoint received or has queued.
    pub received: i64,
}

/// What `/v1/consumers` shows of a consumer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    /// The last offset applied (or dead-lettered).
    pub position: i64,
    /// Events not applied yet: after the position, and parked.
    pub lag_events: i64,
    /// Age of the oldest event not applied yet (parked ones included).
    pub lag_seconds: f64,
    pub dead_letters: i64,
    /// Events set aside because their SKU's delivery keeps failing.
    pub parked: i64,
    /// SKUs with parked events.
    pub parked_skus: i64,
    /// The last error of the oldest parked event that was tried.
    pub parked_error: Option<String>,
    /// Sync latency (`occurred_at` → applied) over the last 5 minutes, to within 10 %.
    pub sync_latency_p50_ms: Option<f64>,
    pub sync_latency_p99_ms: Option<f64>,
    /// The same over the last hour.
    pub sync_latency_1h_p50_ms: Option<f64>,
    pub sync_latency_1h_p99_ms: Option<f64>,
    /// The time of the last event applied: the view is current up to here.
    pub as_of: Option<DateTime<Utc>>,
    /// The last error that stopped progress, until progress resumes.
    pub last_error: Option<String>,
}
