//! Records kept through Kafka faults: tanker's quick-start stack next to raw rdkafka
//! fire-and-forget, side by side in one process.
//!
//! Run with `cargo bench --bench faults`; `cargo bench --bench faults -- frozen` runs the
//! scenarios whose name contains `frozen`. It prints a Markdown report on stdout (progress on
//! stderr; the report is also saved to `target/faults-bench.md`) and takes about 40 s a
//! scenario. The phases can be changed with `TANKER_FAULTS_RATE` (records/s, 2000),
//! `TANKER_FAULTS_HEALTHY` (s, 5), `TANKER_FAULTS_FAULT` (s, 15), `TANKER_FAULTS_HEALED` (s, 10),
//! `TANKER_FAULTS_SETTLE` (s, 6) and `TANKER_FAULTS_KEYED_EVERY` (one record in 4 has a key; 0
//! for none). `-- long` runs an outage longer than the hand-off's budget
//! (`TANKER_FAULTS_LONG`, 120 s), which is left out of the default run.
//!
//! Each scenario starts two fresh mock clusters of 3 brokers with a topic of 6 partitions, one
//! per variant, and one sender thread offers the same keyless 100-byte records to both at the
//! same steady rate:
//!
//! - **raw**: a `ThreadedProducer` and `send`, errors ignored, never awaited: what a reviewer
//!   names first. It gets the same librdkafka properties as `KafkaConfig`'s defaults (read from
//!   `KafkaConfig` itself by the incident demo's `raw.rs`, so the two cannot drift), and a
//!   delivery callback that counts.
//! - **tanker**: the README's quick start on its defaults: `Handoff` (64 MiB of records at
//!   most) → `KafkaService`, whose per-broker compartments and breakers are built in.
//! - **layers**: the generic recipe over the same leaf: `Handoff` → `breaker` with
//!   `FaultClassifier` → `bulkhead(4096)` → `KafkaService` (per-broker domains on too), to
//!   decide by the numbers whether the quick start needs the outer layers.
//!
//! Every fourth record has a key and an explicit partition (round robin over the 6), so that
//! the report can say what became of the records tied to a healthy broker; the others have
//! neither, and go where the producer sends them. Partition `p` is led by broker `p % 3 + 1`.
//!
//! The fault starts after the healthy phase on both clusters at once and is healed after the
//! fault phase (a moved leader stays moved). The senders stop after the healed phase; both
//! variants then get the settle time to finish, and tanker's hand-off is closed and checked for
//! exact accounting. The report gives, per variant, the records delivered out of those offered,
//! and the seconds from the heal to the first second in which deliveries reach 95 % of the
//! offered rate.

mod common;

use common::{env_or, progress, rss_kib};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use tokio::runtime::{Builder, Runtime};
use tower::ServiceBuilder;

use tanker::breaker::BreakerLayer;
use tanker::bulkhead::BulkheadLayer;
use tanker::handoff::{Handoff, Sent};
use tanker::kafka::{FaultClassifier, KafkaService, Record};
use tanker::ServiceBuilderExt;
use tower::Service as _;

/// Raw fire-and-forget's configuration and delivery counting, shared with the incident demo.
#[path = "../demo/examples/incident/raw.rs"]
mod raw;

type Cluster = MockCluster<'static, DefaultProducerContext>;

const TOPIC: &str = "faults";
const BROKERS: i32 = 3;
const PARTITIONS: i32 = 6;
static PAYLOAD: [u8; 100] = [b'x'; 100];
/// A "frozen" broker holds every answer back this long while its connections stay open.
const FROZEN_RTT: Duration = Duration::from_secs(30);
/// A second counts as full delivery when it delivers this share of the offered rate.
const FULL: f64 = 0.95;

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Every broker refuses connections (`broker_down(-1)`).
    ClusterDown,
    /// Every broker holds its answers back (round trip 30 s): the seed's incident.
    ClusterFrozen,
    /// One broker of three frozen.
    OneFrozen,
    /// One broker of three down.
    OneDown,
    /// Half the partitions get a new leader (`partition_leader`), for good.
    LeaderMoved,
    /// Every broker down for longer than the hand-off's budget (2 minutes by default,
    /// `TANKER_FAULTS_LONG`); run only when asked for by name (`-- long`).
    LongDown,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::ClusterDown,
        Fault::ClusterFrozen,
        Fault::OneFrozen,
        Fault::OneDown,
        Fault::LeaderMoved,
        Fault::LongDown,
    ];

    /// How long this fault lasts.
    fn lasts(self, phases: &Phases) -> u64 {
        match self {
            Fault::LongDown => env_or("TANKER_FAULTS_LONG", 120),
            _ => phases.fault,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fault::ClusterDown => "cluster-down",
            Fault::ClusterFrozen => "cluster-frozen",
            Fault::OneFrozen => "one-frozen",
            Fault::OneDown => "one-down",
            Fault::LeaderMoved => "leader-moved",
            Fault::LongDown => "long-down",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Fault::ClusterDown => "every broker down",
            Fault::ClusterFrozen => "every broker frozen (round trip 30 s)",
            Fault::OneFrozen => "one broker of three frozen",
            Fault::OneDown => "one broker of three down",
            Fault::LeaderMoved => "three partitions' leader moved (no heal)",
            Fault::LongDown => "every broker down, longer than the budget",
        }
    }

    fn start(self, cluster: &Cluster) {
        match self {
            Fault::ClusterDown | Fault::LongDown => cluster.broker_down(-1),
            Fault::ClusterFrozen => cluster.broker_round_trip_time(-1, FROZEN_RTT),
            Fault::OneFrozen => cluster.broker_round_trip_time(2, FROZEN_RTT),
            Fault::OneDown => cluster.broker_down(2),
            Fault::LeaderMoved => (0..PARTITIONS / 2).try_for_each(|partition| {
                cluster.partition_leader(TOPIC, partition, Some(leader_of(partition) % BROKERS + 1))
            }),
        }
        .expect("mock cluster fault");
    }

    fn heal(self, cluster: &Cluster) {
        match self {
            Fault::ClusterDown | Fault::LongDown => cluster.broker_up(-1),
            Fault::ClusterFrozen => cluster.broker_round_trip_time(-1, Duration::ZERO),
            Fault::OneFrozen => cluster.broker_round_trip_time(2, Duration::ZERO),
            Fault::OneDown => cluster.broker_up(2),
            Fault::LeaderMoved => Ok(()),
        }
        .expect("mock cluster heal");
    }
}

/// The broker that leads `partition` when a scenario starts.
fn leader_of(partition: i32) -> i32 {
    partition % BROKERS + 1
}

/// The sick broker of a fault that makes one broker sick.
fn sick_broker(fault: Fault) -> Option<i32> {
    match fault {
        Fault::OneFrozen | Fault::OneDown => Some(2),
        _ => None,
    }
}

/// The partitions whose leader is not `sick`.
fn healthy_partitions(sick: i32) -> impl Iterator<Item = i32> {
    (0..PARTITIONS).filter(move |&p| leader_of(p) != sick)
}

fn cluster() -> Cluster {
    let cluster = MockCluster::new(BROKERS).expect("mock cluster");
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .expect("create topic");
    for partition in 0..PARTITIONS {
        cluster
            .partition_leader(TOPIC, partition, Some(leader_of(partition)))
            .expect("partition leader");
    }
    cluster
}

/// Every `keyed_every()`-th record has a key and a partition of its own (round robin); the
/// others have neither. `TANKER_FAULTS_KEYED_EVERY` (default 4); 0 for no keyed records.
fn keyed_every() -> u64 {
    static EVERY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| env_or("TANKER_FAULTS_KEYED_EVERY", 4))
}

/// The partition of the `n`-th record, if it is one with a key.
fn keyed_partition(n: u64) -> Option<i32> {
    let every = keyed_every();
    (every > 0 && n.is_multiple_of(every)).then(|| ((n / every) % PARTITIONS as u64) as i32)
}

/// The key of the records for each partition.
const KEYS: [&str; PARTITIONS as usize] = ["k0", "k1", "k2", "k3", "k4", "k5"];

fn record(n: u64) -> Record {
    let record = Record::new(TOPIC, Bytes::from_static(&PAYLOAD));
    match keyed_partition(n) {
        Some(partition) => record.key(KEYS[partition as usize]).partition(partition),
        None => record,
    }
}

// ------------------------------------------------------------------------------------------
// The variants
// ------------------------------------------------------------------------------------------

struct Raw {
    producer: ThreadedProducer<raw::Counting>,
    reports: Arc<raw::Deliveries>,
    offered: u64,
    /// `send` answered `Err` (the local queue was full): the record is gone.
    refused: u64,
}

impl Raw {
    fn new(cluster: &Cluster) -> Self {
        let config = raw::client_config(&KafkaService::builder(cluster.bootstrap_servers()), "raw")
            .expect("KafkaConfig's defaults");
        let reports = Arc::new(raw::Deliveries::default());
        let producer = config
            .create_with_context(raw::Counting(reports.clone()))
            .expect("raw producer");
        Self {
            producer,
            reports,
            offered: 0,
            refused: 0,
        }
    }

    fn send(&mut self, n: u64) {
        self.offered += 1;
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(TOPIC).payload(&PAYLOAD[..]);
        if let Some(partition) = keyed_partition(n) {
            record = record.key(KEYS[partition as usize]).partition(partition);
        }
        if self.producer.send(record).is_err() {
            self.refused += 1;
        }
    }
}

/// Which of tanker's stacks a variant runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    /// `Handoff` → `KafkaService` (per-broker domains built in): the quick start.
    BuiltIn,
    /// `Handoff` → `breaker` → `bulkhead(4096)` → `KafkaService`.
    Layers,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::BuiltIn => "tanker",
            Stack::Layers => "layers",
        }
    }
}

struct Tanker {
    stack: Stack,
    handoff: Handoff<Record>,
    /// The outer breaker's times opened, for [`Stack::Layers`].
    outer_opened: Box<dyn Fn() -> u64>,
    kafka: KafkaService,
    reports: Arc<raw::Deliveries>,
}

impl Tanker {
    fn new(rt: &Runtime, cluster: &Cluster, stack: Stack) -> Self {
        let _runtime = rt.enter();
        let kafka = KafkaService::builder(cluster.bootstrap_servers())
            .name(stack.name())
            .build()
            .expect("kafka settings");
        let reports = Arc::new(raw::Deliveries::default());
        // Counts each record's delivery by partition, as the raw variant's context does.
        let counted = {
            let (kafka, reports) = (kafka.clone(), reports.clone());
            tower::service_fn(move |record: Record| {
                let keyed = record.key_bytes().is_some();
                let delivery = kafka.clone().call(record);
                let reports = reports.clone();
                async move {
                    let delivery = delivery.await;
                    reports.count(delivery.as_ref().ok().map(|d| (d.partition, keyed)));
                    delivery
                }
            })
        };
        let handoff = Handoff::builder()
            .name(stack.name())
            .max_bytes(64 << 20, Record::weight);
        let (handoff, outer_opened): (_, Box<dyn Fn() -> u64>) = match stack {
            Stack::BuiltIn => (handoff.spawn(counted), Box::new(|| 0)),
            Stack::Layers => {
                let breaker = BreakerLayer::builder()
                    .name("kafka")
                    .classify(FaultClassifier)
                    .build()
                    .expect("breaker settings");
                let handle = breaker.handle();
                let stack = ServiceBuilder::new()
                    .breaker(breaker)
                    .bulkhead(BulkheadLayer::new(4096).expect("bulkhead settings"))
                    .service(counted);
                (
                    handoff.spawn(stack),
                    Box::new(move || handle.counts().times_opened),
                )
            }
        };
        Self {
            stack,
            handoff: handoff.expect("hand-off settings"),
            outer_opened,
            kafka,
            reports,
        }
    }

    /// Times any of the variant's breakers opened: the per-broker ones and the outer one.
    fn breakers_opened(&self) -> u64 {
        let per_broker: u64 = self
            .kafka
            .brokers()
            .map(|brokers| {
                brokers
                    .keys()
                    .iter()
                    .map(|key| key.breaker().counts().times_opened)
                    .sum()
            })
            .unwrap_or(0);
        per_broker + (self.outer_opened)()
    }

    /// Each broker's compartment and breaker, for the report.
    fn per_broker(&self) -> String {
        let Some(brokers) = self.kafka.brokers() else {
            return "no per-broker domains".into();
        };
        let mut keys = brokers.keys();
        keys.sort_by_key(|key| *key.key());
        keys.iter()
            .map(|key| {
                let breaker = key.breaker().counts();
                format!(
                    "broker {}: admitted {}, shed {}, breaker opened {} and rejected {}",
                    key.key(),
                    key.bulkhead().counts().admitted,
                    key.bulkhead().counts().shed,
                    breaker.times_opened,
                    breaker.rejected,
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

// ------------------------------------------------------------------------------------------
// One scenario
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Phases {
    rate: u64,
    healthy: u64,
    fault: u64,
    healed: u64,
    settle: u64,
}

impl Phases {
    fn from_env() -> Self {
        Self {
            rate: env_or("TANKER_FAULTS_RATE", 2000),
            healthy: env_or("TANKER_FAULTS_HEALTHY", 5),
            fault: env_or("TANKER_FAULTS_FAULT", 15),
            healed: env_or("TANKER_FAULTS_HEALED", 10),
            settle: env_or("TANKER_FAULTS_SETTLE", 6),
        }
    }

    fn heal_at(&self) -> u64 {
        self.healthy + self.fault
    }

    fn sending(&self) -> u64 {
        self.heal_at() + self.healed
    }
}

/// What one variant did in one scenario.
struct Outcome {
    name: &'static str,
    offered: u64,
    delivered: u64,
    /// Deliveries in each second of the run (the settle time included).
    per_second: Vec<u64>,
    /// Deliveries to the partitions of the healthy brokers in each second, when one broker is
    /// sick.
    healthy_per_second: Vec<u64>,
    /// Records with a key for a healthy broker's partition: delivered, of offered.
    keyed_healthy: Option<(u64, u64)>,
    /// Whatever else the variant reports about its records, for the report.
    detail: String,
    /// The duration of each of its `send` calls, in nanoseconds, sorted.
    sends: Vec<u32>,
    /// tanker's variants: the same, split by what `send` answered (`Dropped`, `Accepted`).
    by_answer: Option<[Vec<u32>; 2]>,
    /// Times its breakers opened (tanker's variants).
    breakers_opened: Option<u64>,
    balanced: Option<bool>,
}

impl Outcome {
    fn share(&self) -> f64 {
        100.0 * self.delivered as f64 / self.offered.max(1) as f64
    }

    /// The `q` quantile of its sends, in nanoseconds.
    fn send_ns(&self, q: f64) -> u32 {
        percentile(&self.sends, q)
    }

    /// Seconds from the heal to the end of the first second that delivered at least `FULL` of
    /// the offered rate while records were still offered.
    fn resumed_after(&self, phases: &Phases) -> Option<u64> {
        let heal = phases.heal_at() as usize;
        let wanted = (phases.rate as f64 * FULL) as u64;
        self.per_second[heal..phases.sending() as usize]
            .iter()
            .position(|&n| n >= wanted)
            .map(|i| i as u64 + 1)
    }

    /// Seconds of the fault (after its first, when the sick broker is being found out) in
    /// which the healthy brokers delivered less than `FULL` of what they are offered: every
    /// record without a key, and the keyed records of their own partitions.
    fn healthy_seconds_short(&self, phases: &Phases) -> Option<usize> {
        if self.healthy_per_second.is_empty() {
            return None;
        }
        let sick_keyed = match keyed_every() {
            0 => 0.0,
            every => 2.0 / PARTITIONS as f64 / every as f64,
        };
        let wanted = phases.rate as f64 * (1.0 - sick_keyed) * FULL;
        let fault = phases.healthy as usize + 1..phases.heal_at() as usize;
        Some(
            self.healthy_per_second[fault]
                .iter()
                .filter(|&&n| (n as f64) < wanted)
                .count(),
        )
    }
}

struct ScenarioRun {
    fault: Fault,
    phases: Phases,
    /// The process's resident memory during the fault, lowest and highest, in MiB.
    rss_mib: (f64, f64),
    outcomes: Vec<Outcome>,
    /// The floors timed in the same turns as the variants' sends (sorted, in ns): two clock
    /// reads alone, and a bare `ArrayQueue` push (the queue a hand-off is built on, drained by a
    /// thread every millisecond): what any hand-off costs at this pace, on this machine.
    floors: [(&'static str, Vec<u32>); 2],
}

/// A random order of the five timed senders (raw, tanker, layers, the two floors) for each
/// record: a Fisher-Yates shuffle driven by xorshift, fixed seed.
struct Turns {
    state: u64,
}

impl Turns {
    fn new() -> Self {
        Self {
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn next(&mut self) -> [usize; 5] {
        let mut order = [0, 1, 2, 3, 4];
        for i in (1..order.len()).rev() {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            order.swap(i, (self.state % (i as u64 + 1)) as usize);
        }
        order
    }
}

/// The least a hand-off can do, timed beside the variants: a bare queue, drained by a thread
/// every millisecond as a hand-off's worker would take from it.
struct BareQueue {
    queue: Arc<crossbeam_queue::ArrayQueue<Record>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    drainer: Option<std::thread::JoinHandle<()>>,
}

impl BareQueue {
    fn new() -> Self {
        let queue = Arc::new(crossbeam_queue::ArrayQueue::new(50_000));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drainer = {
            let (queue, stop) = (queue.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    while queue.pop().is_some() {}
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Self {
            queue,
            stop,
            drainer: Some(drainer),
        }
    }
}

impl Drop for BareQueue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(drainer) = self.drainer.take() {
            let _ = drainer.join();
        }
    }
}

/// Runs `send`, adds its duration (ns) to `sends` and returns it.
fn timed(sends: &mut Vec<u32>, send: impl FnOnce()) -> u32 {
    let start = Instant::now();
    send();
    let took = u32::try_from(start.elapsed().as_nanos()).unwrap_or(u32::MAX);
    sends.push(took);
    took
}

/// Per-second counts of one variant.
#[derive(Default)]
struct Seconds {
    all: Vec<u64>,
    healthy: Vec<u64>,
    marks: (u64, u64),
}

impl Seconds {
    fn tick(&mut self, reports: &raw::Deliveries, sick: Option<i32>) {
        let all = reports.delivered.load(Ordering::Relaxed);
        let healthy = sick.map_or(0, |sick| {
            reports.to_partitions(healthy_partitions(sick), false)
        });
        self.all.push(all - self.marks.0);
        if sick.is_some() {
            self.healthy.push(healthy - self.marks.1);
        }
        self.marks = (all, healthy);
    }
}

fn scenario(rt: &Runtime, fault: Fault, phases: &Phases) -> ScenarioRun {
    progress(format!("{}: {}", fault.name(), fault.describe()));
    let phases = &Phases {
        fault: fault.lasts(phases),
        ..*phases
    };
    let sick = sick_broker(fault);
    let clusters = [cluster(), cluster(), cluster()];
    let mut raw = Raw::new(&clusters[0]);
    let tankers = [
        Tanker::new(rt, &clusters[1], Stack::BuiltIn),
        Tanker::new(rt, &clusters[2], Stack::Layers),
    ];

    let total = phases.sending() + phases.settle;
    let mut seconds: [Seconds; 3] = Default::default();
    let mut sends: [Vec<u32>; 3] = Default::default();
    let mut floors: [Vec<u32>; 2] = Default::default();
    // tanker's variants' sends, split by answer: [dropped, accepted].
    let mut by_answer: [[Vec<u32>; 2]; 2] = Default::default();
    let bare = BareQueue::new();
    let mut order = Turns::new();
    let (mut rss_low, mut rss_high) = (f64::MAX, 0.0f64);
    let mut peak_backlog = [0; 2];
    let mut keyed_offered = [0u64; PARTITIONS as usize];
    let start = Instant::now();
    let mut sent = 0u64;
    for second in 0..total {
        if second == phases.healthy {
            progress(format!("  t={second}s: fault starts"));
            clusters.iter().for_each(|c| fault.start(c));
        }
        if second == phases.heal_at() {
            progress(format!("  t={second}s: healed"));
            clusters.iter().for_each(|c| fault.heal(c));
        }
        let end_of_second = start + Duration::from_secs(second + 1);
        // Offer the second's records in steps of 10 ms, to every variant alike.
        while Instant::now() < end_of_second {
            if second < phases.sending() {
                let due = (start.elapsed().as_secs_f64() * phases.rate as f64) as u64;
                while sent < due.min(phases.sending() * phases.rate) {
                    // The five take turns in a random order each time, so that each comes
                    // right after raw's `send` (librdkafka's locks and allocations: colder
                    // caches) as often as the others. The record is built before the clock
                    // starts, as a handler would have it.
                    for which in order.next() {
                        match which {
                            0 => {
                                timed(&mut sends[0], || raw.send(sent));
                            }
                            3 => {
                                timed(&mut floors[0], || {});
                            }
                            4 => {
                                let record = record(sent);
                                timed(&mut floors[1], || {
                                    let _ = bare.queue.push(record);
                                });
                            }
                            which => {
                                let (tanker, record) = (&tankers[which - 1], record(sent));
                                let mut answer = Sent::Accepted;
                                let took = timed(&mut sends[which], || {
                                    answer = tanker.handoff.send(record);
                                });
                                by_answer[which - 1][usize::from(answer == Sent::Accepted)]
                                    .push(took);
                            }
                        }
                    }
                    if let Some(partition) = keyed_partition(sent) {
                        keyed_offered[partition as usize] += 1;
                    }
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for (peak, tanker) in peak_backlog.iter_mut().zip(&tankers) {
            let counts = tanker.handoff.counts();
            *peak = (*peak).max(counts.queued + counts.parked);
        }
        if (phases.healthy..phases.heal_at()).contains(&second) {
            let rss = rss_kib() as f64 / 1024.0;
            (rss_low, rss_high) = (rss_low.min(rss), rss_high.max(rss));
        }
        seconds[0].tick(&raw.reports, sick);
        for (seconds, tanker) in seconds[1..].iter_mut().zip(&tankers) {
            seconds.tick(&tanker.reports, sick);
        }
    }
    let keyed_healthy = |reports: &raw::Deliveries| {
        sick.map(|sick| {
            let offered = healthy_partitions(sick)
                .map(|p| keyed_offered[p as usize])
                .sum();
            (
                reports.to_partitions(healthy_partitions(sick), true),
                offered,
            )
        })
        .filter(|&(_, offered)| offered > 0)
    };
    let [raw_seconds, builtin_seconds, layers_seconds] = seconds;
    let [raw_sends, builtin_sends, layers_sends] = sends;

    // Raw: whatever librdkafka still holds after the settle time is as good as lost to the
    // caller; flush briefly so the producer can be dropped.
    let _ = raw.producer.flush(Duration::from_secs(1));
    let raw_outcome = Outcome {
        name: "raw",
        offered: raw.offered,
        delivered: raw.reports.delivered.load(Ordering::Relaxed),
        per_second: raw_seconds.all,
        healthy_per_second: raw_seconds.healthy,
        keyed_healthy: keyed_healthy(&raw.reports),
        detail: format!(
            "failed {}, refused by send {}, still queued {}",
            raw.reports.failed.load(Ordering::Relaxed),
            raw.refused,
            raw.producer.in_flight_count()
        ),
        sends: sorted(raw_sends),
        by_answer: None,
        breakers_opened: None,
        balanced: None,
    };
    let mut outcomes = vec![raw_outcome];
    for (((tanker, seconds), (sends, peak)), answers) in tankers
        .into_iter()
        .zip([builtin_seconds, layers_seconds])
        .zip([builtin_sends, layers_sends].into_iter().zip(peak_backlog))
        .zip(by_answer)
    {
        let counts = rt
            .block_on(tanker.handoff.close(Duration::from_secs(5)))
            .counts;
        let _ = rt.block_on(tanker.kafka.flush(Duration::from_secs(1)));
        outcomes.push(Outcome {
            name: tanker.stack.name(),
            offered: counts.offered,
            delivered: counts.delivered,
            per_second: seconds.all,
            healthy_per_second: seconds.healthy,
            keyed_healthy: keyed_healthy(&tanker.reports),
            detail: format!(
                "dropped {}, expired {}, shed {}, rejected {}, failed {}, pending {} \
                 (one more try for {}; at most {} records held at once); {}",
                counts.dropped,
                counts.expired,
                counts.shed,
                counts.rejected,
                counts.failed,
                counts.pending(),
                counts.retried,
                peak,
                tanker.per_broker(),
            ),
            sends: sorted(sends),
            by_answer: Some(answers.map(sorted)),
            breakers_opened: Some(tanker.breakers_opened()),
            balanced: Some(counts.is_balanced() && counts.pending() == 0),
        });
    }
    drop(raw);
    drop(clusters);
    drop(bare);
    let [clock, push] = floors;
    ScenarioRun {
        fault,
        phases: *phases,
        rss_mib: (rss_low, rss_high),
        outcomes,
        floors: [
            ("floor: two clock reads alone", sorted(clock)),
            ("floor: bare `ArrayQueue::push`", sorted(push)),
        ],
    }
}

/// The `q` quantile of sorted durations (0 if there are none).
fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sorted(mut sends: Vec<u32>) -> Vec<u32> {
    sends.sort_unstable();
    sends
}

// ------------------------------------------------------------------------------------------
// Report
// ------------------------------------------------------------------------------------------

fn resumed(outcome: &Outcome, phases: &Phases, fault: Fault) -> String {
    if matches!(fault, Fault::LeaderMoved) {
        return "n/a".into();
    }
    match outcome.resumed_after(phases) {
        Some(s) => format!("{s} s"),
        None => format!("not within {} s", phases.healed),
    }
}

fn report(runs: &[ScenarioRun], phases: &Phases) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Records kept through Kafka faults: tanker (quick start, defaults), the layered recipe, and raw fire-and-forget\n\n\
         Mock cluster of {BROKERS} brokers, topic of {PARTITIONS} partitions (partition p led by \
         broker p % 3 + 1), {} records/s of 100 B, one in {} with a key and its own \
         partition (0: none); {} s healthy, {} s fault, {} s healed, then {} s to settle. Every variant in \
         one process, on its own cluster, offered the same records by one sender thread.\n",
        phases.rate,
        keyed_every(),
        phases.healthy,
        phases.fault,
        phases.healed,
        phases.settle
    );
    let _ = writeln!(
        out,
        "| fault | variant | delivered | / raw | keyed, healthy broker | seconds the healthy brokers fell short | full delivery after the heal | breakers opened | accounting |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|---:|---|");
    for run in runs {
        let raw = run.outcomes[0].delivered.max(1) as f64;
        for outcome in &run.outcomes {
            let keyed = outcome.keyed_healthy.map_or("n/a".into(), |(d, o)| {
                format!("{:.1} % ({d}/{o})", 100.0 * d as f64 / o.max(1) as f64)
            });
            let short = outcome
                .healthy_seconds_short(&run.phases)
                .map_or("n/a".into(), |n| n.to_string());
            let _ = writeln!(
                out,
                "| {} ({} s) | {} | {:.1} % ({}/{}) | {:.3} | {} | {} | {} | {} | {} |",
                run.fault.describe(),
                run.phases.fault,
                outcome.name,
                outcome.share(),
                outcome.delivered,
                outcome.offered,
                outcome.delivered as f64 / raw,
                keyed,
                short,
                resumed(outcome, &run.phases, run.fault),
                outcome
                    .breakers_opened
                    .map_or("n/a".into(), |n| n.to_string()),
                match outcome.balanced {
                    None => "n/a",
                    Some(true) => "exact",
                    Some(false) => "UNBALANCED",
                },
            );
        }
    }
    let _ = writeln!(
        out,
        "\n`send` latency over the whole run (ns, two clock reads included; the variants and the two \
         floors go in a random order for each record; tanker's record is built before the clock starts, raw's `BaseRecord` inside \
         it, without allocating), and the process's resident memory during the fault (every variant shares the process):\n\n\
         | fault | variant | p50 / p99 / p99.9 |\n|---|---|---|"
    );
    for run in runs {
        for outcome in &run.outcomes {
            let _ = writeln!(
                out,
                "| {} | {} | {} / {} / {} |",
                run.fault.describe(),
                outcome.name,
                outcome.send_ns(0.5),
                outcome.send_ns(0.99),
                outcome.send_ns(0.999),
            );
        }
        for outcome in &run.outcomes {
            let Some(answers) = &outcome.by_answer else {
                continue;
            };
            for (answer, sends) in ["Dropped", "Accepted"].iter().zip(answers) {
                if sends.is_empty() {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "| {} | {}, sends answered `{answer}` ({}) | {} / {} / {} |",
                    run.fault.describe(),
                    outcome.name,
                    sends.len(),
                    percentile(sends, 0.5),
                    percentile(sends, 0.99),
                    percentile(sends, 0.999),
                );
            }
        }
        for (name, floor) in &run.floors {
            let _ = writeln!(
                out,
                "| {} | {name} | {} / {} / {} |",
                run.fault.describe(),
                percentile(floor, 0.5),
                percentile(floor, 0.99),
                percentile(floor, 0.999),
            );
        }
    }
    for run in runs {
        let _ = writeln!(
            out,
            "\n{}: RSS during the fault {:.1} – {:.1} MiB. What became of the rest:\n",
            run.fault.describe(),
            run.rss_mib.0,
            run.rss_mib.1
        );
        for outcome in &run.outcomes {
            let _ = writeln!(out, "- {}: {}.", outcome.name, outcome.detail);
        }
    }
    let _ = writeln!(out, "\nDeliveries per second (raw / tanker / layers):\n");
    for run in runs {
        let seconds: Vec<String> = (0..run.outcomes[0].per_second.len())
            .map(|i| {
                let at = |o: &Outcome| o.per_second.get(i).copied().unwrap_or(0).to_string();
                run.outcomes.iter().map(at).collect::<Vec<_>>().join("/")
            })
            .collect();
        let _ = writeln!(out, "- {}: {}", run.fault.name(), seconds.join(" "));
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is a filter on the scenario names.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let phases = Phases::from_env();
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let runs: Vec<ScenarioRun> = Fault::ALL
        .into_iter()
        .filter(|f| match filters.is_empty() {
            // The long outage takes minutes: only when asked for.
            true => !matches!(f, Fault::LongDown),
            false => filters.iter().any(|x| f.name().contains(x.as_str())),
        })
        .map(|fault| scenario(&rt, fault, &phases))
        .collect();
    let out = report(&runs, &phases);
    print!("{out}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/faults-bench.md");
    if std::fs::write(&path, &out).is_ok() {
        progress(format!("report saved to {}", path.display()));
    }
}
