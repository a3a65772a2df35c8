//! Client commands: each calls one API route and prints the answer, human-readable by
//! default or as JSON with `--json`. Errors print the server's problem `detail`.

use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Where the server is and how to call it.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the invsync server.
    #[arg(
        long,
        env = "INVSYNC_URL",
        default_value = "http://127.0.0.1:8080",
        global = true,
        value_parser = parse_base_url
    )]
    pub url: String,
    /// Bearer token (prefer the environment variable: a flag shows in `ps`).
    #[arg(long, env = "INVSYNC_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `--url`: an http:// or https:// base URL. Checked up front, so that a missing
/// scheme is a usage error naming the fix, not reqwest's "builder error".
pub fn parse_base_url(text: &str) -> Result<String, String> {
    // `localhost:8080` parses as a URL of scheme `localhost`: look for `://` first.
    if !text.contains("://") {
        return Err(format!("{text:?} has no scheme: try http://{text}"));
    }
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{text:?} is not an http:// or https:// URL with a host"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// A failed call: what to tell the user on stderr.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status}: {detail}")]
    Problem {
        status: StatusCode,
        detail: String,
        /// The whole problem document (`oldest_offset`, `lines`, …).
        body: Value,
    },
    #[error("cannot reach {url}: {}", cause_chain(.source))]
    Connect { url: String, source: reqwest::Error },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    /// Stdout could not be written. A closed pipe (`| head -3`) is the reader going
    /// away, which ends the command quietly (see `run`); anything else is an error.
    #[error("writing to stdout: {0}")]
    Output(std::io::Error),
}

/// An error and every cause under it (`error sending request: connection refused`):
/// reqwest's own message alone omits the reason.
fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

impl ClientError {
    /// The exit code of `operations.md`: 1 the server answered with an error, 2 the
    /// command line is wrong, 3 the server could not be reached.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Problem { .. } | Self::Failed(_) | Self::Output(_) => 1,
            Self::Usage(_) => 2,
            Self::Connect { .. } => 3,
        }
    }

    /// What stderr shows: the problem's detail, then what it carries (each short
    /// line of an `insufficient_stock`, the field at fault, the oldest offset).
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        if let Self::Problem { body, .. } = self {
            if let Some(field) = body["field"].as_str() {
                if !out.contains(field) {
                    out.push_str(&format!(" (field: {field})"));
                }
            }
            for line in body["lines"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "\n  {}: requested {}, available {}",
                    line["sku"].as_str().unwrap_or("?"),
                    line["requested"],
                    line["available"]
                ));
            }
            if body["outcome"] == "unknown" {
                out.push_str(
                    "\n  the write may have been applied: retry it with the same --idempotency-key",
                );
            }
        }
        out
    }
}

pub struct Client {
    http: reqwest::Client,
    args: ClientArgs,
}

impl Client {
    pub fn new(args: ClientArgs) -> Self {
        Self {
            http: reqwest::Client::new(),
            args,
        }
    }

    /// Opens a request for streaming answers (SSE).
    pub fn get_stream(&self, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.args.url.trim_end_matches('/'), path);
        let req = self.http.get(url);
        match &self.args.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    pub fn json_output(&self) -> bool {
        self.args.json
    }

    /// Calls the API; non-2xx answers become `ClientError::Problem`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        self.call_with_header(method, path, body, None).await
    }

    /// [`Self::call`] with an optional `Idempotency-Key`.
    pub async fn call_with_key(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<String>,
    ) -> Result<(StatusCode, Value), ClientError> {
        self.call_with_header(method, path, body, key.map(|k| ("Idempotency-Key", k)))
            .await
    }

    pub async fn call_with_header(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        header: Option<(&str, String)>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let url = format!("{}{}", self.args.url.trim_end_matches('/'), path);
        let mut req = self.http.request(method, &url);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        if let Some(token) = &self.args.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Connect { url, source })?;
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({"detail": String::from_utf8_lossy(&bytes)}));
        if !status.is_success() {
            let detail = value["detail"].as_str().unwrap_or("no detail").to_owned();
            return Err(ClientError::Problem {
                status,
                detail,
                body: value,
            });
        }
        Ok((status, value))
    }
}

/// Parses `SKU=QTY`.
pub fn parse_line(text: &str) -> Result<(String, i64), String> {
    let (sku, qty) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not SKU=QUANTITY"))?;
    let qty = qty
        .parse()
        .map_err(|_| format!("{text:?}: the quantity is not an integer"))?;
    Ok((sku.to_owned(), qty))
}

/// SKU=QUANTITY lines as the API's `lines`, each naming `store` when given (release
/// or fulfil from one allocation).
pub fn lines_json(lines: &[(String, i64)], store: Option<&str>) -> Value {
    Value::Array(
        lines
            .iter()
            .map(|(sku, q)| {
                let mut line = json!({"sku": sku, "quantity": q});
                if let Some(store) = store {
                    line["store_id"] = json!(store);
                }
                line
            })
            .collect(),
    )
}

/// A channel's configuration file as the body of `PUT /v1/channels/{id}`: JSON when
/// the name ends in `.json`, TOML otherwise. The server validates it.
pub fn channel_file(path: &std::path::Path) -> Result<Value, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        toml::from_str::<Value>(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))
}

/// Human-readable summaries of the API's answers.
pub mod show {
    use serde_json::Value;

    pub fn stock(v: &Value) -> String {
        format!(
            "{}/{}: on_hand {} reserved {} available {} (version {})",
            v["store_id"].as_str().unwrap_or("?"),
            v["sku"].as_str().unwrap_or("?"),
            v["on_hand"],
            v["reserved"],
            v["available"],
            v["version"]
        )
    }

    pub fn reservation(v: &Value) -> String {
        let place = match v["channel"].as_str() {
            Some(channel) => format!("channel {channel}"),
            None => format!("store {}", v["store_id"].as_str().unwrap_or("?")),
        };
        let mut out = format!(
            "reservation {} order {} {place}: {}",
            v["reservation_id"].as_str().unwrap_or("?"),
            v["order_id"].as_str().unwrap_or("?"),
            v["status"].as_str().unwrap_or("?")
        );
        if let Some(expires) = v["expires_at"].as_str() {
            out.push_str(&format!(" (expires {expires})"));
        }
        for line in v["lines"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\n  {}: {} reserved, {} released, {} fulfilled",
                line["sku"].as_str().unwrap_or("?"),
                line["quantity"],
                line["released"],
                line["fulfilled"]
            ));
            if v["channel"].is_string() {
                for a in line["allocations"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n    at {}: {} reserved, {} released, {} fulfilled{}",
                        a["store_id"].as_str().unwrap_or("?"),
                        a["quantity"],
                        a["released"],
                        a["fulfilled"],
                        match a["short"].as_i64() {
                            Some(n) if n > 0 => format!(", {n} short"),
                            _ => String::new(),
                        }
                    ));
                }
            }
        }
        out
    }

    pub fn channel(v: &Value) -> String {
        let mut out = format!(
            "channel {} (version {}): {}, split {}",
            v["channel_id"].as_str().unwrap_or("?"),
            v["version"],
            v["allocation"].as_str().unwrap_or("?"),
            v["split"].as_str().unwrap_or("?")
        );
        if let Some(name) = v["name"].as_str() {
            out.push_str(&format!(" — {name}"));
        }
        for l in v["locations"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\n  {} priority {} safety stock {}",
                l["store_id"].as_str().unwrap_or("?"),
                l["priority"],
                l["safety_stock"]
            ));
        }
        out
    }

    pub fn adjustment(v: &Value) -> String {
        let mut out = stock(v);
        if v["shortage"].as_i64().unwrap_or(0) > 0 {
            out.push_str(&format!(" — shortage of {}", v["shortage"]));
        }
        out
    }

    pub fn consumer(v: &Value) -> String {
        let ms = |x: &Value| x.as_f64().map_or("-".to_owned(), |m| format!("{m:.1} ms"));
        format!(
            "{:<12} position {} lag {} events / {:.1} s, dead letters {}, sync latency p50 {} p99 {}{}",
            v["name"].as_str().unwrap_or("?"),
            v["position"],
            v["lag_events"],
            v["lag_seconds"].as_f64().unwrap_or(0.0),
            v["dead_letters"],
            ms(&v["sync_latency_p50_ms"]),
            ms(&v["sync_latency_p99_ms"]),
            v["last_error"].as_str().map(|e| format!(" — last error: {e}")).unwrap_or_default()
        )
    }

    pub fn dead_letter(v: &Value) -> String {
        format!(
            "{} {} offset {} attempts {} at {}: {}",
            v["id"].as_str().unwrap_or("?"),
            v["consumer"].as_str().unwrap_or("?"),
            v["offset"],
            v["attempts"],
            v["failed_at"].as_str().unwrap_or("?"),
            v["last_error"].as_str().unwrap_or("")
        )
    }

    pub fn event(offset: &Value, e: &Value) -> String {
        let d = &e["data"];
        format!(
            "{offset:>8} {} {:<8} {}/{} {:+} -> on_hand {} reserved {} available {} v{} {}",
            d["occurred_at"].as_str().unwrap_or("?"),
            d["event_type"].as_str().unwrap_or("?"),
            d["store_id"].as_str().unwrap_or("?"),
            d["product_sku"].as_str().unwrap_or("?"),
            d["quantity"].as_i64().unwrap_or(0),
            d["on_hand"],
            d["reserved"],
            d["available"],
            d["version"],
            d["reason"].as_str().unwrap_or("")
        )
    }
}
/// Percent-encodes a value for a URL path segment or query.
pub(crate) fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
