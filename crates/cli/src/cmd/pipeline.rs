//! `consumers`, `replay` and `dead-letters`: the delivery pipeline.

use reqwest::Method;
use serde_json::json;

use crate::args::{DeadLettersArgs, DeadLettersCommand, RedriveArgs, ReplayArgs};
use crate::client::{enc, show, Client, ClientArgs, ClientError};
use crate::output::{emit, list, print};

/// `consumers`: every consumer's position, lag, dead letters and latency.
pub(crate) async fn consumers(client: ClientArgs) -> Result<(), ClientError> {
    let c = Client::new(client);
    let (_, v) = c.call(Method::GET, "/v1/consumers", None).await?;
    print(&c, &v, |v| list(v, show::consumer))
}

/// `replay NAME`: rewinds a consumer.
pub(crate) async fn replay(args: ReplayArgs) -> Result<(), ClientError> {
    let ReplayArgs {
        name,
        from_offset,
        since,
        client,
    } = args;
    let c = Client::new(client);
    let path = format!("/v1/consumers/{}/replay", enc(&name));
    let from_oldest = from_offset.is_none() && since.is_none();
    let body = match (from_offset, since) {
        (Some(offset), None) => json!({"from_offset": offset}),
        (None, Some(since)) => json!({"since": since}),
        (None, None) => json!({"from_offset": 1}),
        (Some(_), Some(_)) => {
            return Err(ClientError::Usage(
                "give --from-offset or --since, not both".into(),
            ))
        }
    };
    match c.call(Method::POST, &path, Some(body.clone())).await {
        // With neither flag: from the oldest event still retained.
        Err(ClientError::Problem { body: gone, .. }) if from_oldest && gone["code"] == "gone" => {
            let oldest = gone["oldest_offset"].clone();
            c.call(Method::POST, &path, Some(json!({"from_offset": oldest})))
                .await?;
        }
        other => {
            other?;
        }
    }
    if c.json_output() {
        emit(&json!({"accepted": true}).to_string())?;
    } else {
        emit(&format!("replay of {name} accepted"))?;
    }
    Ok(())
}

/// `dead-letters`, or `dead-letters redrive ID`.
pub(crate) async fn dead_letters(args: DeadLettersArgs) -> Result<(), ClientError> {
    let DeadLettersArgs {
        command,
        consumer,
        client,
    } = args;
    let c = Client::new(client);
    match command {
        Some(DeadLettersCommand::Redrive(RedriveArgs { id, wait, force })) => {
            redrive(&c, &id, wait, force).await?;
        }
        None => {
            let path = match consumer {
                Some(name) => format!("/v1/dead-letters?consumer={}", enc(&name)),
                None => "/v1/dead-letters".to_owned(),
            };
            let (_, v) = c.call(Method::GET, &path, None).await?;
            print(&c, &v, |v| list(v, show::dead_letter))?;
        }
    }
    Ok(())
}

/// `dead-letters redrive ID`: asks for the redelivery (202), then watches the dead
/// letter until the delivery's outcome is known: gone means delivered; a new attempt
/// still there means it failed again (exit 1 with its error).
async fn redrive(
    c: &Client,
    id: &str,
    wait: std::time::Duration,
    force: bool,
) -> Result<(), ClientError> {
    let find = || async {
        let (_, v) = c.call(Method::GET, "/v1/dead-letters", None).await?;
        Ok::<_, ClientError>(
            v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["id"] == id)
                .cloned(),
        )
    };
    let before = find().await?.and_then(|d| d["attempts"].as_i64());
    let force = if force { "?force=true" } else { "" };
    c.call(
        Method::POST,
        &format!("/v1/dead-letters/{}/redrive{force}", enc(id)),
        None,
    )
    .await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match find().await? {
            None => {
                if c.json_output() {
                    emit(&json!({"id": id, "delivered": true}).to_string())?;
                } else {
                    emit(&format!("dead letter {id} delivered"))?;
                }
                return Ok(());
            }
            Some(d) if d["attempts"].as_i64() > before => {
                if c.json_output() {
                    let _ =
                        emit(&json!({"id": id, "delivered": false, "dead_letter": d}).to_string());
                }
                return Err(ClientError::Failed(format!(
                    "redrive of {id} failed: {}",
                    d["last_error"].as_str().unwrap_or("no error recorded")
                )));
            }
            Some(_) if tokio::time::Instant::now() >= deadline => {
                return Err(ClientError::Failed(format!(
                    "redrive of {id}: no outcome after {}",
                    humantime::format_duration(wait)
                )));
            }
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
