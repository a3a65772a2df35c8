//! The NATS bus against a real, private `nats-server -js` and a real SQLite ledger.

// Test helpers unwrap freely: a failure is the test failing, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use invsync_bus::{subject, BusRelay, NatsBus, NatsConfig, NatsSource, OFFSET_HEADER};
use invsync_consumers::storefront::{Storefront, StorefrontReader};
use invsync_consumers::{
    ConsumerConfig, ConsumerHandle, EventSource, Failure, Incoming, ReplayFrom, Sink,
};
use invsync_core::{Adjust, AdjustReason, Change, Delta, Sku, StoreId};
use invsync_ledger::{Ledger, SqliteConfig, SqliteLedger, SystemClock};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(30);

struct World {
    nats: invsync_testkit::Nats,
    ledger: Arc<dyn Ledger>,
    dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
}

impl World {
    async fn start() -> Option<Self> {
        let nats = invsync_testkit::Nats::start()?;
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(
            SqliteConfig::new(dir.path().join("ledger.db")),
            Arc::new(SystemClock),
        )
        .unwrap();
        Some(Self {
            nats,
            ledger: Arc::new(ledger),
            dir,
            stop: watch::channel(false).0,
        })
    }

    fn config(&self) -> NatsConfig {
        let mut c = NatsConfig::new(self.nats.url());
        c.retention = Duration::from_secs(3600);
        c
    }

    async fn bus(&self) -> NatsBus {
        let bus = NatsBus::connect(self.config()).await.unwrap();
        eventually("the streams exist", || async {
            bus.ensure_streams().await.is_ok()
        })
        .await;
        bus
    }

    /// Starts the relay in the background.
    async fn relay(&self, bus: &NatsBus) -> watch::Receiver<invsync_bus::RelayProgress> {
        let (relay, progress) = BusRelay::new(bus.clone(), self.ledger.clone());
        tokio::spawn(relay.run(self.stop.subscribe()));
        progress
    }

    async fn consumer(
        &self,
        name: &str,
        sink: Arc<dyn Sink>,
        source: Arc<dyn EventSource>,
    ) -> ConsumerHandle {
        let mut config = ConsumerConfig::new(name, self.dir.path().join(format!("{name}.db")));
        config.poll = Duration::from_millis(200);
        let (handle, run) = invsync_consumers::start(
            config,
            sink,
            self.ledger.clone(),
            source,
            self.stop.subscribe(),
        )
        .unwrap();
        tokio::spawn(run);
        handle
    }

    async fn adjust(&self, store: &str, sku: &str, delta: i64) {
        self.ledger
            .adjust(Adjust {
                store_id: StoreId::parse(store).unwrap(),
                sku: Sku::parse(sku).unwrap(),
                change: Change::Delta(Delta::new(delta).unwrap()),
                reason: AdjustReason::StockIn,
                external_ref: None,
                if_version: None,
                channel: None,
                idempotency_key: None,
            })
            .await
            .unwrap();
    }

    fn head(&self) -> i64 {
        *self.ledger.subscribe().borrow()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message of the event stream: (sequence, subject, Nats-Msg-Id, offset).
async fn stream_messages(bus: &NatsBus) -> Vec<(u64, String, String, i64)> {
    let mut stream = bus.stream().await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let header = |name: &str| m.headers.get(name).unwrap().as_str().to_owned();
        out.push((
            seq,
            m.subject.to_string(),
            header("Nats-Msg-Id"),
            header(OFFSET_HEADER).parse().unwrap(),
        ));
    }
    out
}

/// SKUs as real catalogues have them (api.md: any UTF-8 without control characters),
/// several with characters that mean something in a NATS subject (`.`, `*`, `>`,
/// white space), and one that spells another's escaped form.
const SKUS: [&str; 9] = [
    "plain",
    "with.dot",
    "a:b",
    "-_.-",
    "x.y.z",
    "TSHIRT RED/XL",
    "CAFÉ-1 *>",
    "with~2Edot",
    "商品",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_created_with_the_retention_and_updated_when_it_changes() {
    let Some(world) = World::start().await else {
        return;
    };
    let bus = world.bus().await;
    let mut stream = bus.stream().await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(3600));
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
    assert_eq!(config.subjects, vec!["invsync.events.>".to_owned()]);

    let mut changed = world.config();
    changed.retention = Duration::from_secs(7200);
    let again = NatsBus::connect(changed).await.unwrap();
    again.ensure_streams().await.unwrap();
    let mut stream = again.stream().await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.max_age,
        Duration::from_secs(7200),
        "a restart with another --retention updates MaxAge"
    );
    let dlq = again
        .jetstream()
        .get_stream("INVSYNC_DLQ")
        .await
        .expect("the dead-letter stream exists");
    assert_eq!(dlq.cached_info().config.subjects, vec!["invsync.dlq.>"]);
}

/// The relay published a range and died before it moved its cursor: the next relay
/// publishes the range again, and the stream keeps each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_publish_and_cursor_advance_leaves_each_event_once_on_its_subject() {
    let Some(world) = World::start().await else {
        return;
    };
    for i in 0..60 {
        world.adjust("S1", SKUS[i % SKUS.len()], 1).await;
    }
    let bus = world.bus().await;
    let (crashed, _) = BusRelay::new(bus.clone(), world.ledger.clone());
    assert_eq!(crashed.publish_after(0, 40).await.unwrap(), Some(40));
    drop(crashed);
    let name = BusRelay::cursor_name(&bus);
    assert_eq!(
        world.ledger.cursor(&name).await.unwrap(),
        0,
        "the cursor never moved"
    );

    let mut progress = world.relay(&bus).await;
    progress
        .wait_for(|p| p.published == 60)
        .await
        .expect("the relay catches up");
    assert_eq!(world.ledger.cursor(&name).await.unwrap(), 60);

    let messages = stream_messages(&bus).await;
    assert_eq!(messages.len(), 60, "40 repeats were dropped as duplicates");
    let page = world.ledger.events(0, 100).await.unwrap();
    for ((_, subject, id, offset), logged) in messages.iter().zip(&page.events) {
        let event = invsync_core::CloudEvent::parse(logged.envelope.as_bytes()).unwrap();
        assert_eq!(*offset, logged.offset, "in offset order");
        assert_eq!(*id, event.id.to_string(), "Nats-Msg-Id is the event id");
        assert_eq!(
            *subject,
            subject::event_subject(event.data.product_sku.as_str(), 16)
        );
        assert_eq!(subject.split('.').count(), 4, "{subject} has four tokens");
        assert!(!subject.contains([' ', '*', '>']), "{subject}");
    }
    // Two SKUs never share a subject.
    let mut owners: HashMap<&str, String> = HashMap::new();
    for ((_, subject, _, _), logged) in messages.iter().zip(&page.events) {
        let event = invsync_core::CloudEvent::parse(logged.envelope.as_bytes()).unwrap();
        let sku = event.data.product_sku.to_string();
        let owner = owners
            .entry(subject.as_str())
            .or_insert_with(|| sku.clone());
        assert_eq!(*owner, sku, "{subject} carries two SKUs");
    }
    assert_eq!(owners.len(), SKUS.len(), "one subject per SKU");

    // New events keep flowing once the relay runs.
    world.adjust("S2", "later", 5).await;
    progress.wait_for(|p| p.published == 61).await.unwrap();
    assert_eq!(stream_messages(&bus).await.len(), 61);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storefront_over_nats_converges_and_follows_new_events() {
    let Some(world) = World::start().await else {
        return;
    };
    for i in 0..30 {
        world
            .adjust(&format!("S{}", i % 3), SKUS[i % SKUS.len()], 2)
            .await;
    }
    let bus = world.bus().await;
    world.relay(&bus).await;
    let source = Arc::new(NatsSource::new(bus.clone(), "storefront-test"));
    let handle = world
        .consumer("storefront", Arc::new(Storefront), source)
        .await;
    let head = world.head();
    eventually("the storefront applied everything", || async {
        handle.status().position == head
    })
    .await;
    world.adjust("S9", "with.dot", 7).await;
    let head = world.head();
    eventually("the storefront applied the new event", || async {
        handle.status().position == head
    })
    .await;

    let reader = StorefrontReader::new(handle.reader().clone());
    for row in world.ledger.all_stock().await.unwrap() {
        let view = reader.availability(row.sku.to_string()).await.unwrap();
        let seen = view
            .iter()
            .find(|v| v.store_id == row.store_id.as_str())
            .unwrap_or_else(|| panic!("{} {} missing", row.store_id, row.sku));
        assert_eq!(
            (seen.available, seen.version),
            (row.level.available(), row.level.version())
        );
    }
    assert_eq!(handle.status().lag_events, 0, "nothing pending on the bus");
}

/// A sink that records every delivery and refuses one SKU for good.
#[derive(Default)]
struct Recorder {
    delivered: Mutex<Vec<i64>>,
    refuse: Option<&'static str>,
}

#[async_trait]
impl Sink for Recorder {
    fn delivers(&self) -> bool {
        true
    }

    async fn deliver(&self, event: &Incoming) -> Result<(), Failure> {
        if Some(event.event.product_sku.as_str()) == self.refuse {
            return Err(Failure::Permanent("422 unknown SKU".into()));
        }
        self.delivered.lock().unwrap().push(event.offset);
        Ok(())
    }
}

impl Recorder {
    fn counts(&self) -> HashMap<i64, usize> {
        let mut counts = HashMap::new();
        for offset in self.delivered.lock().unwrap().iter() {
            *counts.entry(*offset).or_default() += 1;
        }
        counts
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_offset_and_by_time_redelivers_from_there_on() {
    let Some(world) = World::start().await else {
        return;
    };
    for i in 0..20 {
        world.adjust("S1", SKUS[i % SKUS.len()], 1).await;
    }
    let bus = world.bus().await;
    world.relay(&bus).await;
    let sink = Arc::new(Recorder::default());
    let source = Arc::new(NatsSource::new(bus.clone(), "webhook"));
    let handle = world.consumer("webhook", sink.clone(), source).await;
    eventually("everything delivered", || async {
        handle.status().position == 20
    })
    .await;
    assert!(sink.counts().values().all(|n| *n == 1), "once each");

    handle.replay(ReplayFrom::Offset(15)).await.unwrap();
    eventually("offsets 15..=20 delivered again", || async {
        (15..=20).all(|o| sink.counts().get(&o) == Some(&2))
    })
    .await;
    let counts = sink.counts();
    assert!((1..15).all(|o| counts[&o] == 1), "nothing before 15 again");

    let page = world.ledger.events(9, 1).await.unwrap();
    let tenth = invsync_core::CloudEvent::parse(page.events[0].envelope.as_bytes()).unwrap();
    handle
        .replay(ReplayFrom::Time(tenth.data.occurred_at))
        .await
        .unwrap();
    eventually("offsets 10..=20 delivered again", || async {
        let c = sink.counts();
        (10..15).all(|o| c.get(&o) == Some(&2)) && (15..=20).all(|o| c.get(&o) == Some(&3))
    })
    .await;
    assert!((1..10).all(|o| sink.counts()[&o] == 1));
    assert_eq!(
        sink.delivered.lock().unwrap().len(),
        20 + 6 + 11,
        "nothing delivered beyond the two replays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_goes_to_the_dead_letter_stream_with_its_reason() {
    let Some(world) = World::start().await else {
        return;
    };
    world.adjust("S1", "good", 1).await;
    world.adjust("S1", "with.dot", 1).await;
    world.adjust("S1", "good", 1).await;
    let bus = world.bus().await;
    world.relay(&bus).await;
    let sink = Arc::new(Recorder {
        refuse: Some("with.dot"),
        ..Recorder::default()
    });
    let source = Arc::new(NatsSource::new(bus.clone(), "webhook"));
    let handle = world.consumer("webhook", sink.clone(), source).await;
    eventually("all settled", || async { handle.status().position == 3 }).await;
    assert_eq!(handle.status().dead_letters, 1);
    assert_eq!(
        sink.counts().keys().copied().collect::<HashSet<_>>(),
        HashSet::from([1, 3])
    );

    let js = bus.jetstream().clone();
    eventually("the dead letter is on the DLQ stream", || {
        let js = js.clone();
        async move {
            let mut dlq = js.get_stream("INVSYNC_DLQ").await.unwrap();
            dlq.info().await.unwrap().state.messages == 1
        }
    })
    .await;
    let dlq = js.get_stream("INVSYNC_DLQ").await.unwrap();
    let m = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(m.subject.as_str(), "invsync.dlq.webhook");
    let header = |n: &str| m.headers.get(n).unwrap().as_str().to_owned();
    assert_eq!(header("Invsync-Consumer"), "webhook");
    assert_eq!(header(OFFSET_HEADER), "2");
    assert!(header("Invsync-Failure-Reason").contains("422 unknown SKU"));
    assert_eq!(header("Invsync-Attempts"), "3");
}

/// A message NATS handed out `max_deliver` times without its batch ever being
/// committed is reported exhausted, so the runtime dead-letters it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_is_bounded() {
    let Some(world) = World::start().await else {
        return;
    };
    world.adjust("S1", "poison", 1).await;
    let mut config = world.config();
    config.ack_wait = Duration::from_secs(1);
    config.max_deliver = 2;
    let bus = NatsBus::connect(config).await.unwrap();
    bus.ensure_streams().await.unwrap();
    world
        .relay(&bus)
        .await
        .wait_for(|p| p.published == 1)
        .await
        .unwrap();

    // A consumer process that fetches and dies before committing.
    let first = NatsSource::new(bus.clone(), "crashy");
    let got = first.fetch(0, 10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(first.exhausted(1), None, "first delivery");
    drop(first);

    // Its successor gets the redelivery after ack_wait: the limit is reached.
    let second = NatsSource::new(bus.clone(), "crashy");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while second
        .fetch(0, 10, Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "never redelivered");
    }
    assert_eq!(second.exhausted(1), Some(2));
}

/// NATS stops (orderly) and comes back: the relay republishes what waited and the
/// same source object goes on reading, without a restart of invsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_source_carry_on_after_nats_restarts() {
    let Some(mut world) = World::start().await else {
        return;
    };
    for _ in 0..5 {
        world.adjust("S1", "before", 1).await;
    }
    let mut config = world.config();
    config.ack_wait = Duration::from_secs(2);
    let bus = NatsBus::connect(config).await.unwrap();
    bus.ensure_streams().await.unwrap();
    let mut progress = world.relay(&bus).await;
    progress.wait_for(|p| p.published == 5).await.unwrap();
    let source = NatsSource::new(bus.clone(), "survivor");
    let got = source.fetch(0, 100, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 5);
    source.commit(5).await.unwrap();

    world.nats.shut_down();
    for _ in 0..5 {
        world.adjust("S1", "during", 1).await;
    }
    // A fetch while NATS is down gets nothing (an error or an empty batch) and
    // never hangs.
    let down = source.fetch(5, 100, Duration::from_millis(200)).await;
    assert!(down.is_err() || down.is_ok_and(|e| e.is_empty()));
    world.nats.start_again();
    progress
        .wait_for(|p| p.published == 10 && p.up)
        .await
        .unwrap();
    // A pull sent while the connection was down can be answered into an inbox that
    // is gone: that message comes again after ack_wait. Until then the fetches skip
    // it — the runtime fills such a hole from the ledger's log at once.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while seen.len() < 5 {
        assert!(tokio::time::Instant::now() < deadline, "got only {seen:?}");
        if let Ok(events) = source.fetch(5, 100, Duration::from_millis(500)).await {
            seen.extend(events.into_iter().map(|e| e.offset));
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![6, 7, 8, 9, 10]);
}
