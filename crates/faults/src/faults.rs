//! The faults the suite injects, each followed by what an operator's supervisor would
//! do (start what was killed again, wake what was frozen), and what was measured.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::history::History;
use crate::invsync::Instance;
use crate::nats::NatsCluster;
use crate::patroni::PgCluster;
use crate::procs::eventually;

/// The stream invsync publishes to.
pub const STREAM: &str = "INVSYNC_EVENTS";
/// How long a frozen process stays frozen.
const PAUSE: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// kill -9 of the PostgreSQL primary's Patroni and postmaster: a failover.
    PrimaryKill,
    /// A planned switchover to the synchronous standby.
    Switchover,
    /// kill -9 of the `serve` instance that leads (bus relay, shared endpoint `shop`).
    LeaderKill,
    /// SIGSTOP of the leading `serve` instance for 8 s, then SIGCONT.
    LeaderPause,
    /// kill -9 of `consume wms` (reading NATS) mid-delivery, started again at once.
    ConsumerKill,
    /// kill -9 of a `consume erp --partitioned` member, started again 3 s later.
    MemberKill,
    /// SIGSTOP of a `consume erp --partitioned` member for 8 s, then SIGCONT.
    MemberPause,
    /// kill -9 of the NATS server that leads the stream, started again 5 s later.
    NatsLeaderKill,
    /// The leading `serve` instance cut off from every PostgreSQL node for 8 s (no
    /// packet crosses, nothing is closed), then the network heals.
    Partition,
    /// Messages deleted from the stream behind invsync's back (a bus that lost what it
    /// acknowledged) while `consume wms` is frozen, so that it meets the holes.
    StreamLoss,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        Self::PrimaryKill,
        Self::Switchover,
        Self::LeaderKill,
        Self::LeaderPause,
        Self::ConsumerKill,
        Self::MemberKill,
        Self::MemberPause,
        Self::NatsLeaderKill,
        Self::Partition,
        Self::StreamLoss,
    ];

    /// The endpoint whose deliveries show this fault's effect.
    pub fn endpoint(self) -> &'static str {
        match self {
            Self::ConsumerKill | Self::StreamLoss => "wms",
            Self::MemberKill | Self::MemberPause => "erp",
            _ => "shop",
        }
    }

    /// Whether it stops writes (so "writes answered again" is its measure).
    pub fn stops_writes(self) -> bool {
        matches!(self, Self::PrimaryKill | Self::Switchover)
    }
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// What it struck: a node, an instance, a server.
    pub target: String,
    pub at: DateTime<Utc>,
    /// When a frozen process was woken (pauses only).
    pub resumed: Option<DateTime<Utc>>,
    /// When the supervisor's part was done (restarted, woken, healthy again).
    pub healed: DateTime<Utc>,
    /// Seconds from the fault to the first acknowledged write sent after it.
    pub writes_back_s: Option<f64>,
    /// The longest stretch, from the fault to the next one, without any write
    /// acknowledged: the outage as clients saw it (a switchover's starts a moment after
    /// it was asked for).
    pub write_gap_s: Option<f64>,
    /// The worst delivery latency at the fault's endpoint of the events committed in
    /// the 5 s after it (or the first 20 after it): how long delivery stalled.
    pub delivery_stall_s: Option<f64>,
    /// Re-deliveries at the endpoint between this fault and the next.
    pub duplicates: usize,
    /// Requests of the frozen process that arrived after it woke and before it held
    /// a lease again: at most what it had already handed to its HTTP client when it
    /// froze (one per SKU), never a delivery started after waking.
    pub after_wake: usize,
    /// Of those, a SKU's second: a delivery started after waking (must be 0).
    pub started_after_wake: usize,
    /// Requests the receiver refused for a stale fencing token, between this fault
    /// and the next.
    pub stale_refused: usize,
    pub note: String,
}

impl Fault {
    /// A fault just struck and healed; its measures are filled in after the run.
    fn struck(
        kind: FaultKind,
        target: String,
        at: DateTime<Utc>,
        resumed: Option<DateTime<Utc>>,
        note: String,
    ) -> Self {
        Self {
            kind,
            target,
            at,
            resumed,
            healed: Utc::now(),
            writes_back_s: None,
            write_gap_s: None,
            delivery_stall_s: None,
            duplicates: 0,
            after_wake: 0,
            started_after_wake: 0,
            stale_refused: 0,
            note,
        }
    }
}

/// Everything a fault can strike.
pub struct World<'a> {
    pub pg: &'a mut PgCluster,
    pub nats: &'a mut NatsCluster,
    pub serve: &'a mut [Instance],
    pub wms: &'a mut Instance,
    pub erp: &'a mut [Instance],
    /// Each `serve` instance's proxies to the PostgreSQL nodes.
    pub proxies: &'a [Vec<crate::proxy::Proxy>],
    pub http: &'a reqwest::Client,
    pub history: &'a History,
}

impl World<'_> {
    /// The `serve` instance that leads, waiting for one to.
    async fn leader(&self) -> Result<usize> {
        eventually(
            "a serve instance leads",
            Duration::from_secs(30),
            || async {
                for (i, s) in self.serve.iter().enumerate() {
                    if s.leads(self.http).await {
                        return Some(i);
                    }
                }
                None
            },
        )
        .await
    }

    /// Waits until an acknowledged write was sent after `at`.
    async fn writes_back(&self, at: DateTime<Utc>) -> Result<()> {
        eventually(
            "writes are acknowledged again",
            Duration::from_secs(90),
            || async {
                self.history
                    .ops()
                    .iter()
                    .any(|op| op.ok() && op.kind.is_stock_write() && op.invoked > at)
                    .then_some(())
            },
        )
        .await
    }

    /// Every `serve` instance says in `/readyz` that it follows the primary there is now,
    /// and names the NATS server it is connected to.
    async fn readyz_follows_primary(&self, old: usize) -> Result<()> {
        let primary = self.pg.new_leader_address(old).await?;
        for s in self.serve.iter() {
            let url = format!("{}/readyz", s.url());
            let last = std::sync::Mutex::new(serde_json::Value::Null);
            let seen = eventually(
                &format!("{} reports the primary {primary} in /readyz", s.name),
                Duration::from_secs(60),
                || async {
                    let v: serde_json::Value =
                        self.http.get(&url).send().await.ok()?.json().await.ok()?;
                    let ok = v["ledger_server"] == primary.as_str() && v["bus_server"].is_string();
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = v;
                    ok.then_some(())
                },
            )
            .await;
            seen.with_context(|| {
                format!(
                    "its last /readyz: {}",
                    last.lock().unwrap_or_else(|e| e.into_inner())
                )
            })?;
        }
        Ok(())
    }

    /// Injects `kind`, then heals; returns the fault (measures filled in later).
    pub async fn inject(&mut self, kind: FaultKind) -> Result<Fault> {
        let mut resumed = None;
        let (at, target, note) = match kind {
            FaultKind::PrimaryKill => {
                let (node, at) = self.pg.kill_primary().await?;
                self.writes_back(at).await?;
                self.readyz_follows_primary(node).await?;
                self.pg.restart(node)?;
                self.pg.wait_healthy(Duration::from_secs(180)).await?;
                (at, format!("postgres node {}", node + 1), String::new())
            }
            FaultKind::Switchover => {
                let at = Utc::now();
                let from = self.pg.switchover().await?;
                self.writes_back(at).await?;
                self.readyz_follows_primary(from).await?;
                self.pg.wait_healthy(Duration::from_secs(180)).await?;
                (at, "postgres".into(), String::new())
            }
            FaultKind::LeaderKill => {
                let i = self.leader().await?;
                let at = Utc::now();
                self.serve[i].kill9();
                let other = self.leader().await?;
                let note = format!("{} leads after", self.serve[other].name);
                self.serve[i].start(self.http).await?;
                (at, self.serve[i].name.clone(), note)
            }
            FaultKind::LeaderPause => {
                let i = self.leader().await?;
                let at = Utc::now();
                self.serve[i].pause()?;
                tokio::time::sleep(PAUSE).await;
                self.serve[i].resume()?;
                resumed = Some(Utc::now());
                (at, self.serve[i].name.clone(), String::new())
            }
            FaultKind::ConsumerKill => {
                let at = Utc::now();
                self.wms.kill9();
                self.wms.start(self.http).await?;
                (at, self.wms.name.clone(), String::new())
            }
            FaultKind::MemberKill => {
                let at = Utc::now();
                self.erp[0].kill9();
                tokio::time::sleep(Duration::from_secs(3)).await;
                self.erp[0].start(self.http).await?;
                (at, self.erp[0].name.clone(), String::new())
            }
            FaultKind::MemberPause => {
                let member = self.erp.len() - 1;
                let at = Utc::now();
                self.erp[member].pause()?;
                tokio::time::sleep(PAUSE).await;
                self.erp[member].resume()?;
                resumed = Some(Utc::now());
                (at, self.erp[member].name.clone(), String::new())
            }
            FaultKind::NatsLeaderKill => {
                let Some(leader) = self.nats.stream_leader(STREAM).await else {
                    bail!("the stream has no leader to kill");
                };
                let at = Utc::now();
                self.nats.kill(leader);
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.nats.restart(leader).await?;
                self.nats
                    .wait_stream_healthy(STREAM, Duration::from_secs(60))
                    .await?;
                (at, format!("nats{}", leader + 1), String::new())
            }
            FaultKind::Partition => {
                let i = self.leader().await?;
                let at = Utc::now();
                for p in &self.proxies[i] {
                    p.cut();
                }
                tokio::time::sleep(PAUSE).await;
                for p in &self.proxies[i] {
                    p.heal();
                }
                // Once its lease ran out (3 s), the cut-off leader may start no
                // delivery: checked from then on, like a frozen one after it woke.
                resumed = Some(at + chrono::Duration::seconds(3));
                (at, self.serve[i].name.clone(), String::new())
            }
            FaultKind::StreamLoss => {
                let from = self.nats.last_sequence(STREAM).await?;
                let at = Utc::now();
                self.wms.pause()?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let deleted = self.nats.delete_after(STREAM, from, 20).await;
                self.wms.resume()?;
                (
                    at,
                    "stream".into(),
                    format!("{} messages deleted", deleted?),
                )
            }
        };
        self.back_in_service().await?;
        Ok(Fault::struck(kind, target, at, resumed, note))
    }

    /// Whatever was struck is back in service before the next fault.
    async fn back_in_service(&mut self) -> Result<()> {
        for s in self.serve.iter_mut().chain(self.erp.iter_mut()) {
            if !s.running() {
                s.start(self.http).await?;
            }
        }
        Ok(())
    }
}
