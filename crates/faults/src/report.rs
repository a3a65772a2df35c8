//! The suite's report: what was found, and every fault with its measures, as Markdown
//! (for people and the repository) and JSON (for scripts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::check::{Convergence, Findings};
use crate::faults::{Fault, FaultKind};

#[derive(Debug, Serialize)]
pub struct Report {
    pub started: DateTime<Utc>,
    pub ended: DateTime<Utc>,
    pub ops: usize,
    pub nats_syncs_always: bool,
    pub findings: Findings,
    pub convergence: Vec<Convergence>,
    pub faults: Vec<Fault>,
    #[serde(skip)]
    pub dir: Option<PathBuf>,
}

/// Median and worst of some figures.
fn spread(mut xs: Vec<f64>) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let median = if xs.len() % 2 == 1 {
        xs[xs.len() / 2]
    } else {
        (xs[xs.len() / 2 - 1] + xs[xs.len() / 2]) / 2.0
    };
    Some((median, xs[xs.len() - 1]))
}

fn cell(v: Option<(f64, f64)>) -> String {
    v.map_or("—".into(), |(m, w)| format!("{m:.2} s / {w:.2} s"))
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.problems.is_empty()
    }

    /// Per fault kind: (count, writes back, delivery stall, duplicates).
    pub fn by_kind(&self) -> BTreeMap<FaultKind, Vec<&Fault>> {
        let mut out: BTreeMap<FaultKind, Vec<&Fault>> = BTreeMap::new();
        for f in &self.faults {
            out.entry(f.kind).or_default().push(f);
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        self.write_summary(&mut s);
        self.write_recovery(&mut s);
        self.write_operations(&mut s);
        self.write_convergence(&mut s);
        self.write_problems(&mut s);
        self.write_timeline(&mut s);
        s
    }

    /// The title, the run and its verdict, the topology.
    fn write_summary(&self, s: &mut String) {
        let _ = writeln!(s, "# Fault suite report\n");
        let _ = writeln!(
            s,
            "Run from {} to {} ({} s): {} operations, {} faults. Verdict: **{}**.\n",
            self.started.format("%Y-%m-%d %H:%M:%S UTC"),
            self.ended.format("%H:%M:%S UTC"),
            (self.ended - self.started).num_seconds(),
            self.ops,
            self.faults.len(),
            if self.ok() {
                "every check held"
            } else {
                "PROBLEMS FOUND"
            }
        );
        let _ = writeln!(
            s,
            "Topology: PostgreSQL 15 ×2 under Patroni (synchronous mode) with etcd; NATS \
             JetStream ×3, stream at 3 replicas ({}); two `invsync serve` (endpoint `shop` \
             on the leader, through NATS), `invsync consume wms` (through NATS) and two \
             `invsync consume erp --partitioned` (from the log).\n",
            if self.nats_syncs_always {
                "`sync_interval: always`"
            } else {
                "nats-server 2.9: no `sync_interval`, flushed on its own schedule"
            }
        );
    }

    /// Recovery by kind of fault.
    fn write_recovery(&self, s: &mut String) {
        let _ = writeln!(s, "## Recovery by fault (median / worst)\n");
        let _ = writeln!(
            s,
            "| fault | times | writes answered again | longest time without an acknowledged write | delivery stall at its endpoint | duplicates per fault (median / worst) | in flight, arrived after waking | started after waking | stale token refused |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for (kind, faults) in self.by_kind() {
            let writes = spread(faults.iter().filter_map(|f| f.writes_back_s).collect());
            let gap = spread(faults.iter().filter_map(|f| f.write_gap_s).collect());
            let stall = spread(faults.iter().filter_map(|f| f.delivery_stall_s).collect());
            let dups = spread(faults.iter().map(|f| f.duplicates as f64).collect());
            let wake: usize = faults.iter().map(|f| f.after_wake).sum();
            let started: usize = faults.iter().map(|f| f.started_after_wake).sum();
            let refused: usize = faults.iter().map(|f| f.stale_refused).sum();
            let pause = matches!(
                kind,
                FaultKind::LeaderPause | FaultKind::MemberPause | FaultKind::Partition
            );
            let _ = writeln!(
                s,
                "| {kind:?} (`{}`) | {} | {} | {} | {} | {} | {} | {} | {refused} |",
                kind.endpoint(),
                faults.len(),
                cell(writes),
                cell(gap),
                cell(stall),
                dups.map_or("—".into(), |(m, w)| format!("{m:.0} / {w:.0}")),
                if pause {
                    wake.to_string()
                } else {
                    "—".into()
                },
                if pause {
                    started.to_string()
                } else {
                    "—".into()
                },
            );
        }
    }

    /// The operations by outcome.
    fn write_operations(&self, s: &mut String) {
        let _ = writeln!(s, "\n## Operations\n");
        let _ = writeln!(s, "| kind | ok | failed | unknown |");
        let _ = writeln!(s, "| --- | --- | --- | --- |");
        for (kind, outcomes) in &self.findings.outcomes {
            let n = |k: &str| outcomes.get(k).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "| {kind} | {} | {} | {} |",
                n("ok"),
                n("failed"),
                n("unknown")
            );
        }
        let _ = writeln!(
            s,
            "\nUnknown outcomes: {} applied (once), {} not applied.\n",
            self.findings.unknown_applied, self.findings.unknown_not_applied
        );
    }

    /// How each reader converged on the log, and what the log holds.
    fn write_convergence(&self, s: &mut String) {
        let _ = writeln!(s, "## Convergence\n");
        let _ = writeln!(
            s,
            "| reader | events expected | missing | deliveries | duplicates | older version after a newer one |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
        for c in &self.convergence {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                c.name, c.expected, c.missing, c.deliveries, c.duplicates, c.out_of_order
            );
        }
        let _ = writeln!(
            s,
            "\nLog: {} events ({} stock events), {} reservations checked against \
             oversell, {} channel reservations against the configuration in force at their \
             offset.\n",
            self.findings.events,
            self.findings.stock_events,
            self.findings.reservations_checked,
            self.findings.channel_reservations_checked
        );
    }

    /// What did not hold.
    fn write_problems(&self, s: &mut String) {
        let _ = writeln!(s, "## Problems\n");
        if self.findings.problems.is_empty() {
            let _ = writeln!(s, "None.");
        }
        if let Some(dir) = &self.dir {
            let _ = writeln!(s, "The servers' logs are kept in `{}`.\n", dir.display());
        }
        for p in &self.findings.problems {
            let _ = writeln!(s, "- {p}");
        }
    }

    /// Every fault in the order injected.
    fn write_timeline(&self, s: &mut String) {
        let _ = writeln!(s, "\n## Faults in order\n");
        let _ = writeln!(
            s,
            "| at | fault | target | writes back | no write acknowledged | delivery stall | duplicates | note |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
        for f in &self.faults {
            let secs = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.2} s"));
            let _ = writeln!(
                s,
                "| {} | {:?} | {} | {} | {} | {} | {} | {} |",
                f.at.format("%H:%M:%S%.3f"),
                f.kind,
                f.target,
                secs(f.writes_back_s),
                secs(f.write_gap_s),
                secs(f.delivery_stall_s),
                f.duplicates,
                f.note
            );
        }
    }
}
