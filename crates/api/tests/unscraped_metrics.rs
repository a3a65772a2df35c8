//! A server nobody scrapes must not keep its histogram samples: the recorder holds
//! every sample until something folds it into the buckets, and before the upkeep
//! thread that was only `/metrics` (the heap profile in BENCHMARKS.md, "Growth").
//!
//! One test in this binary: it counts the whole process's heap with dhat.

use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const SAMPLES: usize = 500_000;

#[test]
fn histogram_samples_are_folded_into_buckets_without_a_scrape() {
    let _profiler = dhat::Profiler::builder().testing().build();
    invsync_api::telemetry::init();
    let histogram = metrics::histogram!("invsync_sync_latency_seconds", "consumer" => "test");
    let before = dhat::HeapStats::get().curr_bytes;
    for i in 0..SAMPLES {
        histogram.record(i as f64 / 1e6);
    }
    let held = dhat::HeapStats::get().curr_bytes.saturating_sub(before);
    // The samples really are held first (8 bytes each), so the test measures the drain.
    assert!(
        held >= SAMPLES * 8 / 2,
        "recording {SAMPLES} samples held only {held} bytes"
    );

    // The server goes on recording, as a live one does (samples are freed through
    // crossbeam's epochs, which advance as threads record).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for _ in 0..1_000 {
            histogram.record(0.001);
        }
        let still = dhat::HeapStats::get().curr_bytes.saturating_sub(before);
        if still < held / 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{still} of the {held} bytes the samples took are still held after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
