//! The external-IMS connector: one signed POST per event (`operations.md`).
//!
//! Each POST is signed twice:
//! - `X-Invsync-Signature: sha256=<hex HMAC-SHA256 of the body>` with the current
//!   secret, for receivers written against invsync's own scheme;
//! - the Standard Webhooks headers (<https://www.standardwebhooks.com/>):
//!   `webhook-id` (the event id, the same on every retry), `webhook-timestamp` (Unix
//!   seconds of this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of
//!   "id.timestamp.body">`, one signature per active secret (the current one and,
//!   while keys rotate, the previous one), separated by spaces.
//!
//! A `whsec_…` secret is the spec's own format: its key is the base64 after the
//! prefix. Any other secret's key is its UTF-8 bytes (give the receiver's library
//! those bytes, or `whsec_` + their base64).

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Failure, Incoming, Sink};

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    /// HMAC-SHA256 key of `X-Invsync-Signature`, and the first key of
    /// `webhook-signature`.
    pub secret: String,
    /// While keys rotate: the secret receivers may still check against; a second
    /// `webhook-signature` is sent with it.
    pub previous_secret: Option<String>,
    /// Per request; a timeout is a transient failure.
    pub timeout: Duration,
    /// The event types this endpoint gets (`None`: all); others are skipped.
    pub events: Option<Vec<invsync_core::EventType>>,
}

pub struct Webhook {
    http: reqwest::Client,
    config: WebhookConfig,
    /// The Standard Webhooks keys of the active secrets, current first.
    keys: Vec<Vec<u8>>,
}

/// Why a webhook endpoint cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("a whsec_ secret must be base64 after the prefix ({0})")]
    NotBase64(#[from] base64::DecodeError),
    #[error("a whsec_ secret must hold a key")]
    EmptyKey,
    #[error("webhook client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The Standard Webhooks key of a secret: the base64 after `whsec_`, or else the
/// secret's UTF-8 bytes.
pub fn standard_key(secret: &str) -> Result<Vec<u8>, WebhookError> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => {
            let key = base64::engine::general_purpose::STANDARD.decode(b64)?;
            if key.is_empty() {
                Err(WebhookError::EmptyKey)
            } else {
                Ok(key)
            }
        }
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under each key, space-separated:
/// the `webhook-signature` header.
pub fn standard_signature(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            let digest = mac.finalize().into_bytes();
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Webhook {
    pub fn new(config: WebhookConfig) -> Result<Self, WebhookError> {
        let keys = std::iter::once(&config.secret)
            .chain(config.previous_secret.as_ref())
            .map(|s| standard_key(s))
            .collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            // A redirected POST becomes a body-less GET (301/302/303) whose 200 would
            // count as delivered, or re-sends the signed event to whatever host the
            // redirect names (307/308). Never follow: a 3xx is a permanent failure.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, config, keys })
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

    fn wants(&self, event: &invsync_core::InventoryEventV1) -> bool {
        self.config
            .events
            .as_ref()
            .is_none_or(|types| types.contains(&event.event_type))
    }

    async fn deliver(&self, event: &Incoming) -> Result<(), Failure> {
        self.deliver_under(event, None).await
    }

    /// Under a lease, the request names it and its epoch (`X-Invsync-Lease`,
    /// `X-Invsync-Lease-Epoch`): a fencing token. A process that froze while a request
    /// was already handed to the HTTP client may see it complete when it wakes, after
    /// another process took the lease over; a receiver that keeps the highest epoch
    /// per lease and refuses a lower one is never written to by a deposed holder.
    #[tracing::instrument(name = "deliver", level = "debug", skip_all, err(level = "debug"), fields(event.id = %event.event.event_id, log.offset = event.offset))]
    async fn deliver_under(
        &self,
        event: &Incoming,
        term: Option<&invsync_ledger::Term>,
    ) -> Result<(), Failure> {
        let body = event.envelope.as_bytes().to_vec();
        let signature = signature(&self.config.secret, &body);
        let id = event.event.event_id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let standard = standard_signature(&self.keys, &id, timestamp, &body);
        let mut request = self
            .http
            .post(&self.config.url)
            .header("content-type", "application/cloudevents+json")
            .header("x-invsync-event-id", &id)
            .header("x-invsync-signature", signature)
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", standard);
        if let Some(term) = term {
            request = request
                .header("x-invsync-lease", term.lease())
                .header("x-invsync-lease-epoch", term.epoch().to_string());
        }
        let answer = request.body(body).send().await;
        let response = match answer {
            Ok(r) => r,
            // Connection refused, reset, timeout: the receiver may come back.
            Err(e) => return Err(Failure::Transient(format!("request failed: {e}"))),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::retry::parse_retry_after(v, chrono::Utc::now()))
            .filter(|_| matches!(status.as_u16(), 429 | 503));
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
        if let Some(after) = retry_after {
            Err(Failure::Later { error, after })
        } else if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
            Err(Failure::Transient(error))
        } else {
            Err(Failure::Permanent(error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver that answers `status` with an optional `Retry-After`.
    async fn answering(status: u16, retry_after: Option<&'static str>) -> String {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || async move {
                let mut response = axum::response::Response::new(axum::body::Body::from("busy"));
                *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                if let Some(v) = retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", axum::http::HeaderValue::from_static(v));
                }
                response
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn retry_after_on_429_and_503_is_passed_on() {
        let event = crate::test_event(1, 1);
        for (status, header, expected) in [
            (503, Some("3"), Some(Duration::from_secs(3))),
            (429, Some("0"), Some(Duration::ZERO)),
            (503, None, None),
            (500, Some("3"), None), // only 429 and 503 carry a meaningful Retry-After
        ] {
            let sink = Webhook::new(WebhookConfig {
                url: answering(status, header).await,
                secret: "0123456789abcdef".into(),
                previous_secret: None,
                timeout: Duration::from_secs(10),
                events: None,
            })
            .unwrap();
            match (sink.deliver(&event).await, expected) {
                (Err(Failure::Later { after, .. }), Some(want)) => assert_eq!(after, want),
                (Err(Failure::Transient(_)), None) => {}
                (other, want) => panic!("{status} {header:?}: {other:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn standard_signatures_match_the_specs_example() {
        // The example of the Standard Webhooks specification (spec/standard-webhooks.md).
        let keys = vec![standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()];
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            standard_signature(&keys, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(standard_key("whsec_not base64!").is_err());
        assert_eq!(standard_key("plain-secret").unwrap(), b"plain-secret");
    }

    #[test]
    fn the_signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
