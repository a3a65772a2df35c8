//! `invsync serve` configuration: one typed struct built from flags > environment >
//! TOML file > defaults (clap resolves flag and environment; the file fills the rest).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

/// A configuration value that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

pub(crate) fn bad(key: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.to_string(),
    }
}

/// A failure at start-up that a setting caused (a port in use, an unreadable tokens
/// file, a data directory held by another process): the operator's to fix, so the
/// process exits 2 as for a bad flag. The type, not the text, tells `run` so.
pub(crate) fn setting(key: &str, message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(bad(key, message))
}

/// The settings of `invsync serve`, declared once: each is a flag, its environment
/// variable, and a key of the `--config` file (the flag's name, in kebab case). The
/// file is read into this same struct; `ServeArgs::over` lays the flags over it.
#[derive(Debug, Default, Clone, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with the same keys as these flags.
    #[arg(long, env = "INVSYNC_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory of the embedded ledger (default ./invsync-data).
    #[arg(long, env = "INVSYNC_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP address (default 127.0.0.1:8080; 127.0.0.1:8081 for `consume`).
    #[arg(long, env = "INVSYNC_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// `sqlite://PATH` (default: ledger.db in the data dir).
    #[arg(long, env = "INVSYNC_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// `embedded` (default: the ledger's own log) or `nats://HOST:PORT` (JetStream);
    /// a cluster's servers comma-separated: `nats://a:4222,nats://b:4222,nats://c:4222`.
    #[arg(long, env = "INVSYNC_BUS", value_name = "URL")]
    pub bus: Option<String>,
    /// The JetStream stream of events (default INVSYNC_EVENTS).
    #[arg(long, env = "INVSYNC_BUS_STREAM", value_name = "NAME")]
    pub bus_stream: Option<String>,
    /// Copies of the stream in a NATS cluster, 1 to 5 (default 1; 3 in production).
    #[arg(long, env = "INVSYNC_BUS_REPLICAS", value_name = "N")]
    pub bus_replicas: Option<usize>,
    /// Event retention, e.g. 7d, 36h, 90s (default 7d).
    #[arg(long, env = "INVSYNC_RETENTION", value_name = "DUR")]
    pub retention: Option<String>,
    /// Visibility SLA metrics judge against (default 30s).
    #[arg(long, env = "INVSYNC_SLA", value_name = "DUR")]
    pub sla: Option<String>,
    /// Enables the external-IMS webhook connector: events are POSTed here.
    #[arg(long, env = "INVSYNC_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,
    /// HMAC key of the webhook signatures (required with --webhook-url). Visible in
    /// `ps` as a flag: prefer --webhook-secret-file or the environment variable.
    #[arg(
        long,
        env = "INVSYNC_WEBHOOK_SECRET",
        value_name = "S",
        hide_env_values = true,
        conflicts_with = "webhook_secret_file"
    )]
    pub webhook_secret: Option<String>,
    /// File holding the webhook's HMAC key (one line; a trailing newline is ignored).
    #[arg(long, env = "INVSYNC_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// While rotating keys: the previous webhook secret, still signed with (a second
    /// `webhook-signature`) so receivers can switch at their own pace.
    #[arg(
        long,
        env = "INVSYNC_WEBHOOK_PREVIOUS_SECRET",
        value_name = "S",
        hide_env_values = true
    )]
    pub webhook_previous_secret: Option<String>,
    /// Time a webhook request may take; a timeout is retried (default 10s).
    #[arg(long, env = "INVSYNC_WEBHOOK_TIMEOUT", value_name = "DUR")]
    pub webhook_timeout: Option<String>,
    /// Longest pause between two attempts at a failing delivery (default 30s).
    #[arg(long, env = "INVSYNC_WEBHOOK_RETRY_CAP", value_name = "DUR")]
    pub webhook_retry_cap: Option<String>,
    /// Dead-letter an event still failing transiently this long after it occurred
    /// (default: retry until it is delivered).
    #[arg(long, env = "INVSYNC_WEBHOOK_DEAD_AFTER", value_name = "DUR")]
    pub webhook_dead_after: Option<String>,
    /// How long one failing event may hold up the others before its SKU is parked and
    /// retried on the side (default 2s).
    #[arg(long, env = "INVSYNC_WEBHOOK_PARK_AFTER", value_name = "DUR")]
    pub webhook_park_after: Option<String>,
    /// TOML file of API tokens and their scopes.
    #[arg(long, env = "INVSYNC_TOKENS", value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// `text` (default) or `json`.
    #[arg(long, env = "INVSYNC_LOG_FORMAT", value_name = "F")]
    pub log_format: Option<String>,
    /// Deployment name, used in events' `source` (invsync://NAME; default "local").
    #[arg(long, env = "INVSYNC_DEPLOYMENT", value_name = "NAME")]
    pub deployment: Option<String>,
    /// Most ledger commands committed together (group commit); 1 switches it off
    /// (default 256).
    #[arg(long, env = "INVSYNC_MAX_BATCH", value_name = "N")]
    pub max_batch: Option<usize>,
    /// Most HTTP connections open at once; more wait to be accepted (default 4096).
    #[arg(long, env = "INVSYNC_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Time a connection has to send a request's headers, and the most a keep-alive
    /// connection may sit idle (default 10s).
    #[arg(long, env = "INVSYNC_HEADER_TIMEOUT", value_name = "DUR")]
    pub header_timeout: Option<String>,
    /// Time a request has to send its body (default 30s).
    #[arg(long, env = "INVSYNC_BODY_TIMEOUT", value_name = "DUR")]
    pub body_timeout: Option<String>,
    /// On SIGTERM, how long in-flight requests may take before the server exits
    /// anyway; event streams end at once (default 10s).
    #[arg(long, env = "INVSYNC_SHUTDOWN_GRACE", value_name = "DUR")]
    pub shutdown_grace: Option<String>,
    /// More webhook endpoints, each its own consumer: the file's `[[webhook]]` tables
    /// (no flag: a list of tables has none).
    #[arg(skip)]
    #[serde(default, rename = "webhook", skip_serializing_if = "Vec::is_empty")]
    pub(crate) webhooks: Vec<EndpointSpec>,
}

impl ServeArgs {
    /// These settings laid over `file`'s: a flag (or its variable) that is set wins,
    /// the file fills in the rest. One generic overlay of the two as documents, so no
    /// setting is named twice.
    fn over(self, file: ServeArgs) -> Result<ServeArgs, ConfigError> {
        let config = self.config.clone();
        let mut merged = document(&file)?;
        if let (Some(into), serde_json::Value::Object(flags)) =
            (merged.as_object_mut(), document(&self)?)
        {
            for (key, value) in flags {
                if !value.is_null() {
                    into.insert(key, value);
                }
            }
        }
        let mut args: ServeArgs = serde_json::from_value(merged)
            .map_err(|e| bad("config", format!("merging the flags over the file: {e}")))?;
        args.config = config;
        Ok(args)
    }
}

fn document(args: &ServeArgs) -> Result<serde_json::Value, ConfigError> {
    serde_json::to_value(args).map_err(|e| bad("config", format!("reading the settings: {e}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where and how one webhook endpoint (an external-IMS connector) delivers.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The consumer's name (`webhook` for the one the flags configure): in metrics,
    /// `/v1/consumers`, replay, dead letters, its store file and its NATS durable.
    pub name: String,
    /// The event types it gets; `None`: all.
    pub events: Option<Vec<invsync_core::EventType>>,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    /// Per request.
    pub timeout: Duration,
    /// Longest pause between attempts.
    pub retry_cap: Duration,
    /// Dead-letter a transiently failing event this long after it occurred.
    pub dead_after: Option<Duration>,
    /// Park a SKU whose event is not delivered within this.
    pub park_after: Duration,
}

impl std::fmt::Debug for Webhook {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Where events are distributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// The ledger's own event log.
    Embedded,
    /// NATS JetStream: the servers' URLs (comma-separated), the stream's name and its
    /// replicas.
    Nats {
        url: String,
        stream: String,
        replicas: usize,
    },
}

#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// A `postgres://` URL (it may hold a password: never logged).
    Postgres(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

/// The resolved configuration of `invsync serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub database: Database,
    pub bus: Bus,
    pub retention: Duration,
    pub sla: Duration,
    /// The webhook endpoints: the flags' (`webhook`) first, then the file's tables.
    pub webhooks: Vec<Webhook>,
    pub tokens: Option<PathBuf>,
    pub log_format: LogFormat,
    /// CloudEvents `source` of this deployment's events.
    pub source: String,
    pub max_batch: usize,
    /// Connection limits, timeouts and the shutdown grace of the HTTP server.
    pub http: invsync_api::ServeLimits,
}

impl Config {
    /// Resolves flags/env (already merged by clap) over the file over defaults.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        Self::resolve_with(args, "127.0.0.1:8080")
    }

    /// [`resolve`](Self::resolve) with another default HTTP address (`consume`
    /// listens on 8081 by default, beside a server on 8080).
    pub fn resolve_with(args: ServeArgs, default_listen: &str) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let args = args.over(file)?;
        let data_dir = args
            .data_dir
            .unwrap_or_else(|| PathBuf::from("./invsync-data"));
        let listen = args.listen.unwrap_or_else(|| default_listen.to_owned());
        let listen: SocketAddr = listen.parse().map_err(|e| {
            bad(
                "listen",
                format!("{listen:?} is not an address like 127.0.0.1:8080 ({e})"),
            )
        })?;
        let database = match args.database_url {
            None => Database::Sqlite(data_dir.join("ledger.db")),
            Some(url) => parse_database_url(&url)?,
        };
        let stream = args
            .bus_stream
            .unwrap_or_else(|| "INVSYNC_EVENTS".to_owned());
        let replicas = args.bus_replicas.unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            return Err(bad(
                "bus-replicas",
                format!("must be from 1 to 5 (NATS's limit), got {replicas}"),
            ));
        }
        let bus = parse_bus(
            &args.bus.unwrap_or_else(|| "embedded".to_owned()),
            stream,
            replicas,
        )?;
        let retention = duration("retention", args.retention, "7d")?;
        let sla = duration("sla", args.sla, "30s")?;
        let flags = EndpointSpec {
            name: Some(FLAGS_ENDPOINT.to_owned()),
            url: args.webhook_url,
            secret: args.webhook_secret,
            secret_file: args.webhook_secret_file,
            previous_secret: args.webhook_previous_secret,
            events: None,
            timeout: args.webhook_timeout,
            retry_cap: args.webhook_retry_cap,
            dead_after: args.webhook_dead_after,
            park_after: args.webhook_park_after,
        };
        let mut webhooks = Vec::new();
        if flags.url.is_some() || flags.secret.is_some() || flags.secret_file.is_some() {
            webhooks.push(flags.resolve(|field| format!("webhook-{field}"))?);
        }
        for (i, spec) in args.webhooks.into_iter().enumerate() {
            let webhook = spec.resolve(|field| format!("webhook[{i}].{field}"))?;
            if webhook.name == "storefront"
                || webhooks.iter().any(|w: &Webhook| w.name == webhook.name)
            {
                return Err(bad(
                    format!("webhook[{i}].name"),
                    format!("{:?} is already a consumer's name", webhook.name),
                ));
            }
            webhooks.push(webhook);
        }
        let log_format = match args.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(bad(
                    "log-format",
                    format!("{other:?} is not `text` or `json`"),
                ))
            }
        };
        let deployment = args.deployment.unwrap_or_else(|| "local".to_owned());
        invsync_core::StoreId::parse(deployment.as_str())
            .map_err(|e| bad("deployment", format!("{deployment:?}: {e}")))?;
        let max_batch = args.max_batch.unwrap_or(256);
        if !(1..=10_000).contains(&max_batch) {
            return Err(bad(
                "max-batch",
                format!("must be from 1 to 10000, got {max_batch}"),
            ));
        }
        let defaults = invsync_api::ServeLimits::default();
        let max_connections = args.max_connections.unwrap_or(defaults.max_connections);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(bad(
                "max-connections",
                format!("must be from 1 to 1000000, got {max_connections}"),
            ));
        }
        let http = invsync_api::ServeLimits {
            max_connections,
            header_timeout: duration("header-timeout", args.header_timeout, "10s")?,
            body_timeout: duration("body-timeout", args.body_timeout, "30s")?,
            grace: duration("shutdown-grace", args.shutdown_grace, "10s")?,
        };
        Ok(Self {
            data_dir,
            listen,
            database,
            bus,
            retention,
            sla,
            webhooks,
            tokens: args.tokens,
            log_format,
            source: format!("invsync://{deployment}"),
            max_batch,
            http,
        })
    }
}

/// The name of the endpoint the `--webhook-*` flags configure.
pub const FLAGS_ENDPOINT: &str = "webhook";

/// One webhook endpoint as configured: the `--webhook-*` flags, or a `[[webhook]]`
/// table of the file (whose keys are these, in kebab case).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct EndpointSpec {
    name: Option<String>,
    url: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    previous_secret: Option<String>,
    /// Event types to deliver (`reserved`, `released`, `adjusted`, or their
    /// CloudEvents types); all when absent.
    events: Option<Vec<String>>,
    timeout: Option<String>,
    retry_cap: Option<String>,
    dead_after: Option<String>,
    park_after: Option<String>,
}

impl EndpointSpec {
    /// Validates the endpoint; `key` names a field in errors (`webhook-url`,
    /// `webhook[1].url`).
    fn resolve(self, key: impl Fn(&str) -> String) -> Result<Webhook, ConfigError> {
        let name = self.name.ok_or_else(|| bad(key("name"), "is required"))?;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(bad(
                key("name"),
                format!("{name:?} must be 1 to 64 lowercase letters, digits, '-' or '_'"),
            ));
        }
        let secret = match (self.secret, self.secret_file) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    key("secret-file"),
                    "give either the secret or a secret file, not both",
                ));
            }
            (Some(secret), None) => secret,
            (None, Some(path)) => read_secret(&path, &key("secret-file"))?,
            (None, None) => return Err(bad(key("secret"), "is required with the URL")),
        };
        let url = self
            .url
            .ok_or_else(|| bad(key("url"), "is required with the secret"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(bad(
                key("url"),
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        if secret.len() < 16 {
            return Err(bad(key("secret"), "must be at least 16 characters"));
        }
        invsync_consumers::webhook::standard_key(&secret).map_err(|e| bad(key("secret"), e))?;
        if let Some(previous) = &self.previous_secret {
            invsync_consumers::webhook::standard_key(previous)
                .map_err(|e| bad(key("previous-secret"), e))?;
        }
        let events = self
            .events
            .map(|types| {
                if types.is_empty() {
                    return Err(bad(
                        key("events"),
                        "must name at least one event type (leave it out for all)",
                    ));
                }
                types
                    .iter()
                    .map(|t| {
                        parse_event_type(t).ok_or_else(|| {
                            bad(
                                key("events"),
                                format!("{t:?} is not reserved, released or adjusted"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let optional = |field: &str, value: Option<String>| {
            value
                .map(|d| parse_duration(&d).map_err(|e| bad(key(field), e)))
                .transpose()
        };
        Ok(Webhook {
            name,
            events,
            url,
            secret,
            previous_secret: self.previous_secret,
            timeout: optional("timeout", self.timeout)?.unwrap_or(Duration::from_secs(10)),
            retry_cap: optional("retry-cap", self.retry_cap)?.unwrap_or(Duration::from_secs(30)),
            dead_after: optional("dead-after", self.dead_after)?,
            park_after: optional("park-after", self.park_after)?.unwrap_or(Duration::from_secs(2)),
        })
    }
}

/// `reserved`, `released`, `adjusted`, or the CloudEvents type of one of them.
fn parse_event_type(name: &str) -> Option<invsync_core::EventType> {
    use invsync_core::EventType;
    [
        EventType::Reserved,
        EventType::Released,
        EventType::Adjusted,
    ]
    .into_iter()
    .find(|t| {
        let ce = t.cloudevents_type();
        name == ce
            || ce
                .strip_prefix("com.invsync.inventory.")
                .and_then(|rest| rest.strip_suffix(".v1"))
                == Some(name)
    })
}

/// Reads a secret kept in a file (so that it never shows in `ps`): its one line,
/// without the trailing newline an editor adds.
fn read_secret(path: &Path, key: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| bad("config", format!("{}: {}", path.display(), e.message())))
}

fn parse_bus(url: &str, stream: String, replicas: usize) -> Result<Bus, ConfigError> {
    if url == "embedded" {
        return Ok(Bus::Embedded);
    }
    for one in url.split(',') {
        let Some(rest) = one.strip_prefix("nats://") else {
            return Err(bad(
                "bus",
                format!("{one:?} is not `embedded` or a nats://HOST:PORT URL (several: comma-separated)"),
            ));
        };
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(bad("bus", format!("{one:?} has no valid host")));
        }
        if invsync_bus::servers(one).is_err() {
            return Err(bad("bus", format!("{one:?} is not a valid NATS URL")));
        }
    }
    if stream.is_empty()
        || stream.len() > 64
        || !stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad(
            "bus-stream",
            format!("{stream:?} must be 1 to 64 letters, digits, '_' or '-'"),
        ));
    }
    Ok(Bus::Nats {
        url: url.to_owned(),
        stream,
        replicas,
    })
}

fn parse_database_url(url: &str) -> Result<Database, ConfigError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(bad(
                "database-url",
                "sqlite:// needs a path, e.g. sqlite://./ledger.db",
            ));
        }
        return Ok(Database::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Database::Postgres(url.to_owned()));
    }
    Err(bad(
        "database-url",
        "must be sqlite://PATH or postgres://USER@HOST:PORT/DB",
    ))
}

/// Parses `7d`, `36h`, `90s`, `1h30m`; refuses zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 7d, 36h or 90s ({e})"))?;
    if d.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(d)
}

fn duration(
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    parse_duration(value.as_deref().unwrap_or(default)).map_err(|e| bad(key, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::resolve(ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.database,
            Database::Sqlite(PathBuf::from("./invsync-data/ledger.db"))
        );
        assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.sla, Duration::from_secs(30));
        assert_eq!(c.max_batch, 256);
        assert_eq!(c.bus, Bus::Embedded);
    }

    #[test]
    fn a_nats_bus_is_chosen_by_url() {
        let args = ServeArgs {
            bus: Some("nats://127.0.0.1:4222".into()),
            ..Default::default()
        };
        assert_eq!(
            Config::resolve(args).unwrap().bus,
            Bus::Nats {
                url: "nats://127.0.0.1:4222".into(),
                stream: "INVSYNC_EVENTS".into(),
                replicas: 1,
            }
        );
    }

    #[test]
    fn a_nats_cluster_is_several_urls_and_its_replicas_are_bounded() {
        let cluster = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224";
        let args = ServeArgs {
            bus: Some(cluster.into()),
            bus_replicas: Some(3),
            ..Default::default()
        };
        assert_eq!(
            Config::resolve(args).unwrap().bus,
            Bus::Nats {
                url: cluster.into(),
                stream: "INVSYNC_EVENTS".into(),
                replicas: 3,
            }
        );
        for (bus, replicas, field) in [
            ("nats://a:1,kafka://b:2", 1, "bus"),
            ("nats://a:1,", 1, "bus"),
            ("nats://a:1", 0, "bus-replicas"),
            ("nats://a:1", 6, "bus-replicas"),
        ] {
            let args = ServeArgs {
                bus: Some(bus.into()),
                bus_replicas: Some(replicas),
                ..Default::default()
            };
            let err = Config::resolve(args).unwrap_err();
            assert_eq!(err.key, field, "{bus} ×{replicas}: {err}");
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("invsync.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nretention = \"36h\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            listen: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.retention, Duration::from_secs(36 * 3600));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: [(ServeArgs, &str); 10] = [
            (
                ServeArgs {
                    bus: Some("kafka://x".into()),
                    ..Default::default()
                },
                "bus",
            ),
            (
                ServeArgs {
                    bus: Some("nats://".into()),
                    ..Default::default()
                },
                "bus",
            ),
            (
                ServeArgs {
                    bus: Some("nats://h:4222".into()),
                    bus_stream: Some("has.dot".into()),
                    ..Default::default()
                },
                "bus-stream",
            ),
            (
                ServeArgs {
                    listen: Some("nowhere".into()),
                    ..Default::default()
                },
                "listen",
            ),
            (
                ServeArgs {
                    retention: Some("soon".into()),
                    ..Default::default()
                },
                "retention",
            ),
            (
                ServeArgs {
                    database_url: Some("mysql://x".into()),
                    ..Default::default()
                },
                "database-url",
            ),
            (
                ServeArgs {
                    log_format: Some("xml".into()),
                    ..Default::default()
                },
                "log-format",
            ),
            (
                ServeArgs {
                    max_batch: Some(0),
                    ..Default::default()
                },
                "max-batch",
            ),
            (
                ServeArgs {
                    webhook_url: Some("http://127.0.0.1:9/x".into()),
                    ..Default::default()
                },
                "webhook-secret",
            ),
            (
                ServeArgs {
                    webhook_url: Some("ftp://x".into()),
                    webhook_secret: Some("0123456789abcdef".into()),
                    ..Default::default()
                },
                "webhook-url",
            ),
        ];
        for (args, key) in cases {
            assert_eq!(Config::resolve(args).unwrap_err().key, key);
        }
    }

    fn with_file(toml: &str, args: ServeArgs) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("invsync.toml");
        std::fs::write(&file, toml).unwrap();
        Config::resolve(ServeArgs {
            config: Some(file),
            ..args
        })
    }

    #[test]
    fn webhook_tables_add_endpoints_after_the_flags_one() {
        let c = with_file(
            r#"
[[webhook]]
name = "erp"
url = "https://erp.example/hook"
secret = "0123456789abcdef-erp"
events = ["reserved", "com.invsync.inventory.adjusted.v1"]
park-after = "5s"

[[webhook]]
name = "wms_2"
url = "http://wms.local:9000/in"
secret = "0123456789abcdef-wms"
"#,
            ServeArgs {
                webhook_url: Some("http://127.0.0.1:9/x".into()),
                webhook_secret: Some("0123456789abcdef".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let names: Vec<&str> = c.webhooks.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["webhook", "erp", "wms_2"]);
        use invsync_core::EventType;
        assert_eq!(
            c.webhooks[1].events,
            Some(vec![EventType::Reserved, EventType::Adjusted])
        );
        assert_eq!(c.webhooks[1].park_after, Duration::from_secs(5));
        assert_eq!(c.webhooks[2].events, None, "all types when absent");
        assert_eq!(c.webhooks[2].timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_bad_webhook_table_names_the_table_and_the_key() {
        let table = |body: &str| format!("[[webhook]]\n{body}\n");
        let ok = "url = \"http://h:1/x\"\nsecret = \"0123456789abcdef\"";
        for (body, key) in [
            (ok.to_owned(), "webhook[0].name"),
            (format!("name = \"Has Caps\"\n{ok}"), "webhook[0].name"),
            (format!("name = \"storefront\"\n{ok}"), "webhook[0].name"),
            (
                format!("name = \"a\"\n{ok}\nevents = [\"sold\"]"),
                "webhook[0].events",
            ),
            (
                format!("name = \"a\"\n{ok}\nevents = []"),
                "webhook[0].events",
            ),
            (
                format!("name = \"a\"\n{ok}\ntimeout = \"soon\""),
                "webhook[0].timeout",
            ),
            (
                "name = \"a\"\nurl = \"ftp://h/x\"\nsecret = \"0123456789abcdef\"".to_owned(),
                "webhook[0].url",
            ),
            (
                "name = \"a\"\nurl = \"http://h:1/x\"".to_owned(),
                "webhook[0].secret",
            ),
            (
                format!("name = \"a\"\n{ok}\n[[webhook]]\nname = \"a\"\n{ok}"),
                "webhook[1].name",
            ),
        ] {
            let err = with_file(&table(&body), ServeArgs::default()).unwrap_err();
            assert_eq!(err.key, key, "{body}: {err}");
        }
        // A table's unknown key is refused by the file parser, naming it.
        let err = with_file(
            &table(&format!("name = \"a\"\n{ok}\nurl2 = 1")),
            ServeArgs::default(),
        )
        .unwrap_err();
        assert!(err.key == "config" && err.message.contains("url2"), "{err}");
        // The flags' endpoint is `webhook`; a table may not take that name too.
        let err = with_file(
            &table(&format!("name = \"webhook\"\n{ok}")),
            ServeArgs {
                webhook_url: Some("http://127.0.0.1:9/x".into()),
                webhook_secret: Some("0123456789abcdef".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.key, "webhook[0].name");
    }

    #[test]
    fn an_unknown_file_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("invsync.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(file),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "config");
        assert!(err.message.contains("lisen"), "{}", err.message);
    }
}
