//! The fault suite's short run (`crates/faults`): invsync on two PostgreSQL nodes under
//! Patroni and a three-server NATS cluster, with two `serve` instances, a `consume`
//! process and a two-member partitioned group, under a mixed workload, while one fault
//! of each kind is injected: a primary killed, a switchover, the leading instance
//! killed and frozen, consumers killed and frozen, the stream's leader killed, messages
//! lost by the stream. Every operation is recorded and the whole history checked.
//! The long run is `scripts/fault-suite.sh`; its report is docs/faults/REPORT.md.

use std::path::PathBuf;

const BIN: &str = env!("CARGO_BIN_EXE_invsync");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_every_kind_of_fault_nothing_acknowledged_is_lost_nothing_oversold_and_every_reader_converges(
) {
    let tools = [
        ("Patroni", "patroni", "--version"),
        ("etcd", "etcd", "--version"),
        ("NATS server", "/usr/sbin/nats-server", "--version"),
        (
            "PostgreSQL 15",
            "/usr/lib/postgresql/15/bin/postgres",
            "--version",
        ),
    ];
    for (what, program, probe) in tools {
        if invsync_testkit::tool(what, program, &[probe]).is_none() {
            return;
        }
    }
    let plan = invsync_faults::Plan::rounds(PathBuf::from(BIN), 1);
    let report = invsync_faults::run(&plan)
        .await
        .expect("the fault suite ran");
    let text = report.markdown();
    println!("{text}");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-suite-report.md");
    let _ = std::fs::write(&out, &text);

    assert!(
        report.ok(),
        "the history check found problems (report: {}):\n{}",
        out.display(),
        report.findings.problems.join("\n")
    );
    // The workload really ran through the faults, and the checks really looked.
    let ok = |kind: &str| {
        report
            .findings
            .outcomes
            .get(kind)
            .and_then(|o| o.get("ok"))
            .copied()
            .unwrap_or(0)
    };
    for kind in [
        "ReserveStore",
        "ReserveChannel",
        "Release",
        "Fulfil",
        "TillSale",
        "StockIn",
    ] {
        assert!(ok(kind) > 10, "too few acknowledged {kind}: {}", ok(kind));
    }
    assert!(report.findings.channel_reservations_checked > 50);
    assert_eq!(
        report.faults.len(),
        invsync_faults::faults::FaultKind::ALL.len()
    );
    // The promise's bound, far above what is measured (report: 0.1–9 s): writes are
    // answered again, and every endpoint delivers again, within the 30 s SLA.
    for f in &report.faults {
        if f.kind.stops_writes() {
            let back = f.writes_back_s.expect("writes came back");
            assert!(
                back < 30.0,
                "{:?}: writes answered again after {back} s",
                f.kind
            );
        }
        let gap = f
            .write_gap_s
            .expect("writes were acknowledged after the fault");
        assert!(
            gap < 30.0,
            "{:?}: no write acknowledged for {gap} s",
            f.kind
        );
        let stall = f.delivery_stall_s.expect("deliveries were measured");
        assert!(stall < 30.0, "{:?}: delivery stalled {stall} s", f.kind);
    }
}
