//! Leases in PostgreSQL (see [`crate::lease`]): one row per lease in `leases`, with its
//! holder, its epoch and its expiry by the database's clock. Every statement here is
//! one autocommitted statement, so taking, renewing and giving up are each atomic.

use std::time::{Duration, Instant};

use postgres::{Client, GenericClient, NoTls};

use crate::error::LedgerError;
use crate::lease::{Term, LEASE_TTL};

/// Whether lease row `l` is held: not expired, and the session that last renewed it
/// still there. A holder that died closed its session, so its leases are free at once
/// (a `kill -9` is taken over in a fraction of a second); a frozen one keeps its
/// session, and its leases run until they expire.
pub(crate) const LIVE: &str = "(l.expires_at > clock_timestamp() AND EXISTS (
    SELECT 1 FROM pg_stat_activity a
    WHERE a.pid = l.holder_pid AND a.backend_start = l.holder_since))";

/// Takes lease `name` for `holder`, or renews it: succeeds when `holder` holds it or
/// it is not [`LIVE`]. The epoch rises whenever the lease changes hands or is taken
/// again after it lapsed, and stays while its holder renews in time. Returns the term,
/// or `None` when another holder has it.
pub(crate) fn acquire(
    c: &mut impl GenericClient,
    name: &str,
    holder: &str,
) -> Result<Option<Term>, postgres::Error> {
    let sent = Instant::now();
    let ttl = ttl_ms();
    let sql = format!(
        "INSERT INTO leases AS l (name, holder, epoch, expires_at, holder_pid, holder_since)
         SELECT $1, $2, 1, clock_timestamp() + make_interval(secs => $3::float8 / 1000),
                pid, backend_start
         FROM pg_stat_activity WHERE pid = pg_backend_pid()
         ON CONFLICT (name) DO UPDATE SET
            epoch = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > clock_timestamp()
                         THEN l.epoch ELSE l.epoch + 1 END,
            holder = EXCLUDED.holder,
            expires_at = EXCLUDED.expires_at,
            holder_pid = EXCLUDED.holder_pid,
            holder_since = EXCLUDED.holder_since
         WHERE l.holder = EXCLUDED.holder OR NOT {LIVE}
         RETURNING epoch"
    );
    let row = c.query_opt(&sql, &[&name, &holder, &ttl])?;
    Ok(row.map(|r| Term::new(name, r.get::<_, i64>(0), sent)))
}

/// Renews every lease `holder` holds and has not let lapse, in one statement; returns
/// `(name, epoch)` of each, the time the statement was sent, so the caller can move
/// each term's deadline (and end those that are missing: lost).
pub(crate) fn renew_all(
    c: &mut impl GenericClient,
    holder: &str,
) -> Result<(Vec<(String, i64)>, Instant), postgres::Error> {
    let sent = Instant::now();
    let rows = c.query(
        "UPDATE leases l
         SET expires_at = clock_timestamp() + make_interval(secs => $2::float8 / 1000),
             holder_pid = a.pid, holder_since = a.backend_start
         FROM pg_stat_activity a
         WHERE a.pid = pg_backend_pid() AND l.holder = $1 AND l.expires_at > clock_timestamp()
         RETURNING l.name, l.epoch",
        &[&holder, &ttl_ms()],
    )?;
    Ok((rows.iter().map(|r| (r.get(0), r.get(1))).collect(), sent))
}

/// Gives lease `name` up at once, so another holder need not wait for it to lapse.
pub(crate) fn give_up(
    c: &mut impl GenericClient,
    name: &str,
    holder: &str,
) -> Result<(), postgres::Error> {
    c.execute(
        "UPDATE leases SET expires_at = clock_timestamp() WHERE name = $1 AND holder = $2",
        &[&name, &holder],
    )?;
    Ok(())
}

/// Inside a writing transaction: refuses (`Fenced`) unless lease `term.lease()` is
/// still at `term.epoch()`. The row is share-locked until the transaction ends, so a
/// take-over that would raise the epoch waits for this transaction, and the new
/// holder then reads what it wrote.
pub(crate) fn check_fence(c: &mut impl GenericClient, term: &Term) -> Result<(), LedgerError> {
    let current: Option<i64> = c
        .query_opt(
            "SELECT epoch FROM leases WHERE name = $1 FOR SHARE",
            &[&term.lease()],
        )?
        .map(|r| r.get(0));
    if current == Some(term.epoch()) {
        Ok(())
    } else {
        Err(LedgerError::Fenced {
            lease: term.lease().to_owned(),
            epoch: term.epoch(),
            current,
        })
    }
}

fn ttl_ms() -> f64 {
    LEASE_TTL.as_secs_f64() * 1000.0
}

/// A session of its own for taking and renewing leases: statements that cannot hang
/// (a renewal that takes longer than a lease is worth nothing), and TCP keepalives so
/// that a lost host is noticed in seconds.
pub(crate) fn session(pg: &postgres::Config) -> Result<Client, postgres::Error> {
    let mut pg = pg.clone();
    pg.options("-c statement_timeout=2000 -c lock_timeout=1000")
        .connect_timeout(Duration::from_secs(2));
    pg.connect(NoTls)
}

/// A fresh holder identity: the process and a unique id, so that a member that joins
/// again (or an instance that restarts) is a new holder and its old terms are over.
pub(crate) fn holder() -> String {
    format!("pid {} {}", std::process::id(), uuid::Uuid::now_v7())
}
