//! The command line, declared once: every subcommand, flag and argument, with the
//! help text `--help`, the completions and the manual page are made of. What each
//! command does is in [`crate::cmd`] (client commands), [`crate::serve`], [`crate::bench`]
//! and [`crate::demo`].

use clap::{Parser, Subcommand};

use crate::client::{parse_line, ClientArgs};
use crate::config::ServeArgs;
use crate::{bench, demo};

#[derive(Debug, Parser)]
#[command(
    name = "invsync",
    version,
    about = "Inventory reservation and synchronization service",
    after_help = "Exit codes: 0 ok, 1 the server answered with an error, 2 usage, 3 server unreachable."
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server (embedded SQLite ledger by default).
    Serve(ServeArgs),
    /// Run one built-in consumer as its own process, with the same configuration as
    /// `serve` (its HTTP address defaults to 127.0.0.1:8081 and serves only the
    /// consumer's status, storefront reads, health and metrics).
    Consume(ConsumeArgs),
    /// Show stock: `stock STORE SKU`, `stock --sku SKU` or `stock --store STORE`.
    #[command(allow_negative_numbers = true)]
    Stock(StockArgs),
    /// Adjust on_hand: `adjust --store S --sku K --delta 25 --reason stock_in`.
    #[command(allow_negative_numbers = true)]
    Adjust(AdjustArgs),
    /// Reserve stock for an order: `reserve --order O-1 --store S1 --line SKU-1=2`.
    #[command(allow_negative_numbers = true)]
    Reserve(ReserveArgs),
    /// Release a reservation (all of it, or the given lines).
    #[command(allow_negative_numbers = true)]
    Release(ReleaseArgs),
    /// Fulfil a reservation (all of it, or the given lines).
    #[command(allow_negative_numbers = true)]
    Fulfil(FulfilArgs),
    /// Show a reservation by id, or an order's reservations with --order.
    Reservation(ReservationArgs),
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
    Replay(ReplayArgs),
    /// List dead letters, or `dead-letters redrive ID` to deliver one again.
    DeadLetters(DeadLettersArgs),
    /// Audit a running server: ledger levels against the log, gapless offsets, the
    /// storefront against the ledger. Exits 1 with a report when anything disagrees.
    Check(CheckArgs),
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
pub(crate) enum EventsCommand {
    /// Print the latest events (like tail(1)); with --follow, keep printing new ones.
    #[command(allow_negative_numbers = true)]
    Tail(TailArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ChannelsCommand {
    /// Every channel.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One channel.
    Show(ChannelShowArgs),
    /// Create or replace a channel from a TOML or JSON file (the body of `PUT
    /// /v1/channels/{id}`: allocation, split, locations, optional name).
    Set(ChannelSetArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum SafetyStockCommand {
    /// Set (or remove) one per-SKU safety stock of a channel at a location.
    Set(SafetyStockSetArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// Deliver a dead letter again, and wait for the outcome: exits 0 once it is
    /// delivered, 1 when the delivery failed again (with the error).
    Redrive(RedriveArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a new random token and the tokens-file entry holding its SHA-256.
    New(TokenNewArgs),
}

/// The arguments of `consume`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConsumeArgs {
    /// Which consumer this process runs: `storefront`, or a webhook endpoint's
    /// name (`webhook` for the one the `--webhook-*` flags configure).
    pub(crate) consumer: String,
    /// Share the consumer's 16 partitions with every other `consume NAME
    /// --partitioned` process on the same PostgreSQL ledger: each partition is
    /// worked by one process at a time, split evenly, and taken over within a
    /// second when its process stops or dies. Webhook endpoints only.
    #[arg(long)]
    pub(crate) partitioned: bool,
    #[command(flatten)]
    pub(crate) args: ServeArgs,
}

/// The arguments of `stock`.
#[derive(Debug, clap::Args)]
pub(crate) struct StockArgs {
    /// The store of one level (with SKU).
    pub(crate) store: Option<String>,
    /// The SKU of one level (with STORE).
    pub(crate) sku: Option<String>,
    /// Every store's level of this SKU.
    #[arg(long = "sku", conflicts_with_all = ["store", "by_store"])]
    pub(crate) by_sku: Option<String>,
    /// One store's levels, a page at a time.
    #[arg(long = "store", conflicts_with_all = ["store", "sku"])]
    pub(crate) by_store: Option<String>,
    /// Page size with --store (1 to 1,000; default 100).
    #[arg(long)]
    pub(crate) limit: Option<i64>,
    /// The cursor printed as `more: --after …` by the previous page.
    #[arg(long)]
    pub(crate) after: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `adjust`.
#[derive(Debug, clap::Args)]
pub(crate) struct AdjustArgs {
    /// The store whose stock changes.
    #[arg(long)]
    pub(crate) store: String,
    /// The SKU whose stock changes.
    #[arg(long)]
    pub(crate) sku: String,
    /// Units to add (negative: remove).
    #[arg(long, required_unless_present = "set", conflicts_with = "set")]
    pub(crate) delta: Option<i64>,
    /// An absolute count instead of a delta.
    #[arg(long)]
    pub(crate) set: Option<i64>,
    /// stock_in, stock_out, cycle_count, damage, return, correction, or sale (a
    /// till sale: a negative --delta).
    #[arg(long, default_value = "correction")]
    pub(crate) reason: String,
    /// The channel the change happened in (a till sale: `pos-S1`).
    #[arg(long)]
    pub(crate) channel: Option<String>,
    /// The external system's id of this change: a repeat is applied once.
    #[arg(long)]
    pub(crate) external_ref: Option<String>,
    /// Refuse unless the row is at this version (compare-and-set).
    #[arg(long)]
    pub(crate) if_version: Option<i64>,
    /// Makes a retry of this command apply it once.
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `reserve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReserveArgs {
    /// The order's id in the Order domain.
    #[arg(long)]
    pub(crate) order: String,
    /// The store to reserve in (or --channel).
    #[arg(long, required_unless_present = "channel", conflicts_with = "channel")]
    pub(crate) store: Option<String>,
    /// Reserve through this channel: the ledger allocates every line to its
    /// locations (or --store).
    #[arg(long)]
    pub(crate) channel: Option<String>,
    /// SKU=QUANTITY, repeatable.
    #[arg(long = "line", required = true, value_parser = parse_line)]
    pub(crate) lines: Vec<(String, i64)>,
    /// Seconds after which the reservation is released as expired.
    #[arg(long)]
    pub(crate) ttl: Option<i64>,
    /// Makes a retry reserve once (default: the order and store do).
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `release`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReleaseArgs {
    /// The reservation's id.
    pub(crate) reservation_id: String,
    /// SKU=QUANTITY to release, repeatable (default: everything held).
    #[arg(long = "line", value_parser = parse_line)]
    pub(crate) lines: Vec<(String, i64)>,
    /// order_cancelled (default), order_changed, payment_failed, customer_request
    /// or other.
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Release each --line from its allocation at this location only.
    #[arg(long, requires = "lines")]
    pub(crate) store: Option<String>,
    /// Makes a retry of this command release once.
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `fulfil`.
#[derive(Debug, clap::Args)]
pub(crate) struct FulfilArgs {
    /// The reservation's id.
    pub(crate) reservation_id: String,
    /// SKU=QUANTITY to fulfil, repeatable (default: everything held).
    #[arg(long = "line", value_parser = parse_line)]
    pub(crate) lines: Vec<(String, i64)>,
    /// Fulfil each --line from its allocation at this location (the one that
    /// shipped).
    #[arg(long, requires = "lines")]
    pub(crate) store: Option<String>,
    /// Makes a retry of this command fulfil once.
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `reservation`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReservationArgs {
    /// The reservation's id.
    #[arg(required_unless_present = "order")]
    pub(crate) reservation_id: Option<String>,
    /// Every reservation of this order instead.
    #[arg(long, conflicts_with = "reservation_id")]
    pub(crate) order: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// The consumer: storefront or webhook.
    pub(crate) name: String,
    /// Re-deliver from this offset (inclusive).
    #[arg(long, conflicts_with = "since")]
    pub(crate) from_offset: Option<i64>,
    /// Re-deliver from the first event at or after this time (RFC 3339).
    #[arg(long)]
    pub(crate) since: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `dead-letters`.
#[derive(Debug, clap::Args)]
pub(crate) struct DeadLettersArgs {
    #[command(subcommand)]
    pub(crate) command: Option<DeadLettersCommand>,
    /// Only this consumer's dead letters.
    #[arg(long)]
    pub(crate) consumer: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `check`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// How long to wait for the storefront to catch up.
    #[arg(long, default_value = "30s", value_parser = crate::config::parse_duration)]
    pub(crate) wait: std::time::Duration,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `events tail`.
#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// How many events to print (1 to 1,000).
    #[arg(short = 'n', long = "lines", alias = "limit", default_value_t = 100)]
    pub(crate) lines: i64,
    /// Print the events after this offset instead of the latest ones.
    #[arg(long, conflicts_with = "from_start")]
    pub(crate) after: Option<i64>,
    /// Print the oldest events still retained instead of the latest ones.
    #[arg(long)]
    pub(crate) from_start: bool,
    /// Then stream new events as they happen (Server-Sent Events), resuming after
    /// disconnects and, with a warning, past events purged by retention.
    #[arg(long, short)]
    pub(crate) follow: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `channels show`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChannelShowArgs {
    /// The channel's id.
    pub(crate) channel: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `channels set`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChannelSetArgs {
    /// The channel's id.
    pub(crate) channel: String,
    /// The configuration: `.json` is read as JSON, anything else as TOML.
    #[arg(long)]
    pub(crate) file: std::path::PathBuf,
    /// Apply only if the channel is at this version (0: only if it is new).
    #[arg(long)]
    pub(crate) if_version: Option<i64>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `safety-stock set`.
#[derive(Debug, clap::Args)]
pub(crate) struct SafetyStockSetArgs {
    /// The channel.
    #[arg(long)]
    pub(crate) channel: String,
    /// The location (store) of the override.
    #[arg(long)]
    pub(crate) store: String,
    /// The SKU of the override.
    #[arg(long)]
    pub(crate) sku: String,
    /// The units the channel may not reserve there.
    #[arg(long, required_unless_present = "remove", conflicts_with = "remove")]
    pub(crate) units: Option<i64>,
    /// Remove the override: the location's default applies again.
    #[arg(long)]
    pub(crate) remove: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `dead-letters redrive`.
#[derive(Debug, clap::Args)]
pub(crate) struct RedriveArgs {
    /// The dead letter's id (the first column of `dead-letters`).
    pub(crate) id: String,
    /// How long to wait for the delivery's outcome.
    #[arg(long, default_value = "30s", value_parser = crate::config::parse_duration)]
    pub(crate) wait: std::time::Duration,
    /// Send it even when the endpoint already received a newer version of the
    /// same stock row (refused otherwise, exit 1, saying so).
    #[arg(long)]
    pub(crate) force: bool,
}

/// The arguments of `token new`.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenNewArgs {
    /// The client's name (shown in logs).
    #[arg(long)]
    pub(crate) name: String,
    /// read, reserve, adjust or admin; repeatable.
    #[arg(long = "scope", required = true, value_parser = ["read", "reserve", "adjust", "admin"])]
    pub(crate) scopes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

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
