//! The `invsync` binary's library: the command line, configuration, and each
//! subcommand. `main` only parses arguments and calls [`run`].
//!
//! # Layout
//!
//! - `args`: the command line, declared once (clap).
//! - `cmd`: the client commands, one file per group; [`client`] is their HTTP
//!   client and its errors, `output` what they print.
//! - [`config`]: `serve`'s typed configuration (flags > env > file > defaults).
//! - [`datadir`]: the data directory's permissions and its one-process lock.
//! - [`serve`]: the server's tasks under one supervisor, with graceful shutdown.
//! - [`check`]: the audit behind `invsync check`.
//! - [`tokens`]: the tokens file and `token new`.
//! - [`mod@bench`]: the load generator.
//! - [`demo`]: `invsync demo`, a shop around the embedded server.
#![forbid(unsafe_code)]

mod args;
pub mod bench;
pub mod check;
pub mod client;
mod cmd;
pub mod config;
pub mod datadir;
pub mod demo;
mod output;
pub mod serve;
pub mod tokens;

use std::io::IsTerminal;
use std::process::ExitCode;

pub use crate::args::Cli;
use crate::args::{Command, ConsumeArgs, TokenCommand, TokenNewArgs};
use crate::client::ClientError;
use crate::config::{Config, LogFormat, ServeArgs};
use crate::output::{emit, print_generated, reader_gone};

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
        Command::Consume(ConsumeArgs {
            consumer,
            partitioned,
            args,
        }) => run_server(
            &runtime,
            args,
            Some(serve::Consume {
                name: consumer,
                partitioned,
            }),
        ),
        Command::Token {
            command: TokenCommand::New(TokenNewArgs { name, scopes }),
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
            let json = cmd::client_args(&command).is_some_and(|c| c.json);
            match runtime.block_on(cmd::run(command)) {
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
            if e.chain().any(|cause| cause.is::<config::ConfigError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
