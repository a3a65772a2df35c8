//! `check`: the audit of a running server, reported.

use serde_json::json;

use crate::args::CheckArgs;
use crate::check;
use crate::client::{Client, ClientError};
use crate::output::emit;

/// `check`: prints the report; its problems decide the exit code.
pub(crate) async fn run(args: CheckArgs) -> Result<(), ClientError> {
    let CheckArgs { wait, client } = args;
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
    Ok(())
}
