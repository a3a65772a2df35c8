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
#![forbid(unsafe_code)]

pub mod bench;
pub mod check;
pub mod client;
pub mod config;
pub mod datadir;
pub mod serve;
pub mod tokens;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{lines_json, parse_line, show, Client, ClientArgs, ClientError};
use crate::config::{Config, LogFormat, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "invsync",
    version,
    about = "Inventory reservation and synchronization service"
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
        #[arg(value_enum)]
        consumer: serve::Builtin,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Show stock: `stock STORE SKU`, `stock --sku SKU` or `stock --store STORE`.
    Stock {
        store: Option<String>,
        sku: Option<String>,
        #[arg(long = "sku", conflicts_with_all = ["store", "by_store"])]
        by_sku: Option<String>,
        #[arg(long = "store", conflicts_with_all = ["store", "sku"])]
        by_store: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Adjust on_hand: `adjust --store S --sku K --delta 25 --reason stock_in`.
    Adjust {
        #[arg(long)]
        store: String,
        #[arg(long)]
        sku: String,
        #[arg(
            long,
            allow_hyphen_values = true,
            required_unless_present = "set",
            conflicts_with = "set"
        )]
        delta: Option<i64>,
        /// An absolute count instead of a delta.
        #[arg(long)]
        set: Option<i64>,
        #[arg(long, default_value = "correction")]
        reason: String,
        #[arg(long)]
        external_ref: Option<String>,
        #[arg(long)]
        if_version: Option<i64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reserve stock for an order: `reserve --order O-1 --store S1 --line SKU-1=2`.
    Reserve {
        #[arg(long)]
        order: String,
        #[arg(long)]
        store: String,
        /// SKU=QUANTITY, repeatable.
        #[arg(long = "line", required = true, value_parser = parse_line)]
        lines: Vec<(String, i64)>,
        #[arg(long)]
        ttl: Option<i64>,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Release a reservation (all of it, or the given lines).
    Release {
        reservation_id: String,
        #[arg(long = "line", value_parser = parse_line)]
        lines: Vec<(String, i64)>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Fulfil a reservation (all of it, or the given lines).
    Fulfil {
        reservation_id: String,
        #[arg(long = "line", value_parser = parse_line)]
        lines: Vec<(String, i64)>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a reservation by id, or an order's reservations with --order.
    Reservation {
        #[arg(required_unless_present = "order")]
        reservation_id: Option<String>,
        #[arg(long, conflicts_with = "reservation_id")]
        order: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
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
    /// Rewind a consumer: `replay webhook --from-offset 120` or `--since 2026-11-26T10:00:00Z`.
    Replay {
        name: String,
        #[arg(long, conflicts_with = "since", required_unless_present = "since")]
        from_offset: Option<i64>,
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List dead letters, or `dead-letters redrive ID` to deliver one again.
    DeadLetters {
        #[command(subcommand)]
        command: Option<DeadLettersCommand>,
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
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print events after an offset; with --follow, keep printing new ones.
    Tail {
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Stream new events as they happen (Server-Sent Events), resuming after
        /// disconnects.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// Deliver a dead letter again.
    Redrive { id: String },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new random token and the tokens-file entry holding its SHA-256.
    New {
        #[arg(long)]
        name: String,
        /// read, reserve, adjust or admin; repeatable.
        #[arg(long = "scope", required = true, value_parser = ["read", "reserve", "adjust", "admin"])]
        scopes: Vec<String>,
    },
}

/// Runs the parsed command line; the exit code follows `operations.md`: 0 on success,
/// 2 for a bad flag or configuration value, 1 for any other failure.
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
        Command::Consume { consumer, args } => run_server(&runtime, args, Some(consumer)),
        Command::Token {
            command: TokenCommand::New { name, scopes },
        } => {
            let (token, entry) = tokens::new_token(&name, &scopes);
            println!("token: {token}\n\n# add to the tokens file:\n{entry}");
            ExitCode::SUCCESS
        }
        Command::Bench(args) => {
            let json = args.json;
            match runtime.block_on(bench::run(args)) {
                Ok(summary) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&summary).unwrap_or_default()
                        );
                    } else {
                        bench::print(&summary);
                    }
                    if summary.oversell_check.starts_with("ok") {
                        ExitCode::SUCCESS
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
        command => match runtime.block_on(client_command(command)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(ClientError::Usage(msg)) => {
                eprintln!("invsync: {msg}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("invsync: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn print(client: &Client, value: &Value, human: impl FnOnce(&Value) -> String) {
    if client.json_output() {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", human(value));
    }
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
                    print(&c, &v, show::stock);
                }
                (None, None, Some(sku), None) => {
                    let (_, v) = c
                        .call(Method::GET, &format!("/v1/stock?sku={}", enc(&sku)), None)
                        .await?;
                    print(&c, &v, |v| list(v, show::stock));
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
                    });
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
            external_ref,
            if_version,
            client,
        } => {
            let c = Client::new(client);
            let mut body = json!({"store_id": store, "sku": sku, "reason": reason});
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
            let (_, v) = c.call(Method::POST, "/v1/adjustments", Some(body)).await?;
            print(&c, &v, show::adjustment);
        }
        Command::Reserve {
            order,
            store,
            lines,
            ttl,
            idempotency_key,
            client,
        } => {
            let c = Client::new(client);
            let mut body =
                json!({"order_id": order, "store_id": store, "lines": lines_json(&lines)});
            if let Some(ttl) = ttl {
                body["ttl_seconds"] = json!(ttl);
            }
            if idempotency_key.is_some() {
                return call_with_key(&c, body, idempotency_key).await;
            }
            let (_, v) = c.call(Method::POST, "/v1/reservations", Some(body)).await?;
            print(&c, &v, show::reservation);
        }
        Command::Release {
            reservation_id,
            lines,
            reason,
            client,
        } => {
            let c = Client::new(client);
            let mut body = json!({});
            if !lines.is_empty() {
                body["lines"] = lines_json(&lines);
            }
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            let path = format!("/v1/reservations/{}/release", enc(&reservation_id));
            let (_, v) = c.call(Method::POST, &path, Some(body)).await?;
            print(&c, &v, show::reservation);
        }
        Command::Fulfil {
            reservation_id,
            lines,
            client,
        } => {
            let c = Client::new(client);
            let body = if lines.is_empty() {
                json!({})
            } else {
                json!({"lines": lines_json(&lines)})
            };
            let path = format!("/v1/reservations/{}/fulfil", enc(&reservation_id));
            let (_, v) = c.call(Method::POST, &path, Some(body)).await?;
            print(&c, &v, show::reservation);
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
                    print(&c, &v, show::reservation);
                }
                (None, Some(order)) => {
                    let (_, v) = c
                        .call(
                            Method::GET,
                            &format!("/v1/reservations?order_id={}", enc(&order)),
                            None,
                        )
                        .await?;
                    print(&c, &v, |v| list(v, show::reservation));
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
                    after,
                    follow: true,
                    client,
                    ..
                },
        } => return follow(Client::new(client), after).await,
        Command::Consumers { client } => {
            let c = Client::new(client);
            let (_, v) = c.call(Method::GET, "/v1/consumers", None).await?;
            print(&c, &v, |v| list(v, show::consumer));
        }
        Command::Replay {
            name,
            from_offset,
            since,
            client,
        } => {
            let c = Client::new(client);
            let body = match (from_offset, since) {
                (Some(offset), None) => json!({"from_offset": offset}),
                (None, Some(since)) => json!({"since": since}),
                _ => return Err(ClientError::Usage("give --from-offset or --since".into())),
            };
            c.call(
                Method::POST,
                &format!("/v1/consumers/{}/replay", enc(&name)),
                Some(body),
            )
            .await?;
            if c.json_output() {
                println!("{}", json!({"accepted": true}));
            } else {
                println!("replay of {name} accepted");
            }
        }
        Command::DeadLetters {
            command,
            consumer,
            client,
        } => {
            let c = Client::new(client);
            match command {
                Some(DeadLettersCommand::Redrive { id }) => {
                    c.call(
                        Method::POST,
                        &format!("/v1/dead-letters/{}/redrive", enc(&id)),
                        None,
                    )
                    .await?;
                    if c.json_output() {
                        println!("{}", json!({"accepted": true}));
                    } else {
                        println!("redrive of {id} accepted");
                    }
                }
                None => {
                    let path = match consumer {
                        Some(name) => format!("/v1/dead-letters?consumer={}", enc(&name)),
                        None => "/v1/dead-letters".to_owned(),
                    };
                    let (_, v) = c.call(Method::GET, &path, None).await?;
                    print(&c, &v, |v| list(v, show::dead_letter));
                }
            }
        }
        Command::Check { wait, client } => {
            let c = Client::new(client);
            let report = check::run(&c, wait).await?;
            for note in &report.notes {
                println!("{note}");
            }
            if report.problems.is_empty() {
                println!("check: OK");
            } else {
                for p in &report.problems {
                    println!("PROBLEM: {p}");
                }
                return Err(ClientError::Failed(format!(
                    "check: {} problem(s) found",
                    report.problems.len()
                )));
            }
        }
        Command::Events {
            command:
                EventsCommand::Tail {
                    after,
                    limit,
                    client,
                    follow: false,
                },
        } => {
            let c = Client::new(client);
            let (_, v) = c
                .call(
                    Method::GET,
                    &format!("/v1/events?after={after}&limit={limit}"),
                    None,
                )
                .await?;
            print(&c, &v, |v| {
                let lines: Vec<String> = v["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| show::event(&e["offset"], &e["event"]))
                    .collect();
                if lines.is_empty() {
                    format!("(no events after offset {after})")
                } else {
                    lines.join("\n")
                }
            });
        }
        Command::Serve(_) | Command::Consume { .. } | Command::Token { .. } | Command::Bench(_) => {
            return Err(ClientError::Usage("not a client command".into()))
        }
    }
    Ok(())
}

/// `serve`, or `consume NAME` (the same process skeleton with one consumer).
fn run_server(
    runtime: &tokio::runtime::Runtime,
    args: ServeArgs,
    consumer: Option<serve::Builtin>,
) -> ExitCode {
    let default_listen = if consumer.is_some() {
        "127.0.0.1:8081"
    } else {
        "127.0.0.1:8080"
    };
    let config = match Config::resolve_with(args, default_listen) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invsync: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
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
                    return Err(ClientError::Failed(format!(
                        "the stream fell behind retention; oldest offset is {data}"
                    )));
                }
                let Some(id) = id else { continue };
                last = id;
                let event: Value = serde_json::from_str(&data).unwrap_or_default();
                if c.json_output() {
                    println!("{}", json!({"offset": id, "event": event}));
                } else {
                    println!("{}", show::event(&json!(id), &event));
                }
            }
        }
        eprintln!("invsync: stream ended; reconnecting after offset {last}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `reserve` with an `Idempotency-Key` header (the one client call that sends one).
async fn call_with_key(c: &Client, body: Value, key: Option<String>) -> Result<(), ClientError> {
    let (_, v) = c
        .call_with_header(
            Method::POST,
            "/v1/reservations",
            Some(body),
            key.map(|k| ("Idempotency-Key", k)),
        )
        .await?;
    print(c, &v, show::reservation);
    Ok(())
}
