//! What a process connects to: the ledger (embedded or PostgreSQL), the bus, and the
//! source of events each consumer reads.

use std::sync::Arc;

use anyhow::Context;

use crate::config::setting;
use invsync_bus::{NatsBus, NatsConfig, NatsSource};
use invsync_consumers::{EventSource, LedgerSource};
use invsync_ledger::{Ledger, PgConfig, PgLedger, SqliteConfig, SqliteLedger, SystemClock};

use crate::config::{Bus, Config, Database};

/// Opens the ledger the configuration names. `relay`: whether this process takes part
/// in relay leadership (PostgreSQL; a `consume` process does not).
pub(crate) async fn open_ledger(config: &Config, relay: bool) -> anyhow::Result<Arc<dyn Ledger>> {
    Ok(match &config.database {
        Database::Sqlite(path) => {
            let mut sqlite = SqliteConfig::new(path);
            sqlite.max_batch = config.max_batch;
            sqlite.source = config.source.clone();
            let ledger = SqliteLedger::open(sqlite, Arc::new(SystemClock))
                .with_context(|| format!("opening the ledger at {}", path.display()))?;
            tracing::info!(db.path = %path.display(), max_batch = config.max_batch, "ledger open (SQLite, WAL, synchronous=FULL)");
            Arc::new(ledger)
        }
        Database::Postgres(url) => {
            let mut pg = PgConfig::new(url.clone());
            pg.source = config.source.clone();
            pg.relay = relay;
            pg.max_batch = config.max_batch;
            // The sync PostgreSQL client connects on a blocking thread.
            let ledger =
                tokio::task::spawn_blocking(move || PgLedger::open(pg, Arc::new(SystemClock)))
                    .await
                    .context("opening the PostgreSQL ledger")?
                    .context("opening the PostgreSQL ledger")?;
            tracing::info!(
                "ledger open (PostgreSQL, row locks, events logged in each write's transaction)"
            );
            Arc::new(ledger)
        }
    })
}

/// Connects the NATS bus when it is configured (in the background: the server starts
/// and takes reservations while NATS is down).
pub(crate) async fn connect_bus(config: &Config) -> anyhow::Result<Option<NatsBus>> {
    let Bus::Nats {
        url,
        stream,
        replicas,
    } = &config.bus
    else {
        return Ok(None);
    };
    let mut nats = NatsConfig::new(url.clone());
    nats.stream = stream.clone();
    nats.replicas = *replicas;
    nats.retention = config.retention;
    let bus = NatsBus::connect(nats).await.context("bus")?;
    tracing::info!(bus.url = %url, bus.stream = %stream, "event bus: NATS JetStream");
    Ok(Some(bus))
}

/// Where a consumer reads: the ledger's log, or its durable consumer on the bus.
pub(super) fn source(
    ledger: &Arc<dyn Ledger>,
    bus: Option<&NatsBus>,
    durable: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<Arc<dyn EventSource>> {
    Ok(match bus {
        None => Arc::new(LedgerSource(ledger.clone())),
        Some(bus) => Arc::new(NatsSource::new(bus.clone(), durable()?)),
    })
}

/// This data dir's instance id (made on first use): names the bus consumers that
/// belong to one instance, such as its storefront view.
pub(crate) fn instance_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
    std::fs::create_dir_all(data_dir).map_err(|e| {
        setting(
            "data-dir",
            format!("cannot create {}: {e}", data_dir.display()),
        )
    })?;
    let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}
