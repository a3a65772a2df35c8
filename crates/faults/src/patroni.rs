//! PostgreSQL 15 with streaming replication and automatic failover: two nodes managed
//! by Patroni, with one etcd as its consensus store, all on loopback. Each node runs
//! `deploy/patroni/patroni.yml` with its ports and directories filled in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::procs::{self, as_postgres, eventually, free_port, give_to_postgres, Proc};

/// The template every node runs (the repository's own deploy file).
const TEMPLATE: &str = include_str!("../../../deploy/patroni/patroni.yml");

struct Node {
    name: String,
    rest_port: u16,
    pg_port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    fn config(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }

    fn start(&mut self) -> Result<()> {
        let mut command = as_postgres("patroni");
        command.arg(self.config());
        self.proc = Some(Proc::spawn(
            &self.name,
            command,
            &self.dir.join("patroni.log"),
        )?);
        Ok(())
    }

    /// The postmaster's pid, from its data directory.
    fn postmaster(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// kill -9 of the node's Patroni (and of `runuser` above it), its postmaster and
    /// every backend, walsender and helper of it: a host lost at once. Each is frozen
    /// first, so that none commits or streams anything while the others die.
    fn kill9(&mut self) -> chrono::DateTime<chrono::Utc> {
        let mut pids = Vec::new();
        if let Some(pid) = self.proc.as_ref().and_then(Proc::pid) {
            pids.push(pid);
            pids.extend(procs::children(pid));
        }
        if let Some(pid) = self.postmaster() {
            pids.push(pid);
            pids.extend(procs::children(pid));
        }
        let at = chrono::Utc::now();
        procs::signal_all(&pids, "STOP");
        procs::signal_all(&pids, "KILL");
        if let Some(proc) = self.proc.as_mut() {
            proc.kill9();
        }
        self.proc = None;
        at
    }
}

pub struct PgCluster {
    _etcd: Proc,
    nodes: Vec<Node>,
    dir: PathBuf,
    http: reqwest::Client,
}

impl PgCluster {
    /// etcd, then node 1 (bootstraps and leads), then node 2 (its synchronous standby);
    /// then the `invsync` database.
    pub async fn start(dir: &Path) -> Result<Self> {
        for (what, program) in [("Patroni", "patroni"), ("etcd", "etcd")] {
            if Command::new("which")
                .arg(program)
                .output()
                .map_or(true, |o| !o.status.success())
            {
                bail!("{what} is not installed (Debian: patroni etcd-server)");
            }
        }
        let dir = dir.join("pg");
        std::fs::create_dir_all(&dir)?;
        let (client, peer) = (free_port()?, free_port()?);
        let etcd_dir = dir.join("etcd");
        let mut etcd = Command::new("etcd");
        etcd.args(["--name", "e1", "--data-dir"])
            .arg(&etcd_dir)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("e1=http://127.0.0.1:{peer}"),
            ]);
        let etcd = Proc::spawn("etcd", etcd, &dir.join("etcd.log"))?;
        procs::wait_port(client, Duration::from_secs(30), "etcd").await?;
        let scope = format!("invsync-faults-{}", std::process::id());
        let mut nodes = Vec::new();
        for i in 1..=2 {
            let node_dir = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let node = Node {
                name: format!("n{i}"),
                rest_port: free_port()?,
                pg_port: free_port()?,
                dir: node_dir.clone(),
                proc: None,
            };
            let text = TEMPLATE
                .replace("@SCOPE@", &scope)
                .replace("@NAME@", &node.name)
                .replace("@REST_PORT@", &node.rest_port.to_string())
                .replace("@ETCD_HOSTS@", &format!("127.0.0.1:{client}"))
                .replace("@PG_PORT@", &node.pg_port.to_string())
                .replace("@DATA_DIR@", &node_dir.join("data").display().to_string())
                .replace("@DIR@", &node_dir.display().to_string());
            std::fs::write(node.config(), text)?;
            nodes.push(node);
        }
        give_to_postgres(&dir)?;
        // PostgreSQL wants its directories private.
        for node in &nodes {
            let _ = Command::new("chmod").arg("700").arg(&node.dir).status();
        }
        let mut cluster = Self {
            _etcd: etcd,
            nodes,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()?,
        };
        cluster.nodes[0].start()?;
        eventually(
            "node 1 bootstraps and leads",
            Duration::from_secs(90),
            || async { (cluster.leader().await == Some(0)).then_some(()) },
        )
        .await?;
        cluster.nodes[1].start()?;
        cluster.wait_healthy(Duration::from_secs(120)).await?;
        let url = cluster.url_of("postgres");
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
            c.batch_execute("CREATE DATABASE invsync")?;
            Ok(())
        })
        .await??;
        Ok(cluster)
    }

    /// What invsync is given: every node, and "the one that takes writes".
    pub fn url(&self) -> String {
        self.url_of("invsync")
    }

    /// The nodes' PostgreSQL ports, in node order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.pg_port).collect()
    }

    /// [`url`](Self::url) through other ports (a proxy per node, in node order).
    pub fn url_through(ports: &[u16]) -> String {
        let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!(
            "postgres://postgres@{}/invsync?target_session_attrs=read-write&connect_timeout=2",
            hosts.join(",")
        )
    }

    fn url_of(&self, db: &str) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.pg_port))
            .collect();
        format!(
            "postgres://postgres@{}/{db}?target_session_attrs=read-write&connect_timeout=2",
            hosts.join(",")
        )
    }

    /// Patroni's view of the cluster, from the first node that answers.
    async fn members(&self) -> Option<Vec<Value>> {
        for node in &self.nodes {
            let url = format!("http://127.0.0.1:{}/cluster", node.rest_port);
            if let Ok(r) = self.http.get(&url).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    return v["members"].as_array().cloned();
                }
            }
        }
        None
    }

    /// The node that leads now, if one does.
    pub async fn leader(&self) -> Option<usize> {
        let members = self.members().await?;
        let name = members
            .iter()
            .find(|m| m["role"] == "leader" && m["state"] == "running")?["name"]
            .as_str()?
            .to_owned();
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Waits until a leader runs with a streaming synchronous standby.
    pub async fn wait_healthy(&self, limit: Duration) -> Result<()> {
        eventually(
            "PostgreSQL has a leader and a synchronous standby",
            limit,
            || async {
                let members = self.members().await?;
                let leader = members
                    .iter()
                    .any(|m| m["role"] == "leader" && m["state"] == "running");
                let sync = members.iter().any(|m| {
                    m["role"] == "sync_standby"
                        && (m["state"] == "streaming" || m["state"] == "running")
                });
                (leader && sync).then_some(())
            },
        )
        .await
        .with_context(|| format!("see the logs under {}", self.dir.display()))
    }

    /// `host:port` of the node that leads now, other than `not` (the node just
    /// killed or switched from: Patroni's view names it until its key lapses), waiting
    /// up to a minute for one.
    pub async fn new_leader_address(&self, not: usize) -> Result<String> {
        let leader = eventually(
            "a new PostgreSQL leader",
            Duration::from_secs(60),
            || async { self.leader().await.filter(|l| *l != not) },
        )
        .await?;
        Ok(format!("127.0.0.1:{}", self.nodes[leader].pg_port))
    }

    /// The leader, waiting up to 30 s for one.
    async fn wait_leader(&self) -> Result<usize> {
        eventually("a PostgreSQL leader", Duration::from_secs(30), || {
            self.leader()
        })
        .await
    }

    /// kill -9 of the primary's Patroni and postmaster; returns the node's index and
    /// the moment the first signal went out.
    pub async fn kill_primary(&mut self) -> Result<(usize, chrono::DateTime<chrono::Utc>)> {
        let leader = self.wait_leader().await?;
        let at = self.nodes[leader].kill9();
        Ok((leader, at))
    }

    /// Starts a killed node's Patroni again: it rejoins as a standby (pg_rewind).
    pub fn restart(&mut self, node: usize) -> Result<()> {
        let Some(n) = self.nodes.get_mut(node) else {
            bail!("no node {node}");
        };
        // A postmaster that outlived its Patroni would hold the port.
        if let Some(pid) = n.postmaster() {
            let _ = procs::signal(pid, "KILL");
        }
        n.start()
    }

    /// A planned switchover to the synchronous standby, through Patroni's REST API;
    /// asked again while Patroni refuses it (its synchronous standby not yet recorded
    /// after a node rejoined), for up to a minute.
    /// Returns the node it switched from.
    pub async fn switchover(&self) -> Result<usize> {
        let mut last = String::new();
        for _ in 0..60 {
            match self.switchover_once().await {
                Ok(from) => return Ok(from),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        bail!("switchover refused for a minute: {last}")
    }

    async fn switchover_once(&self) -> Result<usize> {
        let leader = self.wait_leader().await?;
        let candidate = (leader + 1) % self.nodes.len();
        let url = format!(
            "http://127.0.0.1:{}/switchover",
            self.nodes[leader].rest_port
        );
        let answer = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?
            .post(&url)
            .json(&serde_json::json!({
                "leader": self.nodes[leader].name,
                "candidate": self.nodes[candidate].name,
            }))
            .send()
            .await?;
        if !answer.status().is_success() {
            bail!(
                "switchover refused: {}",
                answer.text().await.unwrap_or_default()
            );
        }
        Ok(leader)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill9();
        }
    }
}
