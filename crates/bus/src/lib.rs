//! invsync's NATS JetStream bus: the stream of `events.md`, the relay that publishes
//! the ledger's log onto it, and the source consumers pull from.
//!
//! # How it fits
//!
//! The ledger's event log stays the durable record; the bus only distributes it.
//! [`BusRelay`] — running on the one instance that leads the ledger's relay — reads
//! the log after its cursor (kept in the ledger), publishes each event with
//! `Nats-Msg-Id` = event id and awaits every ack, and only then moves the cursor.
//! A crash in between publishes the range again, and the stream's duplicate window
//! drops the repeats. [`NatsSource`] is a durable pull consumer per consumer name with
//! explicit acks; the consumer runtime still decides what is applied (by offset,
//! event id and version), so a redelivery never applies anything twice.
//!
//! Only NATS 2.9 features are used (the version on our machines): no multi-filter
//! consumers, no consumer pinning, no per-message TTLs.

mod relay;
mod source;
pub mod subject;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};

pub use relay::{BusRelay, RelayProgress};
pub use source::NatsSource;

/// How invsync uses a NATS server.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `nats://host:port`, or several, comma-separated (the servers of a cluster: the
    /// client connects to any that answers and moves to another when it goes).
    pub url: String,
    /// Copies of each stream message in a cluster (`num_replicas`): 3 in production,
    /// so the loss of one server loses nothing and the stream keeps its quorum.
    pub replicas: usize,
    /// The event stream (`INVSYNC_EVENTS`).
    pub stream: String,
    /// The dead-letter stream (`INVSYNC_DLQ`).
    pub dlq_stream: String,
    /// Partitions of the subject space (`invsync.events.<partition>.<sku>`).
    pub partitions: u32,
    /// The stream's `MaxAge`: the event retention.
    pub retention: Duration,
    /// How long the stream remembers a `Nats-Msg-Id` to drop a repeated publish.
    pub duplicate_window: Duration,
    /// Deliveries of one message before the consumer treats it as poison.
    pub max_deliver: i64,
    /// How long a delivered message may stay unacknowledged before it is redelivered.
    pub ack_wait: Duration,
    /// Publishes awaiting their ack at once.
    pub in_flight: usize,
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "INVSYNC_EVENTS".into(),
            dlq_stream: "INVSYNC_DLQ".into(),
            partitions: 16,
            retention: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            max_deliver: 10,
            ack_wait: Duration::from_secs(30),
            replicas: 1,
            in_flight: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus URL {0:?}: {1}")]
    Url(String, String),
    #[error("NATS: {0}")]
    Nats(String),
}

/// The servers of a `nats://a:4222,nats://b:4222` list.
pub fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    url.split(',')
        .map(|one| {
            one.trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| BusError::Url(one.to_owned(), e.to_string()))
        })
        .collect()
}

impl BusError {
    fn nats(e: impl std::fmt::Display) -> Self {
        Self::Nats(e.to_string())
    }
}

/// A connection to NATS and the names invsync uses there.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: Arc<NatsConfig>,
    /// Counts the connections made: a pull sent on an earlier one will never be
    /// answered, so it is abandoned as soon as this moves.
    connections: tokio::sync::watch::Receiver<u64>,
}

impl NatsBus {
    /// Connects in the background: this returns at once even when the server is down
    /// (reservations must not wait for the bus), and the client keeps reconnecting.
    pub async fn connect(config: NatsConfig) -> Result<Self, BusError> {
        let url = config.url.clone();
        let (connected, connections) = tokio::sync::watch::channel(0u64);
        let connected = Arc::new(connected);
        let client = async_nats::ConnectOptions::new()
            .name("invsync")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(3))
            .max_reconnects(None)
            // Back off to at most a second: events resume flowing soon after NATS
            // returns, well inside the visibility SLA.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(50 * 2u64.pow(attempts.min(5) as u32))
                    .min(Duration::from_secs(1))
            })
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            connected.send_modify(|n| *n += 1);
                            tracing::info!(%event, "NATS connection");
                        }
                        async_nats::Event::Disconnected => {
                            tracing::info!(%event, "NATS connection");
                        }
                        // Reconnect attempts fail every backoff step while NATS is down.
                        async_nats::Event::ClientError(e) => {
                            tracing::debug!(error = %e, "NATS connection");
                        }
                        other => tracing::warn!(event = %other, "NATS connection"),
                    }
                }
            })
            .connect(servers(&url)?)
            .await
            .map_err(|e| BusError::Url(url.clone(), e.to_string()))?;
        // An ack that has not come in 2 s will not come (the stream's leader is gone, a
        // new one is being elected): publish again (the duplicate window drops a
        // repeat) rather than hold the relay for longer.
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client.clone());
        Ok(Self {
            client,
            js,
            config: Arc::new(config),
            connections,
        })
    }

    /// Moves each time the client (re)connects.
    pub fn connections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connections.clone()
    }

    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Creates the event and dead-letter streams, or brings an existing one to the
    /// configured retention and duplicate window. Safe to run from several instances.
    pub async fn ensure_streams(&self) -> Result<(), BusError> {
        let c = &self.config;
        self.ensure(self.stream_config(
            &c.stream,
            "invsync inventory sync events (events.md)",
            subject::EVENTS_PREFIX,
        ))
        .await?;
        self.ensure(self.stream_config(
            &c.dlq_stream,
            "invsync consumers' dead letters",
            subject::DLQ_PREFIX,
        ))
        .await
    }

    /// A stream of `prefix.>`: file storage, `MaxAge` = the retention.
    fn stream_config(&self, name: &str, description: &str, prefix: &str) -> stream::Config {
        let c = &self.config;
        stream::Config {
            name: name.to_owned(),
            description: Some(description.to_owned()),
            subjects: vec![format!("{prefix}.>")],
            max_age: c.retention,
            storage: stream::StorageType::File,
            // NATS requires the duplicate window to fit in MaxAge.
            duplicate_window: c.duplicate_window.min(c.retention),
            num_replicas: c.replicas,
            ..Default::default()
        }
    }

    async fn ensure(&self, config: stream::Config) -> Result<(), BusError> {
        match self.js.get_stream(&config.name).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(BusError::nats)?;
                let current = &info.config;
                if current.max_age != config.max_age
                    || current.duplicate_window != config.duplicate_window
                    || current.subjects != config.subjects
                    || current.num_replicas != config.num_replicas
                {
                    self.js
                        .update_stream(config.clone())
                        .await
                        .map_err(BusError::nats)?;
                    tracing::info!(stream = %config.name, max_age = ?config.max_age, "NATS stream updated");
                }
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                self.js
                    .create_stream(config.clone())
                    .await
                    .map_err(BusError::nats)?;
                tracing::info!(stream = %config.name, max_age = ?config.max_age, "NATS stream created");
                Ok(())
            }
            Err(e) => Err(BusError::nats(e)),
        }
    }

    /// The event stream (one request).
    pub async fn stream(&self) -> Result<jetstream::stream::Stream, BusError> {
        self.js
            .get_stream(&self.config.stream)
            .await
            .map_err(BusError::nats)
    }

    /// Whether the bus answers: connected, and the event stream is there.
    pub async fn up(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
            && self.stream().await.is_ok()
    }

    /// The server the client is connected to now (`name host:port`); `None` while it
    /// is not connected.
    pub fn server(&self) -> Option<String> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return None;
        }
        let info = self.client.server_info();
        Some(format!("{} {}:{}", info.server_name, info.host, info.port))
    }

    /// The subject an event of `sku` goes to.
    pub fn subject(&self, sku: &str) -> String {
        subject::event_subject(sku, self.config.partitions)
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The header that carries an event's ledger offset.
pub const OFFSET_HEADER: &str = "Invsync-Offset";
