//! `invsync-faults`: the fault suite's long run, with its report written to a file.
//!
//! ```text
//! invsync-faults --invsync target/release/invsync --rounds 5 --report docs/faults/REPORT.md
//! ```
//! Exits 0 when every check held, 1 when the report lists problems, 2 when the suite
//! could not run (a missing server binary, a cluster that would not start).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Runs invsync on replicated PostgreSQL and a NATS cluster under faults, and checks
/// the whole history.
#[derive(Debug, Parser)]
#[command(name = "invsync-faults", version)]
struct Args {
    /// The invsync binary to run.
    #[arg(long)]
    invsync: PathBuf,
    /// How many times each kind of fault is injected.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Quiet seconds after each fault is healed.
    #[arg(long, default_value_t = 3)]
    calm: u64,
    /// Write the Markdown report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the servers' files and logs here (a temporary directory otherwise).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut plan = invsync_faults::Plan::rounds(args.invsync, args.rounds.max(1));
    plan.workers = args.workers.max(1);
    plan.calm = Duration::from_secs(args.calm);
    plan.dir = args.dir;
    let report = match invsync_faults::run(&plan).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("invsync-faults: the suite could not run: {e:#}");
            return ExitCode::from(2);
        }
    };
    let text = report.markdown();
    println!("{text}");
    if let Some(path) = &args.report {
        if let Err(e) = std::fs::write(path, &text) {
            eprintln!("invsync-faults: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("invsync-faults: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
