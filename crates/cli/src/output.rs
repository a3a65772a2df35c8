//! What commands write to stdout, and what happens when nobody reads it: a reader
//! that went away (`| head -3`) ends a command quietly, as it does Unix filters; any
//! other failed write is an error, never a panic.

use std::io::Write;
use std::process::ExitCode;

use serde_json::Value;

use crate::client::{Client, ClientError};

/// Writes text made whole in memory (a script, a page, a summary) to stdout. As for
/// client commands, a reader that went away ends it quietly; any other failed write
/// is a message and exit 1, never a panic.
pub(crate) fn print_generated(what: &str, text: &[u8]) -> ExitCode {
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

/// An answer: the JSON document with `--json`, else `human`'s rendering of it.
pub(crate) fn print(
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
pub(crate) fn reader_gone(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::BrokenPipe
}

/// Resolves once stdout is a pipe whose reader has gone (`poll` reports an error on
/// it; a terminal or a file never does), looked at five times a second.
pub(crate) async fn reader_went_away() {
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
pub(crate) fn emit(text: &str) -> Result<(), ClientError> {
    writeln!(std::io::stdout().lock(), "{text}").map_err(ClientError::Output)
}

pub(crate) fn list(value: &Value, item: fn(&Value) -> String) -> String {
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
