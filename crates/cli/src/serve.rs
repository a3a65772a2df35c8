//! `invsync serve`: opens the ledger (and connects the bus), then runs the HTTP
//! server, the built-in consumers (storefront projection, webhook connector), the
//! relay to NATS when that is the bus, the expiry sweeper, the retention janitor and
//! the gauges under one supervisor until SIGTERM/Ctrl-C, then drains and exits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::setting;
use invsync_api::{Access, AppState, Pipeline};
use invsync_bus::{BusRelay, NatsBus, NatsConfig, NatsSource};
use invsync_consumers::group::Member;
use invsync_consumers::storefront::{Storefront, StorefrontReader};
use invsync_consumers::webhook::{Webhook, WebhookConfig};
use invsync_consumers::{ConsumerConfig, EventSource, LedgerSource, Partition, PartitionSource};
use invsync_core::event::PARTITIONS;
use invsync_ledger::{
    Ledger, PgConfig, PgLedger, SqliteConfig, SqliteLedger, SystemClock, Term, Turn,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Bus, Config, Database};

/// How often the sweeper releases reservations whose TTL ran out. A reservation is
/// released at most this long after its `expires_at`.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

/// How often the gauges no request updates are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// How often each consumer's current lag is held against the SLA.
const SLA_GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// How often `invsync_bus_up` is checked (besides every reconnection).
const BUS_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

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

/// The expiry sweeper, the retention janitor and the gauges.
fn spawn_housekeeping(
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

type Tasks = JoinSet<(&'static str, Result<(), String>)>;

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
fn source(
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

/// Starts the built-in consumers: the storefront projection always, the webhook
/// connector when configured. Each keeps its state in its own file in the data dir.
///
/// On NATS each instance's storefront has its own durable consumer (its own view),
/// while the webhook connector is one durable consumer shared by all instances and
/// works only on the instance that leads the relay: two instances pulling from one
/// durable would split a SKU's events between them and break its order.
fn start_consumers(
    config: &Config,
    ledger: &Arc<dyn Ledger>,
    bus: Option<&NatsBus>,
    role: &Role,
    stop: &watch::Receiver<bool>,
    tasks: &mut Tasks,
) -> anyhow::Result<Pipeline> {
    let consumer = |name: &str| {
        let mut c = ConsumerConfig::new(name, config.data_dir.join(format!("{name}.db")));
        c.sla = config.sla;
        c
    };
    let mut pipeline = Pipeline {
        sla: config.sla,
        ..Pipeline::default()
    };
    if role.runs("storefront") {
        let (storefront, run) = invsync_consumers::start(
            consumer("storefront"),
            Arc::new(Storefront),
            ledger.clone(),
            source(ledger, bus, || {
                Ok(format!("storefront-{}", instance_id(&config.data_dir)?))
            })?,
            stop.clone(),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        tasks.spawn(async move {
            run.await;
            ("storefront consumer", Ok(()))
        });
        pipeline.consumers.push(storefront.clone());
        pipeline.storefront = Some((
            StorefrontReader::new(storefront.reader().clone()),
            storefront,
        ));
    }
    for webhook in config.webhooks.iter().filter(|w| role.runs(&w.name)) {
        let sink: Arc<dyn invsync_consumers::Sink> = Arc::new(
            Webhook::new(WebhookConfig {
                url: webhook.url.clone(),
                secret: webhook.secret.clone(),
                previous_secret: webhook.previous_secret.clone(),
                timeout: webhook.timeout,
                events: webhook.events.clone(),
            })
            .map_err(|e| anyhow::anyhow!("{}: {e}", webhook.name))?,
        );
        let endpoint = |name: &str| {
            let mut c = consumer(name);
            c.retry.cap = webhook.retry_cap;
            c.retry.dead_after = webhook.dead_after;
            c.park_after = webhook.park_after;
            c
        };
        let mut run = |c: ConsumerConfig, source: Arc<dyn EventSource>| {
            let (handle, run) =
                invsync_consumers::start(c, sink.clone(), ledger.clone(), source, stop.clone())
                    .map_err(|e| anyhow::anyhow!(e))?;
            tasks.spawn(async move {
                run.await;
                ("webhook consumer", Ok(()))
            });
            pipeline.consumers.push(handle.clone());
            anyhow::Ok(handle)
        };
        if role.partitioned() {
            // One runtime per partition, each working while this process holds the
            // partition. They read the ledger's log, the one stream without holes (a
            // bus's partition subjects would leave holes in the offsets that the
            // runtime would have to read from the log anyway), and are sent only
            // their own partition's envelopes.
            let mut members = Vec::new();
            for index in 0..PARTITIONS {
                let name = format!("{}.p{index:02}", webhook.name);
                let mut c = endpoint(&name);
                let (active, working) = watch::channel(None);
                c.active = Some(Turn::new(working));
                c.partition = Some(Partition {
                    index,
                    of: PARTITIONS,
                });
                c.shared = Some(Arc::new(LedgerPosition {
                    ledger: ledger.clone(),
                    cursor: format!("consumer:{name}"),
                    // A group's first start resumes where the endpoint's one
                    // connector got to.
                    fallback: Some(format!("consumer:{}", webhook.name)),
                }));
                let source = PartitionSource {
                    log: ledger.clone(),
                    partition: index,
                };
                let handle = run(c, Arc::new(source))?;
                members.push(Member { handle, active });
            }
            let (group, ledger, stop) = (webhook.name.clone(), ledger.clone(), stop.clone());
            tasks.spawn(async move {
                share_partitions(group, ledger, members, stop).await;
                ("consumer group", Ok(()))
            });
            tracing::info!(consumer.name = %webhook.name, webhook.url = %webhook.url, partitions = PARTITIONS, "external-IMS webhook connector sharing its partitions with the group");
            continue;
        }
        let mut webhook_config = endpoint(&webhook.name);
        // On a shared ledger an endpoint is one consumer for all instances: it works
        // on the instance that leads, from the one position recorded in the ledger. A
        // `consume NAME` process is the one connector by the operator's choice.
        if matches!(config.database, Database::Postgres(_)) {
            if *role == Role::Server {
                webhook_config.active = Some(ledger.leadership());
            }
            webhook_config.shared = Some(Arc::new(LedgerPosition {
                ledger: ledger.clone(),
                cursor: format!("consumer:{}", webhook.name),
                fallback: None,
            }));
        }
        run(
            webhook_config,
            source(ledger, bus, || Ok(webhook.name.clone()))?,
        )?;
        tracing::info!(consumer.name = %webhook.name, webhook.url = %webhook.url, "external-IMS webhook connector enabled");
    }
    Ok(pipeline)
}

/// A shared consumer's position, kept as a named cursor in the ledger's `meta` table
/// (bookkeeping beside the relay's cursor; no stock or event is written).
struct LedgerPosition {
    ledger: Arc<dyn Ledger>,
    cursor: String,
    /// Read while `cursor` was never recorded.
    fallback: Option<String>,
}

impl std::fmt::Debug for LedgerPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LedgerPosition({})", self.cursor)
    }
}

#[async_trait::async_trait]
impl invsync_consumers::SharedPosition for LedgerPosition {
    async fn load(&self) -> Result<i64, invsync_ledger::LedgerError> {
        let recorded = self.ledger.cursor(&self.cursor).await?;
        match &self.fallback {
            Some(fallback) if recorded == 0 => self.ledger.cursor(fallback).await,
            _ => Ok(recorded),
        }
    }

    async fn advance(
        &self,
        position: i64,
        term: Option<&Term>,
    ) -> Result<(), invsync_ledger::LedgerError> {
        self.ledger
            .advance_cursor(&self.cursor, position, term)
            .await
    }

    async fn set(
        &self,
        position: i64,
        term: Option<&Term>,
    ) -> Result<(), invsync_ledger::LedgerError> {
        self.ledger.set_cursor(&self.cursor, position, term).await
    }
}

/// Joins the group that shares `group`'s partitions (again and again while the
/// ledger cannot be reached) and holds this process's share until stop.
async fn share_partitions(
    group: String,
    ledger: Arc<dyn Ledger>,
    members: Vec<Member>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match ledger.join_group(&group).await {
            Ok(claims) => {
                return invsync_consumers::group::share(group, claims, members, stop).await
            }
            Err(error) => {
                tracing::warn!(consumer.name = %group, %error, "cannot join the consumer group yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
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

/// Whether each consumer breaches the SLA *now*: its current lag (the age of the
/// oldest event it has not applied, measured at this moment, so a consumer stuck on
/// a delivery is seen) against `--sla`. The counter `invsync_sla_breaches_total` only
/// moves when a late event is finally applied.
async fn sla_gauges(handles: &[invsync_consumers::ConsumerHandle], sla: Duration) {
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
