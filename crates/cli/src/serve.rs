//! `invsync serve`: opens the ledger, then runs the HTTP server, the built-in consumers
//! (storefront projection, webhook connector), the expiry sweeper, the retention
//! janitor and the gauges under one supervisor until SIGTERM/Ctrl-C, then drains and
//! exits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use invsync_api::{Access, AppState, Pipeline};
use invsync_consumers::storefront::{Storefront, StorefrontReader};
use invsync_consumers::webhook::{Webhook, WebhookConfig};
use invsync_consumers::ConsumerConfig;
use invsync_ledger::{Ledger, PgConfig, PgLedger, SqliteConfig, SqliteLedger, SystemClock};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, Database};

/// How often the sweeper releases reservations whose TTL ran out. A reservation is
/// released at most this long after its `expires_at`.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

/// How often the gauges no request updates are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Metrics first: tasks started below record from their first moment.
    invsync_api::telemetry::init();
    let access = match &config.tokens {
        Some(path) => {
            Access::Tokens(crate::tokens::load(path).map_err(|e| anyhow::anyhow!("tokens: {e}"))?)
        }
        None if config.listen.ip().is_loopback() => {
            tracing::warn!("no --tokens given: accepting anonymous requests, on loopback only");
            Access::Anonymous
        }
        None => anyhow::bail!(
            "listen: refusing to serve {} without --tokens (anonymous access is for loopback only)",
            config.listen
        ),
    };
    let ledger: Arc<dyn Ledger> = match &config.database {
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
            // The sync PostgreSQL client connects on a blocking thread.
            let ledger =
                tokio::task::spawn_blocking(move || PgLedger::open(pg, Arc::new(SystemClock)))
                    .await
                    .context("opening the PostgreSQL ledger")?
                    .context("opening the PostgreSQL ledger")?;
            tracing::info!("ledger open (PostgreSQL, row locks, transactional outbox, relay)");
            Arc::new(ledger)
        }
    };
    // Signal handlers go in before the server says it is listening, so a SIGTERM
    // that follows the announcement always finds them.
    let signals = ShutdownSignals::install().context("installing signal handlers")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, "invsync listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let signal_stop = stop_tx.clone();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutdown requested: finishing in-flight requests");
        let _ = signal_stop.send(true);
    });

    let mut tasks: JoinSet<(&'static str, Result<(), String>)> = JoinSet::new();
    let pipeline = start_consumers(&config, &ledger, &stop_rx, &mut tasks)?;
    let state = AppState::with_pipeline(ledger.clone(), access, pipeline);
    let http = invsync_api::serve(listener, state, stopped(stop_rx.clone()));
    tasks.spawn(async move { ("HTTP server", http.await.map_err(|e| e.to_string())) });
    let (l, s) = (ledger.clone(), stop_rx.clone());
    tasks.spawn(async move {
        (
            "expiry sweeper",
            every(EXPIRY_INTERVAL, s, || expire(l.clone())).await,
        )
    });
    let (l, s, retention) = (ledger.clone(), stop_rx.clone(), config.retention);
    let janitor_every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    tasks.spawn(async move {
        (
            "retention janitor",
            every(janitor_every, s, || purge(l.clone(), retention)).await,
        )
    });
    let (l, s) = (ledger.clone(), stop_rx.clone());
    tasks.spawn(async move {
        (
            "gauges",
            every(GAUGE_INTERVAL, s, || gauges(l.clone())).await,
        )
    });

    // The supervisor: a task that ends before shutdown was requested is a failure; say
    // which and why, then stop the others. After a request every task ends by itself.
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let stopping = *stop_rx.borrow();
        let why = match joined {
            Ok((_, Ok(()))) if stopping => None,
            Ok((task, Ok(()))) => Some(format!("{task} stopped")),
            Ok((task, Err(e))) => Some(format!("{task} failed: {e}")),
            Err(e) => Some(format!("a task panicked or was cancelled: {e}")),
        };
        if let Some(why) = why {
            tracing::error!(reason = %why, "a task stopped; shutting down");
            failure.get_or_insert(why);
            let _ = stop_tx.send(true);
        }
    }
    // Let the relay move what was committed before stopping (PostgreSQL).
    if let Err(e) = ledger.flush(Duration::from_secs(5)).await {
        tracing::warn!(error = %e, "stopping with events still in the outbox; the next relay moves them");
    }
    ledger.shutdown().await;
    tracing::info!("invsync stopped");
    match failure {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(why)),
    }
}

/// Starts the built-in consumers: the storefront projection always, the webhook
/// connector when configured. Each keeps its state in its own file in the data dir.
fn start_consumers(
    config: &Config,
    ledger: &Arc<dyn Ledger>,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<(&'static str, Result<(), String>)>,
) -> anyhow::Result<Pipeline> {
    let consumer = |name: &str| {
        let mut c = ConsumerConfig::new(name, config.data_dir.join(format!("{name}.db")));
        c.sla = config.sla;
        c
    };
    let (storefront, run) = invsync_consumers::start(
        consumer("storefront"),
        Arc::new(Storefront),
        ledger.clone(),
        stop.clone(),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    tasks.spawn(async move {
        run.await;
        ("storefront consumer", Ok(()))
    });
    let mut pipeline = Pipeline {
        sla: config.sla,
        consumers: vec![storefront.clone()],
        storefront: Some((
            StorefrontReader::new(storefront.reader().clone()),
            storefront,
        )),
    };
    if let Some(webhook) = &config.webhook {
        let sink = Webhook::new(WebhookConfig {
            url: webhook.url.clone(),
            secret: webhook.secret.clone(),
            timeout: Duration::from_secs(10),
        })
        .map_err(|e| anyhow::anyhow!(e))?;
        let (handle, run) = invsync_consumers::start(
            consumer("webhook"),
            Arc::new(sink),
            ledger.clone(),
            stop.clone(),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        tasks.spawn(async move {
            run.await;
            ("webhook consumer", Ok(()))
        });
        tracing::info!(webhook.url = %webhook.url, "external-IMS webhook connector enabled");
        pipeline.consumers.push(handle);
    }
    Ok(pipeline)
}

/// Runs `tick` every `period` until stop; a failing tick is logged and retried on the
/// next one.
async fn every<F, Fut>(
    period: Duration,
    stop: watch::Receiver<bool>,
    mut tick: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = stopped(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = interval.tick() => tick().await,
            _ = &mut stopped => return Ok(()),
        }
    }
}

async fn expire(ledger: Arc<dyn Ledger>) {
    match ledger.expire_due().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(reservations = n, "released expired reservations"),
        Err(e) => tracing::warn!(error = %e, "expiry sweep failed; will retry"),
    }
}

async fn purge(ledger: Arc<dyn Ledger>, retention: Duration) {
    match ledger.purge_events(retention).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(events = n, "purged events past retention"),
        Err(e) => tracing::warn!(error = %e, "retention purge failed; will retry"),
    }
}

/// Gauges that no request path updates.
async fn gauges(ledger: Arc<dyn Ledger>) {
    // On SQLite a committed event is in the log (the embedded bus) at once; on
    // PostgreSQL it waits in the outbox until the relay moves it.
    match ledger.outbox().await {
        Ok((pending, age)) => {
            metrics::gauge!("invsync_outbox_backlog").set(pending as f64);
            metrics::gauge!("invsync_outbox_oldest_age_seconds").set(age);
        }
        Err(e) => tracing::warn!(error = %e, "cannot measure the outbox"),
    }
    // The embedded bus is up whenever the ledger is.
    let up = ledger.ping().await.is_ok();
    metrics::gauge!("invsync_bus_up").set(if up { 1.0 } else { 0.0 });
    match ledger.shortages().await {
        Ok(n) => metrics::gauge!("invsync_stock_shortages").set(n as f64),
        Err(e) => tracing::warn!(error = %e, "cannot count shortages"),
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// SIGTERM and SIGINT (Ctrl-C), registered eagerly.
struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    #[cfg(unix)]
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> std::io::Result<Self> {
        Ok(Self {})
    }

    #[cfg(unix)]
    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn recv(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
