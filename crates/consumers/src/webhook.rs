//! The external-IMS connector: one signed POST per event (`operations.md`).

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Failure, Incoming, Sink};

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    /// HMAC-SHA256 key of `X-Invsync-Signature`.
    pub secret: String,
    /// Per request; a timeout is a transient failure.
    pub timeout: Duration,
}

pub struct Webhook {
    http: reqwest::Client,
    config: WebhookConfig,
}

impl Webhook {
    pub fn new(config: WebhookConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            // A redirected POST becomes a body-less GET (301/302/303) whose 200 would
            // count as delivered, or re-sends the signed event to whatever host the
            // redirect names (307/308). Never follow: a 3xx is a permanent failure.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(Self { http, config })
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`: what `X-Invsync-Signature` carries.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait]
impl Sink for Webhook {
    fn delivers(&self) -> bool {
        true
    }

    async fn deliver(&self, event: &Incoming) -> Result<(), Failure> {
        let body = event.envelope.as_bytes().to_vec();
        let signature = signature(&self.config.secret, &body);
        let answer = self
            .http
            .post(&self.config.url)
            .header("content-type", "application/cloudevents+json")
            .header("x-invsync-event-id", event.event.event_id.to_string())
            .header("x-invsync-signature", signature)
            .body(body)
            .send()
            .await;
        let response = match answer {
            Ok(r) => r,
            // Connection refused, reset, timeout: the receiver may come back.
            Err(e) => return Err(Failure::Transient(format!("request failed: {e}"))),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_redirection() {
            let to = response
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
                .unwrap_or_else(|| "no Location".to_owned());
            return Err(Failure::Permanent(format!(
                "HTTP {}: redirect to {to} not followed (events are never re-sent to another URL); configure the final URL",
                status.as_u16()
            )));
        }
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(500).collect();
        let error = format!("HTTP {}: {body}", status.as_u16());
        if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
            Err(Failure::Transient(error))
        } else {
            Err(Failure::Permanent(error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
