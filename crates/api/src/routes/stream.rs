//! `GET /v1/events/stream`: the event log as Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::{Auth, ReadScope};
use crate::error::{ApiError, ApiResult};
use crate::extract::{field, ApiQuery};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    /// Stream events with offsets above this one; default: only new events.
    #[param(minimum = 0)]
    after: Option<i64>,
}

/// One SSE message per event (`id:` = offset, `event: inventory`, `data:` = the
/// envelope). A client resumes with `Last-Event-ID`, which wins over `after`. If the
/// client falls behind retention, a final `event: gone` carries the oldest offset.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", operation_id = "stream_events", params(StreamQuery,
    ("Last-Event-ID" = Option<i64>, Header, minimum = 0)),
    responses((status = 200, content_type = "text/event-stream"), (status = 410, body = crate::error::Problem)))]
pub(crate) async fn stream(
    _: Auth<ReadScope>,
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let resume = headers
        .get("last-event-id")
        .map(|v| {
            let v = field("Last-Event-ID", v.to_str())?;
            field("Last-Event-ID", v.trim().parse::<i64>())
        })
        .transpose()?;
    for (name, value) in [("Last-Event-ID", resume), ("after", q.after)] {
        if let Some(v) = value.filter(|v| *v < 0) {
            return Err(ApiError::invalid(
                name,
                format!("must be 0 or more, got {v}"),
            ));
        }
    }
    let ledger = state.ledger_arc();
    let mut head = ledger.subscribe();
    let after = match resume.or(q.after) {
        Some(after) => after,
        None => *head.borrow_and_update(),
    };
    let first = ledger.events(after, 1).await?;
    if first.purged_after(after) {
        return Err(ApiError::gone(first.oldest_offset));
    }

    let (tx, rx) = mpsc::channel(256);
    let closing = state.closing();
    tokio::spawn(async move {
        // At shutdown the task ends, which ends the response: a client holding the
        // stream open cannot hold the server open with it.
        tokio::select! {
            () = follow(ledger, head, after, tx) => {}
            () = closing => {}
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// Sends the log after `after` into `tx`, waiting for new events at the head, until
/// the client goes away or falls behind retention.
async fn follow(
    ledger: std::sync::Arc<dyn invsync_ledger::Ledger>,
    mut head: tokio::sync::watch::Receiver<i64>,
    after: i64,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut cursor = after;
    loop {
        let page = match ledger.events(cursor, 500).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "event stream cannot read the log; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if page.purged_after(cursor) {
            let gone = Event::default()
                .event("gone")
                .data(page.oldest_offset.to_string());
            let _ = tx.send(Ok(gone)).await;
            return;
        }
        if page.events.is_empty() {
            tokio::select! {
                _ = head.changed() => {}
                _ = tx.closed() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        for e in page.events {
            cursor = e.offset;
            let event = Event::default()
                .id(e.offset.to_string())
                .event("inventory")
                .data(e.envelope);
            if tx.send(Ok(event)).await.is_err() {
                return; // the client went away
            }
        }
    }
}
