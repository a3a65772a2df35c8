//! `stock` and `adjust`: the stock rows.

use reqwest::Method;
use serde_json::json;

use crate::args::{AdjustArgs, StockArgs};
use crate::client::{enc, show, Client, ClientError};
use crate::output::{list, print};

/// `stock STORE SKU`, `stock --sku SKU` or `stock --store STORE` (a page at a time).
pub(crate) async fn show(args: StockArgs) -> Result<(), ClientError> {
    let StockArgs {
        store,
        sku,
        by_sku,
        by_store,
        limit,
        after,
        client,
    } = args;
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
    Ok(())
}

/// `adjust`: a delta or an absolute count of on-hand stock.
pub(crate) async fn adjust(args: AdjustArgs) -> Result<(), ClientError> {
    let AdjustArgs {
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
    } = args;
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
    Ok(())
}
