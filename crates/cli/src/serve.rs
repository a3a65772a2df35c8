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
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, "invsync listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: finishing in-flight requests");
        let _ = stop_tx.send(true);
    });

    let http = tokio::spawn(invsync_api::serve(
        listener,
        AppState::new(ledger.clone(), access),
        stopped(stop_rx.clone()),
    ));
    let sweeper = tokio::spawn(expire_loop(ledger.clone(), stop_rx.clone()));

    // The supervisor: whichever task ends first, say which and why, then stop the rest.
    let outcome = tokio::select! {
        r = http => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("the HTTP server stopped: {e}")),
            Err(e) => Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
        },
        r = sweeper => Err(anyhow::anyhow!("the expiry sweeper stopped unexpectedly: {r:?}")),
    };
    ledger.shutdown().await;
    tracing::info!("invsync stopped");
    outcome
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

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
