//! The `invsync` binary's library: the command line, configuration, and each
//! subcommand. `main` only parses arguments and calls [`run`].
//!
//! # Layout
//!
//! - [`config`]: `serve`'s typed configuration (flags > env > file > defaults).
//! - [`datadir`]: the data directory's permissions and its one-process lock.
//! - [`serve`]: the server's tasks under one supervisor, with graceful shutdown.
//! - [`client`]: client commands over the HTTP API.
//! - [`tokens`]: the tokens file and `token new`.
//! - [`bench`]: the load generator.
//! - [`demo`]: `invsync demo`, a shop around the embedded server.
#![forbid(unsafe_code)]

pub mod bench;
pub mod check;
pub mod client;
pub mod config;
pub mod datadir;
pub mod demo;
pub mod serve;
pub mod tokens;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{channel_file, lines_json, parse_line, show, Client, ClientArgs, ClientError};
use crate::config::{Config, LogFormat, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "invsync",
    version,
    about = "Inventory reservation and synchronization service",
    after_help = "Exit codes: 0 ok, 1 the server answered with an error, 2 usage, 3 server unreachable."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (embedded SQLite ledger by default).
    Serve(ServeArgs),
    /// Run one built-in consumer as its own process, with the same configuration as
    /// `serve` (its HTTP address defaults to 127.0.0.1:8081 and serves only the
    /// consumer's status, storefront reads, health and metrics).
    Consume {
        /// Which consumer this process runs: `storefront`, or a webhook endpoint's
        /// name (`webhook` for the one the `--webhook-*` flags configure).
        consumer: String,
        /// Share the consumer's 16 partitions with every other `consume NAME
        /// --partitioned` process on the same PostgreSQL ledger: each partition is
        /// worked by one process at a time, split evenly, and taken over within a
        /// second when its process stops or dies. Webhook endpoints only.
        #[arg(long)]
        partitioned: bool,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Show stock: `stock STORE SKU`, `stock --sku SKU` or `stock --store STORE`.
    #[command(allow_negative_numbers = true)]
    Stock {
        /// The store of one level (with SKU).
        store: Option<String>,
        /// The SKU of one level (with STORE).
        sku: Option<String>,
        /// Every store's level of this SKU.
        #[arg(long = "sku", conflicts_with_all = ["store", "by_store"])]
        by_sku: Option<String>,
        /// One store's levels, a page at a time.
        #[arg(long = "store", conflicts_with_all = ["store", "sku"])]
        by_store: Option<String>,
        /// Page size with --store (1 to 1,000; default 100).
        #[arg(long)]
        limit: Option<i64>,
        /// The cursor printed as `more: --after …` by the previous page.
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Adjust on_hand: `adjust --store S --sku K --delta 25 --reason stock_in`.
    #[command(allow_negative_numbers = true)]
    Adjust {
        /// The store whose stock changes.
        #[arg(long)]
        store: String,
        /// The SKU whose stock changes.
        #[arg(long)]
        sku: String,
        /// Units to add (negative: remove).
        #[arg(long, required_unless_present = "set", conflicts_with = "set")]
        delta: Option<i64>,
        /// An absolute count instead of a delta.
        #[arg(long)]
        set: Option<i64>,
        /// stock_in, stock_out, cycle_count, damage, return, correction, or sale (a
        /// till sale: a negative --delta).
        #[arg(long, default_value = "correction")]
        reason: String,
        /// The channel the change happened in (a till sale: `pos-S1`).
        #[arg(long)]
        channel: Option<String>,
        /// The external system's id of this change: a repeat is applied once.
        #[arg(long)]
        external_ref: Option<String>,
        /// Refuse unless the row is at this version (compare-and-set).
        #[arg(long)]
        if_version: Option<i64>,
        /// Makes a retry of this command apply it once.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reserve stock for an order: `reserve --order O-1 --store S1 --line SKU-1=2`.
    #[command(allow_negative_numbers = true)]
    Reserve {
        /// The order's id in the Order domain.
        #[arg(long)]
        order: String,
        /// The store to reserve in (or --channel).
        #[arg(long, required_unless_present = "channel", conflicts_with = "channel")]
        store: Option<String>,
        /// Reserve through this channel: the ledger allocates every line to its
        /// locations (or --store).
        #[arg(long)]
        channel: Option<String>,
        /// SKU=QUANTITY, repeatable.
        #[arg(long = "line", required = true, value_parser = parse_line)]
        lines: Vec<(String, i64)>,
        /// Seconds after which the reservation is released as expired.
        #[arg(long)]
        ttl: Option<i64>,
        /// Makes a retry reserve once (default: the order and store do).
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Release a reservation (all of it, or the given lines).
    #[command(allow_negative_numbers = true)]
    Release {
        /// The reservation's id.
        reservation_id: String,
        /// SKU=QUANTITY to release, repeatable (default: everything held).
        #[arg(long = "line", value_parser = parse_line)]
        lines: Vec<(String, i64)>,
        /// order_cancelled (default), order_changed, payment_failed, customer_request
        /// or other.
        #[arg(long)]
        reason: Option<String>,
        /// Release each --line from its allocation at this location only.
        #[arg(long, requires = "lines")]
        store: Option<String>,
        /// Makes a retry of this command release once.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Fulfil a reservation (all of it, or the given lines).
    #[command(allow_negative_numbers = true)]
    Fulfil {
        /// The reservation's id.
        reservation_id: String,
        /// SKU=QUANTITY to fulfil, repeatable (default: everything held).
        #[arg(long = "line", value_parser = parse_line)]
        lines: Vec<(String, i64)>,
        /// Fulfil each --line from its allocation at this location (the one that
        /// shipped).
        #[arg(long, requires = "lines")]
        store: Option<String>,
        /// Makes a retry of this command fulfil once.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a reservation by id, or an order's reservations with --order.
    Reservation {
        /// The reservation's id.
        #[arg(required_unless_present = "order")]
        reservation_id: Option<String>,
        /// Every reservation of this order instead.
        #[arg(long, conflicts_with = "reservation_id")]
        order: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show and configure channels: `channels list`, `channels show ID`, `channels
    /// set ID --file online.toml`.
    Channels {
        #[command(subcommand)]
        command: ChannelsCommand,
    },
    /// Per-SKU safety stock of a channel: `safety-stock set --channel online --store
    /// S1 --sku SKU-1 --units 5` (or --remove).
    SafetyStock {
        #[command(subcommand)]
        command: SafetyStockCommand,
    },
    /// Read the event log.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Show every consumer's position, lag, dead letters and sync latency.
    Consumers {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Rewind a consumer: `replay webhook --from-offset 120`, `--since
    /// 2026-11-26T10:00:00Z`, or with neither from the oldest event retained. The
    /// storefront rebuilds its whole view from a snapshot whatever the position.
    #[command(allow_negative_numbers = true)]
    Replay {
        /// The consumer: storefront or webhook.
        name: String,
        /// Re-deliver from this offset (inclusive).
        #[arg(long, conflicts_with = "since")]
        from_offset: Option<i64>,
        /// Re-deliver from the first event at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List dead letters, or `dead-letters redrive ID` to deliver one again.
    DeadLetters {
        #[command(subcommand)]
        command: Option<DeadLettersCommand>,
        /// Only this consumer's dead letters.
        #[arg(long)]
        consumer: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Audit a running server: ledger levels against the log, gapless offsets, the
    /// storefront against the ledger. Exits 1 with a report when anything disagrees.
    Check {
        /// How long to wait for the storefront to catch up.
        #[arg(long, default_value = "30s", value_parser = crate::config::parse_duration)]
        wait: std::time::Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Drive load against a server and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Run a demo: the embedded server, a simulated shop sending it orders,
    /// cancellations, expiries, till sales, deliveries and counts, and a flaky webhook
    /// receiver; prints the console's URL.
    Demo(demo::DemoArgs),
    /// Print a shell completion script: `invsync completions bash >
    /// /etc/bash_completion.d/invsync` (zsh: into a `$fpath` directory as `_invsync`;
    /// fish: `~/.config/fish/completions/invsync.fish`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from this command line: `invsync man >
    /// /usr/local/share/man/man1/invsync.1`.
    Man,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print the latest events (like tail(1)); with --follow, keep printing new ones.
    #[command(allow_negative_numbers = true)]
    Tail {
        /// How many events to print (1 to 1,000).
        #[arg(short = 'n', long = "lines", alias = "limit", default_value_t = 100)]
        lines: i64,
        /// Print the events after this offset instead of the latest ones.
        #[arg(long, conflicts_with = "from_start")]
        after: Option<i64>,
        /// Print the oldest events still retained instead of the latest ones.
        #[arg(long)]
        from_start: bool,
        /// Then stream new events as they happen (Server-Sent Events), resuming after
        /// disconnects and, with a warning, past events purged by retention.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ChannelsCommand {
    /// Every channel.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One channel.
    Show {
        /// The channel's id.
        channel: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create or replace a channel from a TOML or JSON file (the body of `PUT
    /// /v1/channels/{id}`: allocation, split, locations, optional name).
    Set {
        /// The channel's id.
        channel: String,
        /// The configuration: `.json` is read as JSON, anything else as TOML.
        #[arg(long)]
        file: std::path::PathBuf,
        /// Apply only if the channel is at this version (0: only if it is new).
        #[arg(long)]
        if_version: Option<i64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum SafetyStockCommand {
    /// Set (or remove) one per-SKU safety stock of a channel at a location.
    Set {
        /// The channel.
        #[arg(long)]
        channel: String,
        /// The location (store) of the override.
        #[arg(long)]
        store: String,
        /// The SKU of the override.
        #[arg(long)]
        sku: String,
        /// The units the channel may not reserve there.
        #[arg(long, required_unless_present = "remove", conflicts_with = "remove")]
        units: Option<i64>,
        /// Remove the override: the location's default applies again.
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// Deliver a dead letter again, and wait for the outcome: exits 0 once it is
    /// delivered, 1 when the delivery failed again (with the error).
    Redrive {
        /// The dead letter's id (the first column of `dead-letters`).
        id: String,
        /// How long to wait for the delivery's outcome.
        #[arg(long, default_value = "30s", value_parser = crate::config::parse_duration)]
        wait: std::time::Duration,
        /// Send it even when the endpoint already received a newer version of the
        /// same stock row (refused otherwise, exit 1, saying so).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new random token and the tokens-file entry holding its SHA-256.
    New {
        /// The client's name (shown in logs).
        #[arg(long)]
        name: String,
        /// read, reserve, adjust or admin; repeatable.
        #[arg(long = "scope", required = true, value_parser = ["read", "reserve", "adjust", "admin"])]
        scopes: Vec<String>,
    },
}

/// Runs the parsed command line. Exit codes (README, "Exit codes"): 0 success; 1 the
/// server answered with an error (or `check`/`bench` found a problem); 2 a bad flag or
/// configuration value; 3 the server could not be reached.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("invsync: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => run_server(&runtime, args, None),
        Command::Demo(args) => {
            // Quiet by default: the console shows what the logs would (RUST_LOG
            // overrides).
            let _logging = init_logging_with(LogFormat::Text, "error");
            match runtime.block_on(demo::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("invsync demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Completions { shell } => {
            // Generated into memory (writing a Vec cannot fail), then written out,
            // so a closed pipe is an error message, not a panic.
            let mut script = Vec::new();
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "invsync", &mut script);
            print_generated("the completion script", &script)
        }
        Command::Man => {
            let mut page = Vec::new();
            let man = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            match man.render(&mut page) {
                Ok(()) => print_generated("the manual page", &page),
                Err(e) => {
                    eprintln!("invsync: rendering the manual page: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Consume {
            consumer,
            partitioned,
            args,
        } => run_server(
            &runtime,
            args,
            Some(serve::Consume {
                name: consumer,
                partitioned,
            }),
        ),
        Command::Token {
            command: TokenCommand::New { name, scopes },
        } => {
            let (token, entry) = tokens::new_token(&name, &scopes);
            let text = format!("token: {token}\n\n# add to the tokens file:\n{entry}\n");
            print_generated("the token", text.as_bytes())
        }
        Command::Bench(args) => {
            let json = args.json;
            match runtime.block_on(bench::run(args)) {
                Ok(summary) => {
                    let text = if json {
                        serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n"
                    } else {
                        bench::report(&summary)
                    };
                    let written = print_generated("the bench summary", text.as_bytes());
                    if summary.oversell_check.starts_with("ok") {
                        written
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("invsync bench: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        command => {
            let json = command_wants_json(&command);
            match runtime.block_on(client_command(command)) {
                Ok(()) => ExitCode::SUCCESS,
                // The reader of stdout went away (`| head`): nothing left to say.
                Err(ClientError::Output(e)) if reader_gone(&e) => ExitCode::SUCCESS,
                Err(e) => {
                    // With --json the problem document goes to stdout too, whole.
                    if let (true, ClientError::Problem { body, .. }) = (json, &e) {
                        let _ = emit(&serde_json::to_string_pretty(body).unwrap_or_default());
                    }
                    eprintln!("invsync: {}", e.report());
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}

/// Writes text made whole in memory (a script, a page, a summary) to stdout. As for
/// client commands, a reader that went away ends it quietly; any other failed write
/// is a message and exit 1, never a panic.
fn print_generated(what: &str, text: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if reader_gone(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("invsync: writing {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether a client command was given `--json`.
fn command_wants_json(command: &Command) -> bool {
    match command {
        Command::Stock { client, .. }
        | Command::Adjust { client, .. }
        | Command::Reserve { client, .. }
        | Command::Release { client, .. }
        | Command::Fulfil { client, .. }
        | Command::Reservation { client, .. }
        | Command::Consumers { client }
        | Command::Replay { client, .. }
        | Command::DeadLetters { client, .. }
        | Command::Check { client, .. }
        | Command::Channels {
            command:
                ChannelsCommand::List { client }
                | ChannelsCommand::Show { client, .. }
                | ChannelsCommand::Set { client, .. },
        }
        | Command::SafetyStock {
            command: SafetyStockCommand::Set { client, .. },
        }
        | Command::Events {
            command: EventsCommand::Tail { client, .. },
        } => client.json,
        Command::Serve(_)
        | Command::Consume { .. }
        | Command::Token { .. }
        | Command::Bench(_)
        | Command::Completions { .. }
        | Command::Demo(_)
        | Command::Man => false,
    }
}

/// Sets up logging to stderr. Lines are written by a background thread, so a slow
/// stderr (a pipe, a terminal) never stalls a request that logs its access line; the
/// returned guard flushes what is queued when dropped, so hold it until the process
/// ends.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    init_logging_with(format, "info")
}

/// Logging to stderr at `default` (a filter), unless `RUST_LOG` says otherwise.
fn init_logging_with(
    format: LogFormat,
    default: &str,
) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Not lossy: when the queue is full, a writer waits rather than drop a line.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    // Dependencies that log through the `log` crate (tokio-postgres) reach the same
    // subscriber. (A second call, in tests that run several commands, is harmless.)
    let _ = tracing_log::LogTracer::init();
    guard
}

fn print(
    client: &Client,
    value: &Value,
    human: impl FnOnce(&Value) -> String,
) -> Result<(), ClientError> {
    if client.json_output() {
        emit(&serde_json::to_string_pretty(value).unwrap_or_default())
    } else {
        emit(&human(value))
    }
}

/// Whether a write to stdout failed because its reader went away (`| head -3`), which
/// ends a command quietly, as it does Unix filters.
fn reader_gone(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::BrokenPipe
}

/// Resolves once stdout is a pipe whose reader has gone (`poll` reports an error on
/// it; a terminal or a file never does), looked at five times a second.
async fn reader_went_away() {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let stdout = std::io::stdout();
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tick.tick().await;
        let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
        if poll(&mut fds, Some(&now)).is_ok()
            && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP)
        {
            return;
        }
    }
}

/// Writes `text` and a newline to stdout; unlike `println!`, a failed write (a reader
/// that went away) is an error to return, not a panic.
fn emit(text: &str) -> Result<(), ClientError> {
    writeln!(std::io::stdout().lock(), "{text}").map_err(ClientError::Output)
}

fn list(value: &Value, item: fn(&Value) -> String) -> String {
    let items: Vec<String> = value["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(item)
        .collect();
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join("\n")
    }
}

/// Percent-encodes a value for a URL path segment or query.
pub(crate) fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn client_command(command: Command) -> Result<(), ClientError> {
    match command {
        Command::Stock {
            store,
            sku,
            by_sku,
            by_store,
            limit,
            after,
            client,
        } => {
            let c = Client::new(client);
            match (store, sku, by_sku, by_store) {
                (Some(store), Some(sku), None, None) => {
                    let (_, v) = c
                        .call(
                            Method::GET,
                            &format!("/v1/stock/{}/{}", enc(&store), enc(&sku)),
                            None,
                        )
                        .await?;
                    print(&c, &v, show::stock)?;
                }
                (None, None, Some(sku), None) => {
                    let (_, v) = c
                        .call(Method::GET, &format!("/v1/stock?sku={}", enc(&sku)), None)
                        .await?;
                    print(&c, &v, |v| list(v, show::stock))?;
                }
                (None, None, None, Some(store)) => {
                    let mut path = format!("/v1/stock?store_id={}", enc(&store));
                    if let Some(limit) = limit {
                        path.push_str(&format!("&limit={limit}"));
                    }
                    if let Some(after) = after {
                        path.push_str(&format!("&after={}", enc(&after)));
                    }
                    let (_, v) = c.call(Method::GET, &path, None).await?;
                    print(&c, &v, |v| {
                        let mut out = list(v, show::stock);
                        if let Some(next) = v["next"].as_str() {
                            out.push_str(&format!("\nmore: --after {next}"));
                        }
                        out
                    })?;
                }
                _ => {
                    return Err(ClientError::Usage(
                        "give STORE SKU, --sku SKU or --store STORE".into(),
                    ))
                }
            }
        }
        Command::Adjust {
            store,
            sku,
            delta,
            set,
            reason,
            channel,
            external_ref,
            if_version,
            idempotency_key,
            client,
        } => {
            let c = Client::new(client);
            let mut body = json!({"store_id": store, "sku": sku, "reason": reason});
            if let Some(channel) = channel {
                body["channel"] = json!(channel);
            }
            match (delta, set) {
                (Some(d), None) => body["delta"] = json!(d),
                (None, Some(s)) => body["set_on_hand"] = json!(s),
                _ => {
                    return Err(ClientError::Usage(
                        "give exactly one of --delta and --set".into(),
                    ))
                }
            }
            if let Some(r) = external_ref {
                body["external_ref"] = json!(r);
            }
            if let Some(v) = if_version {
                body["if_version"] = json!(v);
            }
            let (_, v) = c
                .call_with_key(Method::POST, "/v1/adjustments", Some(body), idempotency_key)
                .await?;
            print(&c, &v, show::adjustment)?;
        }
        Command::Reserve {
            order,
            store,
            channel,
            lines,
            ttl,
            idempotency_key,
            client,
        } => {
            let c = Client::new(client);
            let mut body = json!({"order_id": order, "lines": lines_json(&lines, None)});
            match (store, channel) {
                (Some(store), None) => body["store_id"] = json!(store),
                (None, Some(channel)) => body["channel"] = json!(channel),
                _ => {
                    return Err(ClientError::Usage(
                        "give exactly one of --store and --channel".into(),
                    ))
                }
            }
            if let Some(ttl) = ttl {
                body["ttl_seconds"] = json!(ttl);
            }
            let (_, v) = c
                .call_with_key(
                    Method::POST,
                    "/v1/reservations",
                    Some(body),
                    idempotency_key,
                )
                .await?;
            print(&c, &v, show::reservation)?;
        }
        Command::Release {
            reservation_id,
            lines,
            reason,
            store,
            idempotency_key,
            client,
        } => {
            let c = Client::new(client);
            let mut body = json!({});
            if !lines.is_empty() {
                body["lines"] = lines_json(&lines, store.as_deref());
            }
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            let path = format!("/v1/reservations/{}/release", enc(&reservation_id));
            let (_, v) = c
                .call_with_key(Method::POST, &path, Some(body), idempotency_key)
                .await?;
            print(&c, &v, show::reservation)?;
        }
        Command::Fulfil {
            reservation_id,
            lines,
            store,
            idempotency_key,
            client,
        } => {
            let c = Client::new(client);
            let body = if lines.is_empty() {
                json!({})
            } else {
                json!({"lines": lines_json(&lines, store.as_deref())})
            };
            let path = format!("/v1/reservations/{}/fulfil", enc(&reservation_id));
            let (_, v) = c
                .call_with_key(Method::POST, &path, Some(body), idempotency_key)
                .await?;
            print(&c, &v, show::reservation)?;
        }
        Command::Reservation {
            reservation_id,
            order,
            client,
        } => {
            let c = Client::new(client);
            match (reservation_id, order) {
                (Some(id), None) => {
                    let (_, v) = c
                        .call(Method::GET, &format!("/v1/reservations/{}", enc(&id)), None)
                        .await?;
                    print(&c, &v, show::reservation)?;
                }
                (None, Some(order)) => {
                    let (_, v) = c
                        .call(
                            Method::GET,
                            &format!("/v1/reservations?order_id={}", enc(&order)),
                            None,
                        )
                        .await?;
                    print(&c, &v, |v| list(v, show::reservation))?;
                }
                _ => {
                    return Err(ClientError::Usage(
                        "give a reservation id or --order".into(),
                    ))
                }
            }
        }
        Command::Events {
            command:
                EventsCommand::Tail {
                    lines,
                    after,
                    from_start,
                    follow: following,
                    client,
                },
        } => {
            let c = Client::new(client);
            let last = tail(&c, lines, after, from_start).await?;
            if following {
                // The follower writes only when an event comes: without this, a
                // reader gone between events (`| head -3`) would go unnoticed.
                return tokio::select! {
                    followed = follow(c, last) => followed,
                    () = reader_went_away() => Ok(()),
                };
            }
        }
        Command::Channels { command } => match command {
            ChannelsCommand::List { client } => {
                let c = Client::new(client);
                let (_, v) = c.call(Method::GET, "/v1/channels", None).await?;
                print(&c, &v, |v| list(v, show::channel))?;
            }
            ChannelsCommand::Show { channel, client } => {
                let c = Client::new(client);
                let path = format!("/v1/channels/{}", enc(&channel));
                let (_, v) = c.call(Method::GET, &path, None).await?;
                print(&c, &v, show::channel)?;
            }
            ChannelsCommand::Set {
                channel,
                file,
                if_version,
                client,
            } => {
                let mut body = channel_file(&file)?;
                if let Some(v) = if_version {
                    body["if_version"] = json!(v);
                }
                let c = Client::new(client);
                let path = format!("/v1/channels/{}", enc(&channel));
                let (_, v) = c.call(Method::PUT, &path, Some(body)).await?;
                print(&c, &v, show::channel)?;
            }
        },
        Command::SafetyStock {
            command:
                SafetyStockCommand::Set {
                    channel,
                    store,
                    sku,
                    units,
                    remove,
                    client,
                },
        } => {
            let units = if remove { None } else { units };
            let body = json!({"items": [{"store_id": store, "sku": sku, "safety_stock": units}]});
            let c = Client::new(client);
            let path = format!("/v1/channels/{}/safety-stock", enc(&channel));
            let (_, v) = c.call(Method::PUT, &path, Some(body)).await?;
            print(&c, &v, |v| format!("{} override(s) changed", v["applied"]))?;
        }
        Command::Consumers { client } => {
            let c = Client::new(client);
            let (_, v) = c.call(Method::GET, "/v1/consumers", None).await?;
            print(&c, &v, |v| list(v, show::consumer))?;
        }
        Command::Replay {
            name,
            from_offset,
            since,
            client,
        } => {
            let c = Client::new(client);
            let path = format!("/v1/consumers/{}/replay", enc(&name));
            let from_oldest = from_offset.is_none() && since.is_none();
            let body = match (from_offset, since) {
                (Some(offset), None) => json!({"from_offset": offset}),
                (None, Some(since)) => json!({"since": since}),
                (None, None) => json!({"from_offset": 1}),
                (Some(_), Some(_)) => {
                    return Err(ClientError::Usage(
                        "give --from-offset or --since, not both".into(),
                    ))
                }
            };
            match c.call(Method::POST, &path, Some(body.clone())).await {
                // With neither flag: from the oldest event still retained.
                Err(ClientError::Problem { body: gone, .. })
                    if from_oldest && gone["code"] == "gone" =>
                {
                    let oldest = gone["oldest_offset"].clone();
                    c.call(Method::POST, &path, Some(json!({"from_offset": oldest})))
                        .await?;
                }
                other => {
                    other?;
                }
            }
            if c.json_output() {
                emit(&json!({"accepted": true}).to_string())?;
            } else {
                emit(&format!("replay of {name} accepted"))?;
            }
        }
        Command::DeadLetters {
            command,
            consumer,
            client,
        } => {
            let c = Client::new(client);
            match command {
                Some(DeadLettersCommand::Redrive { id, wait, force }) => {
                    redrive(&c, &id, wait, force).await?;
                }
                None => {
                    let path = match consumer {
                        Some(name) => format!("/v1/dead-letters?consumer={}", enc(&name)),
                        None => "/v1/dead-letters".to_owned(),
                    };
                    let (_, v) = c.call(Method::GET, &path, None).await?;
                    print(&c, &v, |v| list(v, show::dead_letter))?;
                }
            }
        }
        Command::Check { wait, client } => {
            let c = Client::new(client);
            let report = check::run(&c, wait).await?;
            let text = if c.json_output() {
                let doc = json!({"ok": report.problems.is_empty(), "problems": report.problems, "notes": report.notes});
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            } else {
                let mut lines = report.notes.clone();
                if report.problems.is_empty() {
                    lines.push("check: OK".to_owned());
                }
                lines.extend(report.problems.iter().map(|p| format!("PROBLEM: {p}")));
                lines.join("\n")
            };
            // Problems decide the exit code even when the report could not be shown.
            let shown = emit(&text);
            if !report.problems.is_empty() {
                return Err(ClientError::Failed(format!(
                    "check: {} problem(s) found",
                    report.problems.len()
                )));
            }
            shown?;
        }
        Command::Serve(_)
        | Command::Consume { .. }
        | Command::Token { .. }
        | Command::Bench(_)
        | Command::Completions { .. }
        | Command::Demo(_)
        | Command::Man => return Err(ClientError::Usage("not a client command".into())),
    }
    Ok(())
}

/// `serve`, or `consume NAME` (the same process skeleton with one consumer).
fn run_server(
    runtime: &tokio::runtime::Runtime,
    args: ServeArgs,
    consumer: Option<serve::Consume>,
) -> ExitCode {
    let default_listen = if consumer.is_some() {
        "127.0.0.1:8081"
    } else {
        "127.0.0.1:8080"
    };
    let config = match Config::resolve_with(args, default_listen).and_then(|c| {
        if let Some(consume) = &consumer {
            serve::check_consumer(&c, consume)?;
        }
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invsync: {e}");
            return ExitCode::from(2);
        }
    };
    let _logging = init_logging(config.log_format);
    let run = async move {
        match consumer {
            None => serve::run(config).await,
            Some(which) => serve::consume(config, which).await,
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("invsync: {e:#}");
            let text = e.to_string();
            if ["listen:", "tokens:", "webhook-url:", "data-dir:"]
                .iter()
                .any(|key| text.starts_with(key))
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `events tail --follow`: reads the SSE stream and prints each event; on a dropped
/// connection it reconnects with `Last-Event-ID`, so nothing is missed or repeated.
async fn follow(c: Client, after: i64) -> Result<(), ClientError> {
    use futures::StreamExt;
    let mut last = after;
    loop {
        let response = c
            .get_stream(&format!("/v1/events/stream?after={after}"))
            .header("Last-Event-ID", last.to_string())
            .send()
            .await;
        let response = match response {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                let status = r.status();
                let body: Value = r.json().await.unwrap_or_default();
                if let Some(oldest) = body["oldest_offset"]
                    .as_i64()
                    .filter(|_| body["code"] == "gone")
                {
                    last = skip_purged(last, oldest);
                    continue;
                }
                let detail = body["detail"].as_str().unwrap_or("no detail").to_owned();
                return Err(ClientError::Problem {
                    status,
                    detail,
                    body,
                });
            }
            Err(e) => {
                eprintln!("invsync: stream lost ({e}); reconnecting");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut buffer = String::new();
        let mut bytes = response.bytes_stream();
        while let Some(chunk) = bytes.next().await {
            let Ok(chunk) = chunk else { break };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let message: String = buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, "message", String::new());
                for line in message.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse::<i64>().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = if v.trim() == "gone" {
                            "gone"
                        } else {
                            "inventory"
                        };
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if kind == "gone" {
                    let oldest = data.trim().parse::<i64>().unwrap_or(last + 1);
                    last = skip_purged(last, oldest);
                    break; // reconnect from there
                }
                let Some(id) = id else { continue };
                last = id;
                let event: Value = serde_json::from_str(&data).unwrap_or_default();
                if c.json_output() {
                    emit(&json!({"offset": id, "event": event}).to_string())?;
                } else {
                    emit(&show::event(&json!(id), &event))?;
                }
            }
        }
        eprintln!("invsync: stream ended; reconnecting after offset {last}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The stream fell behind retention: say what was lost and go on from the oldest
/// event retained (a tail follows the log; it cannot bring purged events back).
fn skip_purged(last: i64, oldest: i64) -> i64 {
    eprintln!(
        "invsync: events {}..={} were purged by retention before they were read; going on from {oldest}",
        last + 1,
        oldest - 1
    );
    oldest - 1
}

/// `events tail`: prints a page of the log and returns the offset printed last. The
/// latest `lines` events by default; `--after N` the ones after N; `--from-start` the
/// oldest retained. A position purged by retention moves to the oldest retained.
async fn tail(
    c: &Client,
    lines: i64,
    after: Option<i64>,
    from_start: bool,
) -> Result<i64, ClientError> {
    if !(1..=1000).contains(&lines) {
        return Err(ClientError::Usage(format!(
            "--lines must be from 1 to 1000, got {lines}"
        )));
    }
    if let Some(a) = after.filter(|a| *a < 0) {
        return Err(ClientError::Usage(format!(
            "--after must be 0 or more, got {a}"
        )));
    }
    let page = |after: i64| async move {
        match c
            .call(
                Method::GET,
                &format!("/v1/events?after={after}&limit={lines}"),
                None,
            )
            .await
        {
            Err(ClientError::Problem { body, .. }) if body["code"] == "gone" => {
                let oldest = body["oldest_offset"].as_i64().unwrap_or(1);
                eprintln!("invsync: events up to offset {} were purged by retention; starting at {oldest}", oldest - 1);
                c.call(
                    Method::GET,
                    &format!("/v1/events?after={}&limit={lines}", oldest - 1),
                    None,
                )
                .await
                .map(|(_, v)| v)
            }
            other => other.map(|(_, v)| v),
        }
    };
    let start = match (after, from_start) {
        (Some(a), _) => a,
        (None, true) => 0,
        (None, false) => {
            let head = page(0).await?["head_offset"].as_i64().unwrap_or(0);
            (head - lines).max(0)
        }
    };
    let v = page(start).await?;
    let last = v["next_offset"].as_i64().unwrap_or(start);
    print(c, &v, |v| {
        let printed: Vec<String> = v["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| show::event(&e["offset"], &e["event"]))
            .collect();
        if printed.is_empty() {
            format!("(no events after offset {start})")
        } else {
            printed.join("\n")
        }
    })?;
    Ok(last)
}

/// `dead-letters redrive ID`: asks for the redelivery (202), then watches the dead
/// letter until the delivery's outcome is known: gone means delivered; a new attempt
/// still there means it failed again (exit 1 with its error).
async fn redrive(
    c: &Client,
    id: &str,
    wait: std::time::Duration,
    force: bool,
) -> Result<(), ClientError> {
    let find = || async {
        let (_, v) = c.call(Method::GET, "/v1/dead-letters", None).await?;
        Ok::<_, ClientError>(
            v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["id"] == id)
                .cloned(),
        )
    };
    let before = find().await?.and_then(|d| d["attempts"].as_i64());
    let force = if force { "?force=true" } else { "" };
    c.call(
        Method::POST,
        &format!("/v1/dead-letters/{}/redrive{force}", enc(id)),
        None,
    )
    .await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match find().await? {
            None => {
                if c.json_output() {
                    emit(&json!({"id": id, "delivered": true}).to_string())?;
                } else {
                    emit(&format!("dead letter {id} delivered"))?;
                }
                return Ok(());
            }
            Some(d) if d["attempts"].as_i64() > before => {
                if c.json_output() {
                    let _ =
                        emit(&json!({"id": id, "delivered": false, "dead_letter": d}).to_string());
                }
                return Err(ClientError::Failed(format!(
                    "redrive of {id} failed: {}",
                    d["last_error"].as_str().unwrap_or("no error recorded")
                )));
            }
            Some(_) if tokio::time::Instant::now() >= deadline => {
                return Err(ClientError::Failed(format!(
                    "redrive of {id}: no outcome after {}",
                    humantime::format_duration(wait)
                )));
            }
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every flag and argument of every command says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "invsync", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }

    #[test]
    fn negative_numbers_reach_our_own_validation() {
        let parsed = Cli::try_parse_from(["invsync", "events", "tail", "--after", "-5"]);
        assert!(parsed.is_ok(), "{:?}", parsed.err().map(|e| e.to_string()));
        let parsed = Cli::try_parse_from([
            "invsync", "adjust", "--store", "S", "--sku", "K", "--delta", "-3",
        ]);
        assert!(parsed.is_ok());
    }

    #[test]
    fn a_url_without_scheme_is_a_usage_error_naming_the_fix() {
        let err = Cli::try_parse_from(["invsync", "consumers", "--url", "localhost:8080"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("http://localhost:8080"), "{err}");
    }
}
