//! `invsync serve`: opens the ledger, then runs the HTTP server and the expiry sweeper
//! under one supervisor until SIGTERM/Ctrl-C, then drains and exits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use invsync_api::{Access, AppState};
use invsync_ledger::{Ledger, SqliteConfig, SqliteLedger, SystemClock};
use tokio::sync::watch;

use crate::config::{Config, Database};

/// How often the sweeper releases reservations whose TTL ran out. A reservation is
/// released at most this long after its `expires_at`.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(config: Config) -> anyhow::Result<()> {
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

    let mut http = tokio::spawn(invsync_api::serve(
        listener,
        AppState::new(ledger.clone(), access),
        stopped(stop_rx.clone()),
    ));
    let mut sweeper = tokio::spawn(expire_loop(ledger.clone(), stop_rx.clone()));

    // The supervisor: a task that ends before shutdown was requested is a failure;
    // say which and why, then stop the others. After a request, every task ends.
    let (failure, rest) = tokio::select! {
        r = &mut http => (match r {
            Ok(Ok(())) if *stop_rx.borrow() => None,
            Ok(Ok(())) => Some("the HTTP server stopped".to_owned()),
            Ok(Err(e)) => Some(format!("the HTTP server failed: {e}")),
            Err(e) => Some(format!("the HTTP server task failed: {e}")),
        }, sweeper),
        r = &mut sweeper => (match r {
            Ok(()) if *stop_rx.borrow() => None,
            other => Some(format!("the expiry sweeper stopped: {other:?}")),
        }, tokio::spawn(async move { let _ = http.await; })),
    };
    if let Some(why) = &failure {
        tracing::error!(reason = %why, "a task stopped; shutting down");
    }
    let _ = stop_tx.send(true);
    let _ = rest.await;
    ledger.shutdown().await;
    tracing::info!("invsync stopped");
    match failure {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(why)),
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn expire_loop(ledger: Arc<dyn Ledger>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match ledger.expire_due().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(reservations = n, "released expired reservations"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed; will retry"),
        }
    }
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
