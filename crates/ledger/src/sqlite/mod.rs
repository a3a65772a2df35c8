//! The embedded SQLite ledger: one file in WAL mode with `synchronous=FULL`.
//!
//! One writer thread owns the only writable connection. Requests queue up as jobs; the
//! writer takes everything waiting (up to `max_batch`) and applies it in one
//! transaction with one fsync — group commit. A refused job decides so before it
//! writes, so it leaves no trace and never affects its neighbours; a job that fails
//! part-way through its writes (I/O, a broken invariant) rolls the batch back and
//! every job in it is answered `Unavailable` (see `Writer::run_one`). Answers
//! are sent only after the commit: a success means the change is on disk. Reads use a
//! small pool of read-only connections and never wait for the writer.
//!
//! Copying the WAL back into the database file (the checkpoint) is the checkpointer
//! thread's job, not the writer's: left to SQLite's automatic checkpoint it runs inside
//! the commit that crosses the threshold, and every client of that batch waits for a
//! second round of writes and an fsync of the database file. The writer keeps a far
//! higher automatic threshold only as a backstop, should the checkpointer fall behind.

mod commands;
mod reads;
mod rows;
mod schema;
mod tx;
mod upkeep;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use invsync_core::{Sku, StoreId};
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot, watch};

use self::rows::STOCK_COLUMNS;
use self::tx::SqliteTx;
use crate::clock::Clock;
use crate::engine::Engine;
use crate::error::LedgerError;
use crate::model::{EventPage, LoggedEvent, SnapshotPage};
use crate::{Channels, EventLog, LogCursors, Term, Turn};

/// How the SQLite ledger runs.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file (created with its directory when missing).
    pub path: PathBuf,
    /// Most commands committed together; 1 switches group commit off.
    pub max_batch: usize,
    /// Read-only connections for queries.
    pub readers: usize,
    /// CloudEvents `source` of the events this ledger writes.
    pub source: String,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_batch: 256,
            readers: 4,
            source: "invsync://local".to_owned(),
        }
    }
}

/// Work for the writer: runs inside the batch transaction and returns how to answer
/// once the batch's fate (committed or not) is known.
type Work = Box<dyn FnOnce(&mut SqliteTx<'_>, DateTime<Utc>) -> Pending + Send>;

enum Job {
    Work(Work),
    Stop(oneshot::Sender<()>),
}

/// Answers a job's caller once the batch has ended, given the commit error if the
/// commit failed.
type Answer = Box<dyn FnOnce(Option<&LedgerError>) + Send>;

struct Pending {
    ok: bool,
    answer: Answer,
}

pub struct SqliteLedger {
    jobs: mpsc::Sender<Job>,
    head: watch::Receiver<i64>,
    /// Always held: one process owns a SQLite ledger.
    leadership: Turn,
    readers: Arc<Readers>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SqliteLedger {
    /// Opens (creating and migrating when needed) the ledger and starts its writer.
    pub fn open(config: SqliteConfig, clock: Arc<dyn Clock>) -> Result<Self, LedgerError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                LedgerError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut conn = Connection::open(&config.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LedgerError::Internal(format!(
                "journal_mode is {mode}, WAL was refused"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // Statement journals (a multi-row statement that may have to undo itself) stay
        // in memory instead of a temporary file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)?;
        schema::migrate(&mut conn)?;
        let last_offset = rows::last_offset(&conn)?;
        let readers = Arc::new(Readers::open(&config.path, config.readers.max(1))?);

        // Bounded, so a flood of requests waits in the HTTP layer instead of growing
        // memory without limit.
        let (tx, rx) = mpsc::channel(16_384);
        let (head_tx, head) = watch::channel(last_offset);
        let wal_written = spawn_checkpointer(&config.path)?;
        let writer = Writer {
            head: head_tx,
            wal_written,
            conn,
            clock,
            source: config.source,
            max_batch: config.max_batch.max(1),
            last_offset,
        };
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LedgerError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            jobs: tx,
            head,
            leadership: Turn::always(crate::lease::RELAY_LEASE),
            readers,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Runs `f` in the writer's next batch and waits for the committed answer.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine<'_, SqliteTx<'_>>) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        Self::answer(self.enqueue(f).await?).await
    }

    async fn answer<T>(
        answer: oneshot::Receiver<Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
        answer
            .await
            .map_err(|_| LedgerError::Unavailable("the ledger writer stopped".into()))?
    }

    /// Queues `f` for the writer and returns where its answer will arrive. Dropping
    /// the job unanswered (writer gone) makes the answer an `Unavailable` error.
    async fn enqueue<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine<'_, SqliteTx<'_>>) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<T, LedgerError>>, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let work: Work = Box::new(move |tx, now| {
            let result = f(&mut Engine { tx, now });
            Pending {
                ok: result.is_ok(),
                answer: Box::new(move |commit_error| {
                    let result = match (result, commit_error) {
                        (Ok(_), Some(err)) => Err(LedgerError::Unavailable(err.to_string())),
                        (result, _) => result,
                    };
                    let _ = reply.send(result);
                }),
            }
        });
        self.jobs
            .send(Job::Work(work))
            .await
            .map_err(|_| LedgerError::Unavailable("the ledger is shutting down".into()))?;
        Ok(answer)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| LedgerError::Internal(format!("read task failed: {e}")))?
    }
}

struct Writer {
    conn: Connection,
    /// Tells subscribers the last committed offset.
    head: watch::Sender<i64>,
    /// Tells the checkpointer there are new WAL frames to copy.
    wal_written: std::sync::mpsc::SyncSender<()>,
    clock: Arc<dyn Clock>,
    source: String,
    max_batch: usize,
    /// The last event offset written and committed (or about to be, within a batch).
    last_offset: i64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(job) = rx.blocking_recv() {
            let mut stop = None;
            match job {
                Job::Work(work) => batch.push(work),
                Job::Stop(done) => stop = Some(done),
            }
            while stop.is_none() && batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(Job::Work(work)) => batch.push(work),
                    Ok(Job::Stop(done)) => stop = Some(done),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.run_batch(&mut batch);
            }
            if let Some(done) = stop {
                let _ = done.send(());
                break;
            }
        }
        tracing::info!("ledger writer stopped");
    }

    fn run_batch(&mut self, batch: &mut Vec<Work>) {
        let now = self.clock.now();
        let committed_offset = self.last_offset;
        if let Err(err) = exec_cached(&self.conn, "BEGIN IMMEDIATE") {
            let err = LedgerError::from(err);
            tracing::error!(error = %err, "cannot begin a ledger transaction");
            // Dropping the jobs unrun drops their reply senders: each caller gets
            // `Unavailable` and may retry.
            batch.clear();
            return;
        }
        let mut pending = Vec::with_capacity(batch.len());
        let mut broken = false;
        for work in batch.drain(..) {
            let (one, broke) = self.run_one(work, now);
            pending.push(one);
            if broke {
                broken = true;
                break;
            }
        }
        // Jobs never run (after a broken command) are dropped: their callers get
        // `Unavailable` and may retry.
        batch.clear();
        let commit = if broken {
            Err(LedgerError::Unavailable(
                "a command failed part-way through its writes; its batch was rolled back".into(),
            ))
        } else {
            self.conn
                .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'last_offset'")
                .and_then(|mut update| update.execute(params![self.last_offset]))
                .and_then(|_| exec_cached(&self.conn, "COMMIT"))
                .map_err(LedgerError::from)
        };
        let commit_error = match commit {
            Ok(()) => {
                if self.last_offset != committed_offset {
                    self.head.send_replace(self.last_offset);
                }
                // Full means a checkpoint is already due; either way it will run.
                let _ = self.wal_written.try_send(());
                None
            }
            Err(err) => {
                tracing::error!(error = %err, "ledger commit failed; the batch is rolled back");
                let _ = exec_cached(&self.conn, "ROLLBACK");
                self.last_offset = committed_offset;
                Some(err)
            }
        };
        for p in pending {
            (p.answer)(commit_error.as_ref());
        }
    }

    /// Runs one command and says whether it failed after writing. A command that is
    /// refused decides so before it writes anything (the engine checks every line
    /// first), so a refusal leaves no trace and its neighbours carry on. Only an I/O
    /// error or a broken invariant can stop a command part-way; then the caller rolls
    /// the whole batch back. This is what lets the batch run without a savepoint per
    /// command, whose statement journal copied every page a command touched.
    fn run_one(&mut self, work: Work, now: DateTime<Utc>) -> (Pending, bool) {
        let before = self.last_offset;
        let changes = self.conn.total_changes();
        let mut tx = SqliteTx {
            conn: &self.conn,
            last_offset: &mut self.last_offset,
            source: &self.source,
        };
        let pending = work(&mut tx, now);
        if pending.ok {
            return (pending, false);
        }
        self.last_offset = before;
        let wrote = self.conn.total_changes() != changes;
        if wrote {
            tracing::error!("a ledger command failed after writing; rolling its batch back");
        }
        (pending, wrote)
    }
}

/// Runs a statement without parameters through the statement cache: the writer
/// begins and commits hundreds of times a second.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The writer's page cache, in KiB (a negative `cache_size`): the upper levels of every
/// B-tree and the busiest leaves stay in memory, well within the RSS budget. A catalog
/// whose stock table outgrows it (10M rows: 465 MB) costs the writer a page read per
/// reservation, which BENCHMARKS.md ("Growth") measures; a cache, or a mapping, that
/// held such a table would cost its size in RSS, so we keep the bound.
const WRITER_CACHE_KIB: i64 = -16_384;

/// The writer checkpoints by itself only past this many WAL pages (64 MiB): a
/// backstop for a checkpointer that cannot keep up, never the normal path.
const BACKSTOP_CHECKPOINT_PAGES: i64 = 16_384;

/// At most one checkpoint per this interval: under load the writer commits hundreds
/// of times a second, and one checkpoint (with its fsync) serves them all.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Starts the checkpointer: it copies committed WAL frames into the database file on
/// its own connection and thread whenever the returned sender (the writer's) says
/// there are new ones, and stops when that sender is dropped. A PASSIVE checkpoint
/// never blocks the writer or the readers; once it has copied everything, the
/// writer's next transaction starts the WAL file over, so the WAL stays small under
/// steady load.
fn spawn_checkpointer(path: &Path) -> Result<std::sync::mpsc::SyncSender<()>, LedgerError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("ledger-checkpointer".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                });
                match done {
                    Ok((_, wal_pages, copied)) => {
                        tracing::trace!(wal_pages, copied, "ledger checkpoint")
                    }
                    Err(err) => tracing::warn!(error = %err, "ledger checkpoint failed"),
                }
                std::thread::sleep(CHECKPOINT_EVERY);
            }
        })
        .map_err(|e| LedgerError::Internal(format!("cannot start the checkpointer thread: {e}")))?;
    Ok(tx)
}

/// Read-only connections, handed out round-robin.
struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Readers {
    fn open(path: &Path, n: usize) -> Result<Self, LedgerError> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conns.push(Mutex::new(conn));
        }
        Ok(Self {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut conn = self.conns[i].lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn)
    }
}

/// Runs `f` in one read transaction, so everything it reads is one consistent
/// snapshot of the database.
fn in_snapshot<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Connection) -> Result<T, LedgerError>,
) -> Result<T, LedgerError> {
    let tx = conn.transaction()?;
    let out = f(&tx)?;
    tx.finish()?;
    Ok(out)
}

#[async_trait]
impl EventLog for SqliteLedger {
    async fn snapshot(
        &self,
        after: Option<(StoreId, Sku)>,
        limit: usize,
    ) -> Result<SnapshotPage, LedgerError> {
        self.read(move |c| {
            in_snapshot(c, |c| {
                let (store, sku) = after
                    .as_ref()
                    .map_or(("", ""), |(st, sk)| (st.as_str(), sk.as_str()));
                let sql = format!(
                    "SELECT {STOCK_COLUMNS} FROM stock WHERE (store_id, sku) > (?1, ?2)
                     ORDER BY store_id, sku LIMIT ?3"
                );
                let items = rows::stock_rows(c, &sql, params![store, sku, limit as i64])?;
                let log_offset = rows::last_offset(c)?;
                Ok(SnapshotPage { items, log_offset })
            })
        })
        .await
    }

    async fn events(&self, after: i64, limit: usize) -> Result<EventPage, LedgerError> {
        self.read(move |c| {
            in_snapshot(c, |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT log_offset, envelope FROM events WHERE log_offset > ?1
                     ORDER BY log_offset LIMIT ?2",
                )?;
                let mut rows = stmt.query(params![after, limit as i64])?;
                let mut events = Vec::new();
                while let Some(row) = rows.next()? {
                    events.push(LoggedEvent {
                        offset: row.get(0)?,
                        envelope: row.get(1)?,
                    });
                }
                let last_offset = rows::last_offset(c)?;
                let oldest: Option<i64> =
                    c.query_row("SELECT min(log_offset) FROM events", [], |r| r.get(0))?;
                Ok(EventPage {
                    events,
                    oldest_offset: oldest.unwrap_or(last_offset + 1),
                    last_offset,
                })
            })
        })
        .await
    }

    async fn offset_at(&self, since: DateTime<Utc>) -> Result<i64, LedgerError> {
        self.read(move |c| {
            in_snapshot(c, |c| {
                Ok(match rows::first_offset_since(c, since)? {
                    Some(offset) => offset,
                    None => rows::last_offset(c)? + 1,
                })
            })
        })
        .await
    }

    async fn channel_snapshot(&self) -> Result<crate::ChannelSnapshot, LedgerError> {
        let channels = self.channels().await?;
        let overrides = self
            .read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT channel_id, store_id, sku, safety_stock, version FROM safety_stock
                     ORDER BY channel_id, sku, store_id",
                )?;
                let mut found = stmt.query([])?;
                let mut out = Vec::new();
                while let Some(r) = found.next()? {
                    out.push(crate::parts::override_row(
                        &r.get::<_, String>(0)?,
                        &r.get::<_, String>(1)?,
                        &r.get::<_, String>(2)?,
                        r.get(3)?,
                        r.get(4)?,
                    )?);
                }
                Ok(out)
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
impl LogCursors for SqliteLedger {
    async fn cursor(&self, name: &str) -> Result<i64, LedgerError> {
        let key = crate::cursor_key(name);
        self.read(move |c| rows::meta(c, &key)).await
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
        self.leadership.clone()
    }
}
