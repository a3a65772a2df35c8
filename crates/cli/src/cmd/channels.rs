//! `channels` and `safety-stock`: channel configuration.

use reqwest::Method;
use serde_json::json;

use crate::args::{
    ChannelSetArgs, ChannelShowArgs, ChannelsCommand, SafetyStockCommand, SafetyStockSetArgs,
};
use crate::client::{channel_file, enc, show, Client, ClientError};
use crate::output::{list, print};

/// `channels list`, `channels show ID`, `channels set ID --file F`.
pub(crate) async fn channels(command: ChannelsCommand) -> Result<(), ClientError> {
    match command {
        ChannelsCommand::List { client } => {
            let c = Client::new(client);
            let (_, v) = c.call(Method::GET, "/v1/channels", None).await?;
            print(&c, &v, |v| list(v, show::channel))
        }
        ChannelsCommand::Show(ChannelShowArgs { channel, client }) => {
            let c = Client::new(client);
            let path = format!("/v1/channels/{}", enc(&channel));
            let (_, v) = c.call(Method::GET, &path, None).await?;
            print(&c, &v, show::channel)
        }
        ChannelsCommand::Set(ChannelSetArgs {
            channel,
            file,
            if_version,
            client,
        }) => {
            let mut body = channel_file(&file)?;
            if let Some(v) = if_version {
                body["if_version"] = json!(v);
            }
            let c = Client::new(client);
            let path = format!("/v1/channels/{}", enc(&channel));
            let (_, v) = c.call(Method::PUT, &path, Some(body)).await?;
            print(&c, &v, show::channel)
        }
    }
}

/// `safety-stock set`: one per-SKU override of a channel (or its removal).
pub(crate) async fn safety_stock(command: SafetyStockCommand) -> Result<(), ClientError> {
    let SafetyStockCommand::Set(SafetyStockSetArgs {
        channel,
        store,
        sku,
        units,
        remove,
        client,
    }) = command;
    let units = if remove { None } else { units };
    let body = json!({"items": [{"store_id": store, "sku": sku, "safety_stock": units}]});
    let c = Client::new(client);
    let path = format!("/v1/channels/{}/safety-stock", enc(&channel));
    let (_, v) = c.call(Method::PUT, &path, Some(body)).await?;
    print(&c, &v, |v| format!("{} override(s) changed", v["applied"]))
}
