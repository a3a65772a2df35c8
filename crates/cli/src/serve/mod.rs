//! `invsync serve`: opens the ledger (and connects the bus), then runs the HTTP
//! server, the built-in consumers (storefront projection, webhook connector), the
//! relay to NATS when that is the bus, the expiry sweeper, the retention janitor and
//! the gauges under one supervisor until SIGTERM/Ctrl-C, then drains and exits.

use std::time::Duration;

use anyhow::Context;

use crate::config::setting;
use invsync_api::{Access, AppState};
use invsync_bus::BusRelay;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, Database};

pub(super) type Tasks = JoinSet<(&'static str, Result<(), String>)>;

mod backends;
mod consumers;
mod housekeeping;

use backends::{connect_bus, open_ledger};
use consumers::start_consumers;
use housekeeping::{every, sla_gauges, spawn_housekeeping};

/// How often each consumer's current lag is held against the SLA.
const SLA_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// What this process is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// `invsync serve`: the API, the relay, the built-in consumers, the sweepers.
    Server,
    /// `invsync consume NAME`: one consumer (`storefront`, or a webhook endpoint's
    /// name) as its own process, with its status, storefront reads and metrics.
    Consumer(Consume),
}

/// What `invsync consume` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consume {
    /// `storefront`, or a webhook endpoint's name.
    pub name: String,
    /// Whether this process shares the consumer's partitions with others
    /// (`--partitioned`, see `invsync_consumers::group`).
    pub partitioned: bool,
}

impl Role {
    /// Whether this process runs the consumer `name`.
    fn runs(&self, name: &str) -> bool {
        match self {
            Role::Server => true,
            Role::Consumer(only) => only.name == name,
        }
    }

    fn partitioned(&self) -> bool {
        matches!(
            self,
            Role::Consumer(Consume {
                partitioned: true,
                ..
            })
        )
    }
}

/// `invsync serve`.
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_as(config, Role::Server, None).await
}

/// `invsync serve` that reports the address it listens on once it does (`invsync
/// demo` drives its own traffic there).
pub async fn run_reporting(
    config: Config,
    listening: tokio::sync::oneshot::Sender<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    run_as(config, Role::Server, Some(listening)).await
}

/// `invsync consume NAME`.
pub async fn consume(config: Config, consume: Consume) -> anyhow::Result<()> {
    check_consumer(&config, &consume).map_err(|e| anyhow::anyhow!(e))?;
    run_as(config, Role::Consumer(consume), None).await
}

/// Whether `consume NAME` names a configured consumer, and `--partitioned` one that
/// can be shared (a usage error otherwise).
pub fn check_consumer(
    config: &Config,
    consume: &Consume,
) -> Result<(), crate::config::ConfigError> {
    let name = consume.name.as_str();
    if consume.partitioned {
        if name == "storefront" {
            return Err(crate::config::bad(
                "partitioned",
                "the storefront cannot be partitioned: its view answers availability reads for every SKU, so each process keeps a whole one (run one `consume storefront` per reader instead)",
            ));
        }
        if !matches!(config.database, Database::Postgres(_)) {
            return Err(crate::config::bad(
                "partitioned",
                "processes share partitions through a PostgreSQL ledger (--database-url postgres://…); the embedded ledger belongs to one process",
            ));
        }
    }
    if name == "storefront" || config.webhooks.iter().any(|w| w.name == name) {
        return Ok(());
    }
    let known: Vec<&str> = std::iter::once("storefront")
        .chain(config.webhooks.iter().map(|w| w.name.as_str()))
        .collect();
    Err(crate::config::bad(
        "consumer",
        format!(
            "no consumer named {name:?} (configured: {}; a webhook endpoint needs --webhook-url and --webhook-secret, or a [[webhook]] table)",
            known.join(", ")
        ),
    ))
}

async fn run_as(
    config: Config,
    role: Role,
    listening: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    // Metrics first: tasks started below record from their first moment.
    invsync_api::telemetry::init();
    raise_fd_limit(config.http.max_connections);
    let access = match &config.tokens {
        Some(path) => Access::Tokens(crate::tokens::load(path).map_err(|e| setting("tokens", e))?),
        None if config.listen.ip().is_loopback() => {
            tracing::warn!("no --tokens given: accepting anonymous requests, on loopback only");
            Access::Anonymous
        }
        None => {
            return Err(setting(
                "listen",
                format!(
                    "refusing to serve {} without --tokens (anonymous access is for loopback only)",
                    config.listen
                ),
            ))
        }
    };
    // The consumers' stores live here whichever database holds the ledger. Held until
    // this function returns, after the ledger and every store are closed.
    let _data_dir = crate::datadir::claim(&config.data_dir)?;
    // A consumer process reads the ledger (snapshots, gap fills) but never leads the
    // relay: that stays with the servers.
    let ledger = open_ledger(&config, role == Role::Server).await?;
    let bus = connect_bus(&config).await?;
    // Signal handlers go in before the server says it is listening, so a SIGTERM
    // that follows the announcement always finds them.
    let signals = ShutdownSignals::install().context("installing signal handlers")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| setting("listen", format!("cannot bind {}: {e}", config.listen)))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, "invsync listening");
    if let Some(listening) = listening {
        let _ = listening.send(addr);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let signal_stop = stop_tx.clone();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutdown requested: finishing in-flight requests");
        let _ = signal_stop.send(true);
    });

    let mut tasks = Tasks::new();
    if let (Some(bus), Role::Server) = (&bus, &role) {
        let (relay, _) = BusRelay::new(bus.clone(), ledger.clone());
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            relay.run(stop).await;
            ("bus relay", Ok(()))
        });
    }
    let pipeline = start_consumers(&config, &ledger, bus.as_ref(), &role, &stop_rx, &mut tasks)?;
    let (handles, sla, s) = (pipeline.consumers.clone(), config.sla, stop_rx.clone());
    tasks.spawn(async move {
        (
            "SLA gauges",
            every(SLA_GAUGE_INTERVAL, s, || sla_gauges(&handles, sla)).await,
        )
    });
    let bus_name = if bus.is_some() { "nats" } else { "embedded" };
    let state = AppState::on_bus(ledger.clone(), access, pipeline, bus_name);
    let state_for_console = state.clone();
    let streams = state.clone();
    let mut closing = stop_rx.clone();
    tokio::spawn(async move {
        let _ = closing.wait_for(|stop| *stop).await;
        streams.close_streams();
    });
    let router = match role {
        Role::Server => invsync_api::router(state),
        Role::Consumer(_) => invsync_api::consumer_router(state),
    };
    let http = invsync_api::serve(listener, router, stopped(stop_rx.clone()), config.http);
    tasks.spawn(async move { ("HTTP server", http.await.map_err(|e| e.to_string())) });
    if role == Role::Server {
        spawn_housekeeping(
            &config,
            &ledger,
            bus.as_ref(),
            &state_for_console,
            &stop_rx,
            &mut tasks,
        );
    }
    supervise(tasks, stop_tx, stop_rx).await?;
    // Every committed event is in the log already (on both ledgers): nothing to drain.
    ledger.shutdown().await;
    tracing::info!("invsync stopped");
    Ok(())
}

/// Raises the soft limit on open files to the hard one: each connection is a file
/// descriptor, and the usual soft limit (1,024) is below the default connection cap.
/// Warns when even the hard limit cannot hold `max_connections` and the files the
/// server itself keeps open.
fn raise_fd_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
        }
    }
    let usable = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = max_connections as u64 + 256;
    if usable < needed {
        tracing::warn!(
            open_files_limit = usable,
            max_connections,
            "the open-files limit is below --max-connections + 256: lower --max-connections or raise `ulimit -n`"
        );
    }
}

/// The supervisor: a task that ends before shutdown was requested is a failure; say
/// which and why, then stop the others. After a request every task ends by itself.
async fn supervise(
    mut tasks: Tasks,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
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
    match failure {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(why)),
    }
}

pub(super) async fn stopped(mut stop: watch::Receiver<bool>) {
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
