//! A three-server NATS JetStream cluster on loopback, each server running
//! `deploy/nats/nats-cluster.conf` with its ports and store filled in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;

use crate::procs::{self, eventually, free_port, Proc};

const TEMPLATE: &str = include_str!("../../../deploy/nats/nats-cluster.conf");
const NATS_BIN: &str = "/usr/sbin/nats-server";

struct Server {
    name: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Server {
    fn start(&mut self) -> Result<()> {
        let mut command = Command::new(NATS_BIN);
        command.arg("-c").arg(&self.config);
        self.proc = Some(Proc::spawn(&self.name, command, &self.log)?);
        Ok(())
    }
}

pub struct NatsCluster {
    servers: Vec<Server>,
    /// Whether the servers sync every write before acknowledging it.
    pub syncs_always: bool,
}

/// `nats-server --version` is 2.10 or later (which knows `sync_interval`).
fn knows_sync_interval() -> bool {
    let version = Command::new(NATS_BIN)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    // "nats-server: v2.9.10"
    let numbers: Vec<u32> = version
        .trim()
        .rsplit('v')
        .next()
        .unwrap_or_default()
        .split('.')
        .filter_map(|n| n.parse().ok())
        .collect();
    matches!(numbers.as_slice(), [major, minor, ..] if (*major, *minor) >= (2, 10))
}

impl NatsCluster {
    pub async fn start(dir: &Path) -> Result<Self> {
        if !Path::new(NATS_BIN).exists() {
            bail!("{NATS_BIN} is not installed (Debian: nats-server)");
        }
        let dir = dir.join("nats");
        std::fs::create_dir_all(&dir)?;
        let syncs_always = knows_sync_interval();
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster)| format!("nats-route://127.0.0.1:{cluster}"))
            .collect();
        let mut servers = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("nats{}", i + 1);
            let mut text = TEMPLATE
                .replace("@NAME@", &name)
                .replace("@PORT@", &port.to_string())
                .replace("@CLUSTER_PORT@", &cluster_port.to_string())
                .replace("@CLUSTER@", "invsync-faults")
                .replace("@ROUTES@", &routes.join(", "))
                .replace("@STORE_DIR@", &dir.join(&name).display().to_string());
            if !syncs_always {
                text = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("sync_interval"))
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(&config, text)?;
            servers.push(Server {
                log: dir.join(format!("{name}.log")),
                name,
                port: *port,
                config,
                proc: None,
            });
        }
        for s in &mut servers {
            s.start()?;
        }
        for s in &servers {
            procs::wait_port(s.port, Duration::from_secs(30), &s.name).await?;
        }
        let cluster = Self {
            servers,
            syncs_always,
        };
        // JetStream in a cluster answers once its meta group has a leader.
        let client = async_nats::connect(cluster.url_list()).await?;
        eventually(
            "the NATS cluster elects a JetStream leader",
            Duration::from_secs(60),
            || async {
                let answer = client.request("$JS.API.INFO", "".into()).await.ok()?;
                let info: serde_json::Value = serde_json::from_slice(&answer.payload).ok()?;
                info.get("error").is_none().then_some(())
            },
        )
        .await?;
        Ok(cluster)
    }

    /// Every server, comma-separated, as invsync's `--bus` takes them.
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    fn url_list(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect()
    }

    async fn stream(&self, name: &str) -> Result<async_nats::jetstream::stream::Stream> {
        let client = async_nats::connect(self.url_list()).await?;
        let js = async_nats::jetstream::new(client);
        js.get_stream(name).await.context("the stream")
    }

    /// The server that leads `stream`'s replicas now.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        let mut s = self.stream(stream).await.ok()?;
        let info = s.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.clone()?;
        self.servers.iter().position(|s| s.name == leader)
    }

    /// Waits until `stream` has a leader and every replica is current.
    pub async fn wait_stream_healthy(&self, stream: &str, limit: Duration) -> Result<()> {
        eventually(
            "the stream has a leader and current replicas",
            limit,
            || async {
                let mut s = self.stream(stream).await.ok()?;
                let info = s.info().await.ok()?;
                let cluster = info.cluster.as_ref()?;
                (cluster.leader.is_some()
                    && cluster.replicas.iter().all(|r| r.current && !r.offline))
                .then_some(())
            },
        )
        .await
    }

    /// kill -9 of server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(p) = self.servers.get_mut(i).and_then(|s| s.proc.as_mut()) {
            p.kill9();
        }
    }

    /// Starts server `i` again on its port and store.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        let Some(s) = self.servers.get_mut(i) else {
            bail!("no NATS server {i}");
        };
        s.start()?;
        procs::wait_port(s.port, Duration::from_secs(30), &s.name).await
    }

    /// The stream's last sequence now.
    pub async fn last_sequence(&self, stream: &str) -> Result<u64> {
        let mut s = self.stream(stream).await?;
        Ok(s.info().await?.state.last_sequence)
    }

    /// Deletes up to `count` messages after sequence `after` (every other one), behind
    /// invsync's back: a stream that lost what it had acknowledged. Returns how many.
    pub async fn delete_after(&self, stream: &str, after: u64, count: u64) -> Result<u64> {
        let mut s = self.stream(stream).await?;
        let state = s.info().await?.state.clone();
        let mut deleted = 0;
        let mut seq = after + 1;
        while deleted < count && seq <= state.last_sequence {
            if s.delete_message(seq).await.unwrap_or(false) {
                deleted += 1;
            }
            seq += 2;
        }
        Ok(deleted)
    }

    /// Every event id in `stream`, in stream order (read with an ordered consumer).
    pub async fn event_ids(&self, stream: &str) -> Result<Vec<String>> {
        let s = self.stream(stream).await?;
        let mut info = s.clone();
        let last = info.info().await?.state.last_sequence;
        let consumer = s
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        {
            let m = m?;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(u64::MAX);
            let value: serde_json::Value = serde_json::from_slice(&m.payload)?;
            if let Some(id) = value["id"].as_str() {
                out.push(id.to_owned());
            }
            if seq >= last {
                break;
            }
        }
        Ok(out)
    }
}
