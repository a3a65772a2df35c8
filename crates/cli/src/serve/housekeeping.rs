//! The background tasks beside the server: the expiry sweeper, the retention
//! janitor, and the gauges.

use std::sync::Arc;
use std::time::Duration;

use invsync_api::AppState;
use invsync_bus::{BusRelay, NatsBus};
use invsync_ledger::Ledger;
use tokio::sync::watch;

use super::{stopped, Tasks};
use crate::config::Config;

/// How often the sweeper releases reservations whose TTL ran out. A reservation is
/// released at most this long after its `expires_at`.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

/// How often the gauges no request updates are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// How often `invsync_bus_up` is checked (besides every reconnection).
const BUS_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// The expiry sweeper, the retention janitor and the gauges.
pub(super) fn spawn_housekeeping(
    config: &Config,
    ledger: &Arc<dyn Ledger>,
    bus: Option<&NatsBus>,
    state: &AppState,
    stop_rx: &watch::Receiver<bool>,
    tasks: &mut Tasks,
) {
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
    let (l, s, b, st) = (ledger.clone(), stop_rx.clone(), bus.cloned(), state.clone());
    tasks.spawn(async move {
        (
            "gauges",
            every(GAUGE_INTERVAL, s, || {
                gauges(l.clone(), b.clone(), st.clone())
            })
            .await,
        )
    });
    if let Some(bus) = bus.cloned() {
        let (s, st) = (stop_rx.clone(), state.clone());
        tasks.spawn(async move { ("bus gauge", bus_gauge(bus, st, s).await) });
    }
}

/// `invsync_bus_up` for NATS: set at start, every second, and at once whenever the
/// client (re)connects, so it is right from the first second. Also where the client
/// is connected: `/readyz`'s `bus_server`, `invsync_bus_server_info{server}` and a log
/// line whenever it moves to another server of the cluster.
async fn bus_gauge(
    bus: NatsBus,
    state: AppState,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut connections = bus.connections();
    let stopped = stopped(stop);
    tokio::pin!(stopped);
    let mut server: Option<String> = None;
    loop {
        let up = bus.up().await;
        metrics::gauge!("invsync_bus_up").set(if up { 1.0 } else { 0.0 });
        let now = bus.server();
        if now != server {
            if let Some(old) = &server {
                metrics::gauge!("invsync_bus_server_info", "server" => old.clone()).set(0.0);
            }
            if let Some(new) = &now {
                metrics::gauge!("invsync_bus_server_info", "server" => new.clone()).set(1.0);
                tracing::info!(bus.server = %new, "connected to this NATS server");
            }
            state.set_bus_server(now.clone());
            server = now;
        }
        tokio::select! {
            _ = tokio::time::sleep(BUS_GAUGE_INTERVAL) => {}
            Ok(()) = connections.changed() => {}
            _ = &mut stopped => return Ok(()),
        }
    }
}

/// Runs `tick` every `period` until stop; a failing tick is logged and retried on the
/// next one.
pub(super) async fn every<F, Fut>(
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

/// Whether each consumer breaches the SLA *now*: its current lag (the age of the
/// oldest event it has not applied, measured at this moment, so a consumer stuck on
/// a delivery is seen) against `--sla`. The counter `invsync_sla_breaches_total` only
/// moves when a late event is finally applied.
pub(super) async fn sla_gauges(handles: &[invsync_consumers::ConsumerHandle], sla: Duration) {
    for handle in handles.iter().filter(|h| !h.standing_by()) {
        let status = handle.status();
        let name = handle.name().to_owned();
        metrics::gauge!("invsync_consumer_lag_seconds", "consumer" => name.clone())
            .set(status.lag_seconds);
        let breached = status.lag_seconds > sla.as_secs_f64();
        metrics::gauge!("invsync_consumer_sla_breached", "consumer" => name).set(if breached {
            1.0
        } else {
            0.0
        });
    }
}

/// `invsync_ledger_server_info{server}`: 1 for the database server the ledger reached
/// last (the primary, with several hosts in the URL), 0 for the one before.
fn ledger_server_gauge(now: Option<String>) {
    static LAST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if *last != now {
        if let Some(old) = last.take() {
            metrics::gauge!("invsync_ledger_server_info", "server" => old).set(0.0);
        }
        if let Some(new) = &now {
            metrics::gauge!("invsync_ledger_server_info", "server" => new.clone()).set(1.0);
        }
        *last = now;
    }
}

/// Gauges that no request path updates; the same figures go to the console's overview.
async fn gauges(ledger: Arc<dyn Ledger>, bus: Option<NatsBus>, state: AppState) {
    let ledger_up = ledger.ping().await.is_ok();
    metrics::gauge!("invsync_ledger_up").set(if ledger_up { 1.0 } else { 0.0 });
    ledger_server_gauge(ledger.server());
    let leads = ledger.leadership().holds();
    metrics::gauge!("invsync_relay_leader").set(if leads { 1.0 } else { 0.0 });
    // Committed but not yet on the bus: with NATS, what the log holds past the bus
    // cursor. (A committed event is in the log on both ledgers: with the embedded bus
    // the log *is* the bus, so nothing waits.)
    let unpublished = match &bus {
        None => Ok((0, 0.0)),
        Some(bus) => unpublished(ledger.as_ref(), bus).await,
    };
    let backlog = match unpublished {
        Ok((pending, age)) => {
            metrics::gauge!("invsync_outbox_backlog").set(pending as f64);
            metrics::gauge!("invsync_outbox_oldest_age_seconds").set(age);
            Some(pending)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot measure the outbox");
            None
        }
    };
    let bus_up = match &bus {
        // The embedded bus is up whenever the ledger is.
        None => {
            metrics::gauge!("invsync_bus_up").set(if ledger_up { 1.0 } else { 0.0 });
            ledger_up
        }
        Some(bus) => bus.up().await,
    };
    let shortages = match ledger.shortages().await {
        Ok(n) => {
            metrics::gauge!("invsync_stock_shortages").set(n as f64);
            Some(n)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot count shortages");
            None
        }
    };
    let lag_seconds = state
        .consumers()
        .iter()
        .filter(|c| !c.standing_by())
        .map(|c| (c.name().to_owned(), c.status().lag_seconds))
        .collect();
    state.console().observe(invsync_api::console::Observation {
        ledger_up,
        bus_up,
        backlog,
        shortages,
        head: *ledger.subscribe().borrow(),
        lag_seconds,
    });
}

/// Events in the log past the bus cursor, and the age in seconds of the oldest.
async fn unpublished(
    ledger: &dyn Ledger,
    bus: &NatsBus,
) -> Result<(i64, f64), invsync_ledger::LedgerError> {
    let cursor = ledger.cursor(&BusRelay::cursor_name(bus)).await?;
    let head = *ledger.subscribe().borrow();
    if head <= cursor {
        return Ok((0, 0.0));
    }
    let page = ledger.events(cursor, 1).await?;
    let age = page
        .events
        .first()
        .and_then(|e| invsync_core::CloudEvent::parse(e.envelope.as_bytes()).ok())
        .map_or(0.0, |e| {
            (chrono::Utc::now() - e.data.occurred_at)
                .num_milliseconds()
                .max(0) as f64
                / 1000.0
        });
    Ok((head - cursor, age))
}
