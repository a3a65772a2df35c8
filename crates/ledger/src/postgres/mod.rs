//! The PostgreSQL ledger, for production and for several instances on one database.
//!
//! Writes: commands run through the same `Engine` as SQLite, coalesced by key into
//! lane batches that are one unit of work each (`lanes`, `batch`). Stock rows are
//! locked `FOR UPDATE` in (store, sku) order, so concurrent reservations serialize on
//! the row locks and two batches cannot deadlock over them. A batch that loses a
//! race (a unique key, a serialization failure) is retried from the start, which
//! also makes a repeated idempotency key answer with the original.
//!
//! Events go straight into the `events` log, in the same transaction as the change,
//! as its last statement before COMMIT: it moves the head counter (`meta`'s
//! `last_offset` row) by the batch's event count and inserts the events at the
//! offsets after it. The counter's row lock is held until the transaction ends, so a
//! later transaction takes its offsets only after ours committed (or rolled back,
//! returning them): offsets follow commit order, the log is gapless, one key's
//! versions are in order, and no reader ever sees an offset before a lower one
//! commits. Nothing is copied, deleted or vacuumed after the fact. (Until issue 14 an
//! outbox table and a relay did this, and the relay had to wait for the oldest
//! running transaction: that wait was most of the visibility latency.)
//!
//! One instance at a time leads (the `relay` lease, see [`crate::lease`]): it
//! publishes the log to the bus and runs the shared webhook connectors. Every instance
//! follows the head (`heartbeat.rs`) to wake its own consumers.

mod batch;
mod commands;
mod group;
mod heartbeat;
mod lanes;
mod lease;
mod reads;
mod rows;
mod schema;
mod upkeep;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use invsync_core::{Sku, StoreId, Target};
use postgres::{Client, IsolationLevel, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use tokio::sync::watch;
use uuid::Uuid;

use self::rows::STOCK_COLUMNS;
use crate::clock::Clock;
use crate::engine::Engine;
use crate::error::LedgerError;
use crate::lease::{Term, Turn};
use crate::model::{EventPage, LoggedEvent, SnapshotPage, StockRow};
use crate::{Channels, EventLog, LogCursors};

type Pool = r2d2::Pool<Manager>;

/// A pooled connection and the statements prepared on it.
pub(crate) struct PgConn {
    client: Client,
    statements: rows::Statements,
}

/// r2d2's PostgreSQL manager, keeping a statement cache beside each connection.
#[derive(Debug)]
pub(crate) struct Manager(PostgresConnectionManager<NoTls>);

impl r2d2::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConn, postgres::Error> {
        Ok(PgConn {
            client: self.0.connect()?,
            statements: Default::default(),
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}

/// How many times a command that lost a race is tried before answering `Unavailable`.
const ATTEMPTS: usize = 8;

#[derive(Debug, Clone)]
pub struct PgConfig {
    /// `postgres://user@host:port/db`.
    pub url: String,
    pub pool_size: u32,
    /// How long a request waits for a connection (or a new one) before it answers
    /// 503: an outage shows in seconds, never as a hang.
    pub connect_timeout: Duration,
    /// CloudEvents `source` of the events this ledger writes.
    pub source: String,
    /// Whether this instance takes part in relay leadership.
    pub relay: bool,
    /// Lanes that coalesce concurrent write commands into shared transactions.
    pub lanes: usize,
    /// Most commands one lane commits together.
    pub max_batch: usize,
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 32,
            connect_timeout: Duration::from_secs(3),
            source: "invsync://local".to_owned(),
            relay: true,
            lanes: 4,
            max_batch: 256,
        }
    }
}

pub struct PgLedger {
    /// `None` only while being dropped (see `Drop`).
    pool: Option<Pool>,
    head: watch::Receiver<i64>,
    /// Whether, and under which term, this instance holds the relay lease.
    leadership: watch::Receiver<Option<Term>>,
    closed: Arc<AtomicBool>,
    heartbeat: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `None` only while being dropped (it holds pool handles too).
    lanes: Option<lanes::Lanes>,
    /// How to open a session of its own (a consumer group's member).
    pg: postgres::Config,
    /// The server the last ping reached (see `Ledger::server`).
    server: Mutex<Option<String>>,
}

impl PgLedger {
    /// Connects, migrates, and starts the heartbeat thread. Fails when the database cannot
    /// be reached at start (a running instance instead answers 503 and recovers).
    pub fn open(config: PgConfig, clock: Arc<dyn Clock>) -> Result<Self, LedgerError> {
        let mut pg: postgres::Config = config
            .url
            .parse()
            .map_err(|e| LedgerError::Internal(format!("database URL: {e}")))?;
        pg.connect_timeout(config.connect_timeout);
        // No statement may wait on a lock forever: a stuck request becomes a 503. And
        // no session may sit in an open transaction for long: a process frozen in the
        // middle of one (SIGSTOP, a VM pause) would hold its row locks — stock rows,
        // a lease row — until it woke, and every other instance's writes on those
        // rows, or the take-over of its lease, would wait for it. PostgreSQL ends
        // such a session after 3 s (a lease's length), so its locks go with it.
        pg.options(
            "-c statement_timeout=30000 -c lock_timeout=10000 \
             -c idle_in_transaction_session_timeout=3000",
        );
        with_keepalives(&mut pg);
        let pool = r2d2::Pool::builder()
            .max_size(config.pool_size)
            .min_idle(Some(2))
            .connection_timeout(config.connect_timeout)
            .build(Manager(PostgresConnectionManager::new(pg.clone(), NoTls)))?;
        schema::migrate(&mut pool.get()?.client)?;
        let last: i64 = pool
            .get()?
            .client
            .query_one("SELECT value FROM meta WHERE key = 'last_offset'", &[])?
            .get(0);
        let (head_tx, head) = watch::channel(last);
        let closed = Arc::new(AtomicBool::new(false));
        let (leading, leadership) = watch::channel(None);
        let heartbeat = heartbeat::Heartbeat {
            holder: lease::holder(),
            pg: pg.clone(),
            pool: pool.clone(),
            head: head_tx,
            leading,
            closed: closed.clone(),
            lead: config.relay,
        };
        let handle = std::thread::Builder::new()
            .name("ledger-heartbeat".into())
            .spawn(move || heartbeat.run())
            .map_err(|e| {
                LedgerError::Internal(format!("cannot start the heartbeat thread: {e}"))
            })?;
        let source: Arc<str> = config.source.into();
        let lanes =
            lanes::Lanes::start(config.lanes, config.max_batch, pool.clone(), clock, source)?;
        Ok(Self {
            pool: Some(pool),
            lanes: Some(lanes),
            head,
            leadership,
            closed,
            heartbeat: Mutex::new(Some(handle)),
            pg,
            server: Mutex::new(None),
        })
    }

    fn lanes(&self) -> Result<&lanes::Lanes, LedgerError> {
        self.lanes
            .as_ref()
            .ok_or_else(|| LedgerError::Unavailable("the ledger is closed".into()))
    }

    fn pool(&self) -> Result<Pool, LedgerError> {
        self.pool
            .clone()
            .ok_or_else(|| LedgerError::Unavailable("the ledger is closed".into()))
    }

    /// A write command alone in its own transaction (expiry, purging, cursors): the
    /// same unit of work as a lane's batch, without waiting for a lane.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnMut(&mut Engine<'_, batch::BufferedTx<'_, '_>>) -> Result<T, LedgerError>
            + Send
            + 'static,
    ) -> Result<T, LedgerError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LedgerError::Unavailable(
                "the ledger is shutting down".into(),
            ));
        }
        self.lanes()?.alone(f).await
    }

    /// A write command through the lanes (see [`lanes`]): it shares a transaction with
    /// the commands queued beside it.
    async fn coalesced<T: Send + 'static>(
        &self,
        key: impl std::hash::Hash,
        prefetch: batch::Prefetch,
        f: impl FnMut(&mut Engine<'_, batch::BufferedTx<'_, '_>>) -> Result<T, LedgerError>
            + Send
            + 'static,
    ) -> Result<T, LedgerError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LedgerError::Unavailable(
                "the ledger is shutting down".into(),
            ));
        }
        self.lanes()?.run(key, prefetch, f).await
    }

    /// The lane key of a reservation's release or fulfilment: the one its reserve
    /// went to ((store, first SKU)), so that an order's reserve, release and fulfil,
    /// and everything else on that SKU, queue in one lane and share its batches instead
    /// of contending for the same row locks from different lanes. An unknown id gets
    /// a lane of its own (the engine answers it `not found`).
    async fn lane_of_reservation(&self, id: Uuid) -> Result<(String, Option<String>), LedgerError> {
        self.read(move |c| {
            let row = c.query_opt(
                "SELECT CASE WHEN r.channel IS NULL THEN r.store_id ELSE chr(1) || r.channel END,
                        (SELECT min(e ->> 0) FROM json_array_elements(r.lines::json) e)
                 FROM reservations r WHERE r.id = $1",
                &[&id],
            )?;
            Ok(match row {
                Some(row) => (row.try_get(0)?, row.try_get(1)?),
                None => (id.to_string(), None),
            })
        })
        .await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let pool = self.pool()?;
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            f(&mut conn.client)
        })
        .await
        .map_err(|e| LedgerError::Internal(format!("read task failed: {e}")))?
    }
}

impl PgLedger {
    /// A page of the log; with `partition`, the envelopes of other partitions' events
    /// are left empty (see [`EventLog::partition_events`]).
    async fn log_page(
        &self,
        after: i64,
        limit: usize,
        partition: Option<i16>,
    ) -> Result<EventPage, LedgerError> {
        self.read(move |c| {
            in_snapshot(c, |tx| {
                let events = tx
                    .query(
                        "SELECT log_offset, CASE WHEN part <> $3 THEN '' ELSE envelope END \
                         FROM events WHERE log_offset > $1 ORDER BY log_offset LIMIT $2",
                        &[&after, &(limit as i64), &partition],
                    )?
                    .iter()
                    .map(|r| LoggedEvent {
                        offset: r.get(0),
                        envelope: r.get(1),
                    })
                    .collect();
                let last_offset: i64 = tx
                    .query_one("SELECT value FROM meta WHERE key = 'last_offset'", &[])?
                    .get(0);
                let oldest: Option<i64> = tx
                    .query_one("SELECT min(log_offset) FROM events", &[])?
                    .get(0);
                Ok(EventPage {
                    events,
                    oldest_offset: oldest.unwrap_or(last_offset + 1),
                    last_offset,
                })
            })
        })
        .await
    }
}

impl Drop for PgLedger {
    fn drop(&mut self) {
        // The sync PostgreSQL client closes its connection by blocking on its own
        // runtime, which panics on an async worker thread: let the last pool handles
        // (ours and the lanes') go on a plain thread.
        let (pool, lanes) = (self.pool.take(), self.lanes.take());
        let _ = std::thread::Builder::new()
            .name("ledger-pool-close".into())
            .spawn(move || drop((pool, lanes)));
    }
}

/// The first half of a reservation's lane key: its store, or its channel marked by a
/// `\u{1}` (which no identifier contains) so that the two never share a lane by
/// accident. `lane_of_reservation` computes the same in SQL.
fn lane_place(target: &Target) -> String {
    match target {
        Target::Store(store) => store.to_string(),
        Target::Channel(channel) => format!("\u{1}{channel}"),
    }
}

/// Runs `f` in a REPEATABLE READ read-only transaction: one consistent snapshot.
fn in_snapshot<T>(
    c: &mut Client,
    f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, LedgerError>,
) -> Result<T, LedgerError> {
    let mut tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let out = f(&mut tx)?;
    tx.commit()?;
    Ok(out)
}

fn stock_rows(
    c: &mut impl postgres::GenericClient,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<StockRow>, LedgerError> {
    c.query(sql, params)?.iter().map(rows::stock_row).collect()
}

/// TCP keepalives and a user timeout on every session, unless the URL sets its own: a
/// session to a host that vanished (no FIN, no RST) is given up in seconds, not after
/// the kernel's two hours, so its leases lapse and the pool reconnects to whichever
/// host is primary now.
fn with_keepalives(pg: &mut postgres::Config) {
    pg.keepalives(true);
    if pg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        pg.keepalives_idle(Duration::from_secs(5));
    }
    if pg.get_keepalives_interval().is_none() {
        pg.keepalives_interval(Duration::from_secs(2));
    }
    if pg.get_keepalives_retries().is_none() {
        pg.keepalives_retries(3);
    }
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(Duration::from_secs(10));
    }
}

#[async_trait]
impl EventLog for PgLedger {
    async fn snapshot(
        &self,
        after: Option<(StoreId, Sku)>,
        limit: usize,
    ) -> Result<SnapshotPage, LedgerError> {
        self.read(move |c| {
            in_snapshot(c, |tx| {
                let (store, sku) = after.as_ref().map_or(("", ""), |(st, sk)| (st.as_str(), sk.as_str()));
                let sql = format!(
                    "SELECT {STOCK_COLUMNS} FROM stock WHERE (store_id, sku) > ($1, $2) ORDER BY store_id, sku LIMIT $3"
                );
                let items = stock_rows(tx, &sql, &[&store, &sku, &(limit as i64)])?;
                let log_offset: i64 = tx.query_one("SELECT value FROM meta WHERE key = 'last_offset'", &[])?.get(0);
                Ok(SnapshotPage { items, log_offset })
            })
        })
        .await
    }

    async fn events(&self, after: i64, limit: usize) -> Result<EventPage, LedgerError> {
        self.log_page(after, limit, None).await
    }

    async fn partition_events(
        &self,
        after: i64,
        limit: usize,
        partition: u32,
    ) -> Result<EventPage, LedgerError> {
        self.log_page(after, limit, Some(partition as i16)).await
    }

    async fn offset_at(&self, since: DateTime<Utc>) -> Result<i64, LedgerError> {
        self.read(move |c| {
            in_snapshot(c, |tx| {
                let first: Option<i64> = tx
                    .query_one(
                        "SELECT min(log_offset) FROM events WHERE occurred_at >= $1",
                        &[&since],
                    )?
                    .get(0);
                match first {
                    Some(offset) => Ok(offset),
                    None => Ok(tx
                        .query_one("SELECT value FROM meta WHERE key = 'last_offset'", &[])?
                        .get::<_, i64>(0)
                        + 1),
                }
            })
        })
        .await
    }

    async fn channel_snapshot(&self) -> Result<crate::ChannelSnapshot, LedgerError> {
        let channels = self.channels().await?;
        let overrides = self
            .read(|c| {
                c.query(
                    "SELECT channel_id, store_id, sku, safety_stock, version FROM safety_stock
                     ORDER BY channel_id, sku, store_id",
                    &[],
                )?
                .iter()
                .map(|r| {
                    crate::parts::override_row(
                        r.try_get(0)?,
                        r.try_get(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                        r.try_get(4)?,
                    )
                })
                .collect()
            })
            .await?;
        Ok(crate::ChannelSnapshot {
            channels,
            overrides,
        })
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.clone()
    }
}

#[async_trait]
impl LogCursors for PgLedger {
    async fn cursor(&self, name: &str) -> Result<i64, LedgerError> {
        let key = crate::cursor_key(name);
        self.read(move |c| {
            Ok(
                c.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?
                    .map_or(0, |r| r.get(0)),
            )
        })
        .await
    }

    async fn advance_cursor(
        &self,
        name: &str,
        offset: i64,
        term: Option<&Term>,
    ) -> Result<(), LedgerError> {
        let (name, term) = (name.to_owned(), term.cloned());
        self.write(move |e| e.advance_cursor(&name, offset, term.as_ref()))
            .await
    }

    async fn set_cursor(
        &self,
        name: &str,
        offset: i64,
        term: Option<&Term>,
    ) -> Result<(), LedgerError> {
        let (name, term) = (name.to_owned(), term.cloned());
        self.write(move |e| e.set_cursor(&name, offset, term.as_ref()))
            .await
    }

    fn leadership(&self) -> Turn {
        Turn::new(self.leadership.clone())
    }

    async fn join_group(
        &self,
        group: &str,
    ) -> Result<Box<dyn crate::PartitionClaims>, LedgerError> {
        Ok(Box::new(
            group::PgClaims::join(self.pg.clone(), group).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_gets_keepalives_unless_the_url_sets_its_own() {
        let mut pg: postgres::Config =
            "postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write"
                .parse()
                .unwrap();
        with_keepalives(&mut pg);
        assert!(pg.get_keepalives());
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(5));
        assert_eq!(pg.get_keepalives_interval(), Some(Duration::from_secs(2)));
        assert_eq!(pg.get_keepalives_retries(), Some(3));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(10)));
        assert_eq!(pg.get_hosts().len(), 2, "every host kept");

        let mut own: postgres::Config = "postgres://u@h/db?keepalives_idle=60&tcp_user_timeout=30"
            .parse()
            .unwrap();
        with_keepalives(&mut own);
        assert_eq!(own.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(own.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
    }
}
