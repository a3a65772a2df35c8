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
        global = true
    )]
    pub url: String,
    /// Bearer token.
    #[arg(long, env = "INVSYNC_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
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
    #[error("cannot reach {url}: {source}")]
    Connect { url: String, source: reqwest::Error },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
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

pub fn lines_json(lines: &[(String, i64)]) -> Value {
    Value::Array(
        lines
            .iter()
            .map(|(sku, q)| json!({"sku": sku, "quantity": q}))
            .collect(),
    )
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
        let mut out = format!(
            "reservation {} order {} store {}: {}",
            v["reservation_id"].as_str().unwrap_or("?"),
            v["order_id"].as_str().unwrap_or("?"),
            v["store_id"].as_str().unwrap_or("?"),
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
