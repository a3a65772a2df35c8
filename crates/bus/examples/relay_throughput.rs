//! How many events per second the relay publishes to NATS JetStream.
//!
//! Fills a SQLite ledger with N events (default 100,000, over 10,000 SKUs), starts a
//! private `nats-server -js` (file storage), and times `BusRelay::publish_after`
//! draining the whole log onto a fresh stream, three times with up to 256 publishes
//! awaiting their ack (what `serve` uses) and three times awaiting each ack before the
//! next publish (the baseline). Prints every run and the medians.
//!
//!     cargo run --release -p invsync-bus --example relay_throughput [-- EVENTS]

use std::sync::Arc;
use std::time::Instant;

use invsync_bus::{BusRelay, NatsBus, NatsConfig};
use invsync_core::{Adjust, AdjustReason, Change, Delta, Sku, StoreId};
use invsync_ledger::{Ledger, SqliteConfig, SqliteLedger, SystemClock};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 100_000,
    };
    let Some(nats) = invsync_testkit::Nats::start() else {
        anyhow::bail!("nats-server is not installed");
    };
    let dir = tempfile::tempdir()?;
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(
        SqliteConfig::new(dir.path().join("ledger.db")),
        Arc::new(SystemClock),
    )?);
    eprintln!("writing {events} events");
    for chunk in (0..events).collect::<Vec<_>>().chunks(1000) {
        let commands = chunk
            .iter()
            .map(|i| -> anyhow::Result<Adjust> {
                Ok(Adjust {
                    store_id: StoreId::parse(format!("S{}", i % 10))?,
                    sku: Sku::parse(format!("SKU-{:05}", i % 10_000))?,
                    change: Change::Delta(Delta::new(1)?),
                    reason: AdjustReason::StockIn,
                    external_ref: None,
                    if_version: None,
                    channel: None,
                    idempotency_key: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for outcome in ledger.adjust_many(commands).await {
            outcome?;
        }
    }

    let mut summary = Vec::new();
    for in_flight in [256, 1] {
        let mut rates = Vec::new();
        for run in 1..=3 {
            let mut config = NatsConfig::new(nats.url());
            config.in_flight = in_flight;
            let bus = NatsBus::connect(config).await?;
            let _ = bus.jetstream().delete_stream("INVSYNC_EVENTS").await;
            bus.ensure_streams().await?;
            let (relay, _) = BusRelay::new(bus.clone(), ledger.clone());
            let started = Instant::now();
            let mut cursor = 0;
            while let Some(last) = relay.publish_after(cursor, 1000).await? {
                cursor = last;
            }
            let rate = events as f64 / started.elapsed().as_secs_f64();
            let stored = bus.stream().await?.info().await?.state.messages;
            anyhow::ensure!(
                stored == events as u64,
                "the stream holds {stored} of {events}"
            );
            println!("in_flight={in_flight} run={run} events={events} events_per_s={rate:.0}");
            rates.push(rate);
        }
        rates.sort_by(f64::total_cmp);
        summary.push((in_flight, rates[1]));
    }
    let (pipelined, one_by_one) = (summary[0].1, summary[1].1);
    println!(
        "median: {pipelined:.0} events/s with 256 in flight, {one_by_one:.0} events/s one by one ({:.1}x)",
        pipelined / one_by_one
    );
    Ok(())
}
