//! `reserve`, `release`, `fulfil` and `reservation`.

use reqwest::Method;
use serde_json::json;

use crate::args::{FulfilArgs, ReleaseArgs, ReservationArgs, ReserveArgs};
use crate::client::{enc, lines_json, show, Client, ClientError};
use crate::output::{list, print};

/// `reserve`: at a store, or through a channel.
pub(crate) async fn reserve(args: ReserveArgs) -> Result<(), ClientError> {
    let ReserveArgs {
        order,
        store,
        channel,
        lines,
        ttl,
        idempotency_key,
        client,
    } = args;
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
    Ok(())
}

/// `release`: all of a reservation, or the given lines.
pub(crate) async fn release(args: ReleaseArgs) -> Result<(), ClientError> {
    let ReleaseArgs {
        reservation_id,
        lines,
        reason,
        store,
        idempotency_key,
        client,
    } = args;
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
    Ok(())
}

/// `fulfil`: all of a reservation, or the given lines.
pub(crate) async fn fulfil(args: FulfilArgs) -> Result<(), ClientError> {
    let FulfilArgs {
        reservation_id,
        lines,
        store,
        idempotency_key,
        client,
    } = args;
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
    Ok(())
}

/// `reservation ID`, or `reservation --order ORDER`.
pub(crate) async fn show(args: ReservationArgs) -> Result<(), ClientError> {
    let ReservationArgs {
        reservation_id,
        order,
        client,
    } = args;
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
    Ok(())
}
