//! The built-in consumers a process runs: the storefront, each webhook endpoint's
//! connector (one runtime, or one per partition in a group), under the supervisor.

use std::sync::Arc;
use std::time::Duration;

use invsync_api::Pipeline;
use invsync_bus::NatsBus;
use invsync_consumers::group::Member;
use invsync_consumers::storefront::{Storefront, StorefrontReader};
use invsync_consumers::webhook::{Webhook, WebhookConfig};
use invsync_consumers::{ConsumerConfig, EventSource, Partition, PartitionSource};
use invsync_core::event::PARTITIONS;
use invsync_ledger::{Ledger, Term, Turn};
use tokio::sync::watch;

use super::backends::{instance_id, source};
use super::{Role, Tasks};
use crate::config::{self, Config, Database};

/// Starts the built-in consumers: the storefront projection always, the webhook
/// connector when configured. Each keeps its state in its own file in the data dir.
///
/// On NATS each instance's storefront has its own durable consumer (its own view),
/// while the webhook connector is one durable consumer shared by all instances and
/// works only on the instance that leads the relay: two instances pulling from one
/// durable would split a SKU's events between them and break its order.
pub(super) fn start_consumers(
    config: &Config,
    ledger: &Arc<dyn Ledger>,
    bus: Option<&NatsBus>,
    role: &Role,
    stop: &watch::Receiver<bool>,
    tasks: &mut Tasks,
) -> anyhow::Result<Pipeline> {
    let mut starter = Starter {
        config,
        ledger,
        stop,
        tasks,
        pipeline: Pipeline {
            sla: config.sla,
            ..Pipeline::default()
        },
    };
    if role.runs("storefront") {
        let source = source(ledger, bus, || {
            Ok(format!("storefront-{}", instance_id(&config.data_dir)?))
        })?;
        let handle = starter.spawn(
            starter.consumer("storefront"),
            Arc::new(Storefront),
            source,
            "storefront consumer",
        )?;
        starter.pipeline.storefront =
            Some((StorefrontReader::new(handle.reader().clone()), handle));
    }
    for webhook in config.webhooks.iter().filter(|w| role.runs(&w.name)) {
        let sink: Arc<dyn invsync_consumers::Sink> = Arc::new(
            Webhook::new(WebhookConfig {
                url: webhook.url.clone(),
                secret: webhook.secret.clone(),
                previous_secret: webhook.previous_secret.clone(),
                timeout: webhook.timeout,
                events: webhook.events.clone(),
            })
            .map_err(|e| anyhow::anyhow!("{}: {e}", webhook.name))?,
        );
        if role.partitioned() {
            starter.partitioned(webhook, sink)?;
            tracing::info!(consumer.name = %webhook.name, webhook.url = %webhook.url, partitions = PARTITIONS, "external-IMS webhook connector sharing its partitions with the group");
            continue;
        }
        let mut c = starter.endpoint(webhook, &webhook.name);
        // On a shared ledger an endpoint is one consumer for all instances: it works
        // on the instance that leads, from the one position recorded in the ledger. A
        // `consume NAME` process is the one connector by the operator's choice.
        if matches!(config.database, Database::Postgres(_)) {
            if *role == Role::Server {
                c.active = Some(ledger.leadership());
            }
            c.shared = Some(Arc::new(LedgerPosition {
                ledger: ledger.clone(),
                cursor: format!("consumer:{}", webhook.name),
                fallback: None,
            }));
        }
        let source = source(ledger, bus, || Ok(webhook.name.clone()))?;
        starter.spawn(c, sink, source, "webhook consumer")?;
        tracing::info!(consumer.name = %webhook.name, webhook.url = %webhook.url, "external-IMS webhook connector enabled");
    }
    Ok(starter.pipeline)
}

/// What starting the consumers needs at hand, and the pipeline they make up.
struct Starter<'a> {
    config: &'a Config,
    ledger: &'a Arc<dyn Ledger>,
    stop: &'a watch::Receiver<bool>,
    tasks: &'a mut Tasks,
    pipeline: Pipeline,
}

impl Starter<'_> {
    /// A consumer's configuration with the deployment's defaults.
    fn consumer(&self, name: &str) -> ConsumerConfig {
        let mut c = ConsumerConfig::new(name, self.config.data_dir.join(format!("{name}.db")));
        c.sla = self.config.sla;
        c
    }

    /// A webhook endpoint's runtime configuration (under `name`: the endpoint's, or
    /// one partition's).
    fn endpoint(&self, webhook: &config::Webhook, name: &str) -> ConsumerConfig {
        let mut c = self.consumer(name);
        c.retry.cap = webhook.retry_cap;
        c.retry.dead_after = webhook.dead_after;
        c.park_after = webhook.park_after;
        c
    }

    /// Starts one runtime under the supervisor and adds it to the pipeline.
    fn spawn(
        &mut self,
        c: ConsumerConfig,
        sink: Arc<dyn invsync_consumers::Sink>,
        source: Arc<dyn EventSource>,
        task: &'static str,
    ) -> anyhow::Result<invsync_consumers::ConsumerHandle> {
        let (handle, run) =
            invsync_consumers::start(c, sink, self.ledger.clone(), source, self.stop.clone())
                .map_err(|e| anyhow::anyhow!(e))?;
        self.tasks.spawn(async move {
            run.await;
            (task, Ok(()))
        });
        self.pipeline.consumers.push(handle.clone());
        Ok(handle)
    }

    /// One runtime per partition, each working while this process holds the
    /// partition. They read the ledger's log, the one stream without holes (a bus's
    /// partition subjects would leave holes in the offsets that the runtime would have
    /// to read from the log anyway), and are sent only their own partition's
    /// envelopes.
    fn partitioned(
        &mut self,
        webhook: &config::Webhook,
        sink: Arc<dyn invsync_consumers::Sink>,
    ) -> anyhow::Result<()> {
        let mut members = Vec::new();
        for index in 0..PARTITIONS {
            let name = format!("{}.p{index:02}", webhook.name);
            let mut c = self.endpoint(webhook, &name);
            let (active, working) = watch::channel(None);
            c.active = Some(Turn::new(working));
            c.partition = Some(Partition {
                index,
                of: PARTITIONS,
            });
            c.shared = Some(Arc::new(LedgerPosition {
                ledger: self.ledger.clone(),
                cursor: format!("consumer:{name}"),
                // A group's first start resumes where the endpoint's one connector
                // got to.
                fallback: Some(format!("consumer:{}", webhook.name)),
            }));
            let source = PartitionSource {
                log: self.ledger.clone(),
                partition: index,
            };
            let handle = self.spawn(c, sink.clone(), Arc::new(source), "webhook consumer")?;
            members.push(Member { handle, active });
        }
        let (group, ledger, stop) = (webhook.name.clone(), self.ledger.clone(), self.stop.clone());
        self.tasks.spawn(async move {
            share_partitions(group, ledger, members, stop).await;
            ("consumer group", Ok(()))
        });
        Ok(())
    }
}

/// A shared consumer's position, kept as a named cursor in the ledger's `meta` table
/// (bookkeeping beside the relay's cursor; no stock or event is written).
struct LedgerPosition {
    ledger: Arc<dyn Ledger>,
    cursor: String,
    /// Read while `cursor` was never recorded.
    fallback: Option<String>,
}

impl std::fmt::Debug for LedgerPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LedgerPosition({})", self.cursor)
    }
}

#[async_trait::async_trait]
impl invsync_consumers::SharedPosition for LedgerPosition {
    async fn load(&self) -> Result<i64, invsync_ledger::LedgerError> {
        let recorded = self.ledger.cursor(&self.cursor).await?;
        match &self.fallback {
            Some(fallback) if recorded == 0 => self.ledger.cursor(fallback).await,
            _ => Ok(recorded),
        }
    }

    async fn advance(
        &self,
        position: i64,
        term: Option<&Term>,
    ) -> Result<(), invsync_ledger::LedgerError> {
        self.ledger
            .advance_cursor(&self.cursor, position, term)
            .await
    }

    async fn set(
        &self,
        position: i64,
        term: Option<&Term>,
    ) -> Result<(), invsync_ledger::LedgerError> {
        self.ledger.set_cursor(&self.cursor, position, term).await
    }
}

/// Joins the group that shares `group`'s partitions (again and again while the
/// ledger cannot be reached) and holds this process's share until stop.
async fn share_partitions(
    group: String,
    ledger: Arc<dyn Ledger>,
    members: Vec<Member>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match ledger.join_group(&group).await {
            Ok(claims) => {
                return invsync_consumers::group::share(group, claims, members, stop).await
            }
            Err(error) => {
                tracing::warn!(consumer.name = %group, %error, "cannot join the consumer group yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}
