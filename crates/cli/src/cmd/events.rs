//! `events tail` (and `--follow`): the event log.

use reqwest::Method;
use serde_json::{json, Value};

use crate::args::{EventsCommand, TailArgs};
use crate::client::{show, Client, ClientError};
use crate::output::{emit, print, reader_went_away};

/// `events tail`, then with `--follow` the stream until the reader goes away.
pub(crate) async fn run(command: EventsCommand) -> Result<(), ClientError> {
    let EventsCommand::Tail(TailArgs {
        lines,
        after,
        from_start,
        follow: following,
        client,
    }) = command;
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
    Ok(())
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
