//! The Kafka side of tanker, measured on librdkafka's in-process mock cluster, in one run.
//!
//! Run with `cargo bench --bench kafka`. It prints a Markdown report on stdout (progress goes
//! to stderr; the report is also saved to `target/kafka-bench.md`) and takes under a minute.
//! A filter argument runs some parts only: `cargo bench --bench kafka -- latency` (or
//! `throughput`, `memory`). Sizes can be changed with environment variables, e.g. `TANKER_BENCH_SENDS=300000`, `TANKER_BENCH_RATE=100000`,
//! `TANKER_BENCH_RECORDS=150000`, `TANKER_BENCH_ROUNDS=7`, `TANKER_BENCH_MEMORY_SECS=10`,
//! `TANKER_BENCH_MEMORY_RATE=500000`.
//!
//! This is a plain binary (`harness = false`), not criterion: what matters here are per-call
//! percentiles and end-to-end rates, which criterion does not report.
//!
//! Parts:
//!
//! 1. **`latency`**: the duration of each `Handoff::send` call, taken with two
//!    `std::time::Instant::now()` around it, from a plain sender thread that offers records at
//!    a steady rate (default 100 000/s, in batches of 100 every millisecond, sleeping between
//!    batches so that the runtime and librdkafka have CPU). The stack is the recommended one:
//!    hand-off → breaker (with `FaultClassifier`) → bulkhead → `KafkaService`. Three cases,
//!    each on a fresh mock cluster after a healthy warm-up: Kafka healthy; Kafka down
//!    (`broker_down`) from the first measured send; Kafka frozen (a one-hour round-trip time,
//!    connections stay open) from the first measured send. The message timeout is 1 s here
//!    so that each faulty run covers both phases: before the breaker opens (the worker's 4096
//!    calls wait in librdkafka, the hand-off queue fills, and `send` drops) and after (the
//!    breaker rejects). The cost of the two clock reads alone is measured in the same way and
//!    shown as its own row. Every send over 2 µs is attributed (outside the timed region): was
//!    the sender thread switched out by the kernel (`/proc/thread-self/schedstat`), was the
//!    queue at least half full (the doorbell path), was it the first send after a sleep.
//! 2. **`throughput`**: records/s through the whole stack (hand-off of capacity 16 384 and
//!    concurrency 4096, bulkhead 4096, the leaf's per-broker domains on) against raw rdkafka
//!    (`FutureProducer::send_result` from a tokio task, at most 4096 delivery futures in flight, awaiting them), same mock
//!    cluster layout, same payload (100 B), same producer properties (set explicitly on both).
//!    Each run starts on a fresh cluster after a warm-up and ends when every record's delivery
//!    report is in; the stack's sender thread offers as fast as it can and, when the hand-off
//!    answers `Dropped` (full queue), sleeps 50 µs and offers the same record again, so that
//!    both deliver exactly the same records. Runs alternate raw/stack (default 7 rounds of
//!    150 000 records); the report gives each round's ratio and the process's CPU time per
//!    record, which the load of a shared machine disturbs less than wall-clock rates.
//! 3. **`memory`**: VmRSS (from `/proc/self/status`) once a second while the broker is down
//!    and records keep coming at a high rate (default 500 000/s, each with its own heap-backed
//!    100 B payload), with the default `KafkaConfig` (5 s message timeout) and the default
//!    breaker, so the run sees the pile-up (5 s) and then the breaker open.
//!
//! All parts use one tokio multi-thread runtime of two workers (the machine's core count).
//! The mock cluster is `!Send` and stays on the main thread.

mod common;

use common::{env_or, progress, rss_kib};
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord, Producer as _};
use tokio::runtime::{Builder, Runtime};
use tower::ServiceBuilder;

use tanker::breaker::{BreakerHandle, BreakerLayer, BreakerState};
use tanker::bulkhead::BulkheadLayer;
use tanker::handoff::{Handoff, HandoffCounts, Sent};
use tanker::kafka::{BrokerDomains, FaultClassifier, KafkaConfig, KafkaService, Record};
use tanker::ServiceBuilderExt;

type Cluster = MockCluster<'static, DefaultProducerContext>;

const TOPIC: &str = "bench";
/// Brokers in each mock cluster.
const BROKERS: i32 = 1;
/// Partitions of the topic: a mock partition keeps only 5 MiB / 100k batches.
const PARTITIONS: i32 = 8;
/// Payload size, every part.
const PAYLOAD_LEN: usize = 100;
static PAYLOAD: [u8; PAYLOAD_LEN] = [b'x'; PAYLOAD_LEN];

/// Producer properties given to both the tanker stack and the raw producer. They are
/// `KafkaConfig`'s defaults, written out so that the comparison cannot drift.
const PRODUCER_PROPERTIES: &[(&str, &str)] = &[
    ("message.timeout.ms", "5000"),
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "65536"),
    ("linger.ms", "5"),
    ("reconnect.backoff.ms", "100"),
    ("reconnect.backoff.max.ms", "1000"),
    ("socket.connection.setup.timeout.ms", "5000"),
    ("request.timeout.ms", "5000"),
    ("topic.metadata.propagation.max.ms", "1000"),
];

/// Bulkhead size and hand-off concurrency, every part; raw rdkafka's in-flight bound.
const IN_FLIGHT: usize = 4096;
/// Hand-off capacity in the latency and memory parts (the default).
const HANDOFF_CAPACITY: usize = 10_000;
/// Hand-off capacity in the throughput part.
const THROUGHPUT_CAPACITY: usize = 16_384;
/// Message timeout in the latency part (see the module docs).
const LATENCY_MESSAGE_TIMEOUT: Duration = Duration::from_secs(1);
/// Sends per batch in the paced senders (one batch per `rate / BATCH` seconds).
const BATCH: usize = 100;

const TARGET_MEDIAN_NS: u64 = 200;
const TARGET_P999_NS: u64 = 2_000;
const TARGET_RATIO: f64 = 0.9;

// ------------------------------------------------------------------------------------------
// Rig: cluster, producer, stack
// ------------------------------------------------------------------------------------------

fn cluster() -> Cluster {
    let cluster = MockCluster::new(BROKERS).expect("mock cluster");
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .expect("create topic");
    cluster
}

/// The stack's producer: the shared properties, and the per-broker domains on (as by default)
/// with a compartment as large as the stack's bulkhead, so that the broker's compartment is
/// not what limits the records in flight.
fn kafka_config(cluster: &Cluster, name: &str) -> KafkaConfig {
    let domains = BrokerDomains::new().bulkhead(BulkheadLayer::builder().max_in_flight(IN_FLIGHT));
    PRODUCER_PROPERTIES.iter().fold(
        KafkaService::builder(cluster.bootstrap_servers())
            .name(name.to_owned())
            .broker_domains(domains),
        |config, &(key, value)| config.set(key, value),
    )
}

fn raw_producer(cluster: &Cluster) -> FutureProducer {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", cluster.bootstrap_servers());
    config.set("client.id", "raw");
    for &(key, value) in PRODUCER_PROPERTIES {
        config.set(key, value);
    }
    config.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    config.create().expect("raw producer")
}

struct Stack {
    handoff: Handoff<Record>,
    /// The outer breaker; `None` for the quick start, which has none.
    breaker: Option<BreakerHandle>,
    kafka: KafkaService,
}

/// The README's quick start: hand-off → KafkaService, whose per-broker domains are built in.
fn quick_start(rt: &Runtime, kafka: KafkaService, capacity: usize) -> Stack {
    let _runtime = rt.enter();
    let handoff = Handoff::builder()
        .name("bench")
        .capacity(capacity)
        .concurrency(IN_FLIGHT)
        .spawn(kafka.clone())
        .expect("hand-off settings");
    Stack {
        handoff,
        breaker: None,
        kafka,
    }
}

/// hand-off → breaker(FaultClassifier) → bulkhead → KafkaService.
fn stack(rt: &Runtime, kafka: KafkaService, capacity: usize) -> Stack {
    let breaker = BreakerLayer::builder()
        .name("kafka")
        .classify(FaultClassifier)
        .build()
        .expect("breaker settings");
    let breaker_handle = breaker.handle();
    let bulkhead = BulkheadLayer::new(IN_FLIGHT).expect("bulkhead settings");
    let service = ServiceBuilder::new()
        .breaker(breaker)
        .bulkhead(bulkhead)
        .service(kafka.clone());
    let _runtime = rt.enter();
    let handoff = Handoff::builder()
        .name("bench")
        .capacity(capacity)
        .concurrency(IN_FLIGHT)
        .spawn(service)
        .expect("hand-off settings");
    Stack {
        handoff,
        breaker: Some(breaker_handle),
        kafka,
    }
}

fn static_record() -> Record {
    Record::new(TOPIC, Bytes::from_static(&PAYLOAD))
}

/// A record with its own heap-allocated payload, as a real writer would make.
fn owned_record(i: u64) -> Record {
    let mut payload = PAYLOAD.to_vec();
    payload[..8].copy_from_slice(&i.to_le_bytes());
    Record::new(TOPIC, Bytes::from(payload))
}

/// Polls `condition` every 200 µs until it holds or `deadline` passes; whether it held.
fn wait_for(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Offers `n` records as fast as the hand-off takes them and waits for every outcome; then,
/// with the per-broker domains on, offers more until the leaf routes by leader (its first
/// statistics report, within 200 ms, names the leaders): the timed run measures the steady
/// state, not a start that librdkafka partitions alone.
fn warm_up(stack: &Stack, n: u64) {
    let offer = |n: u64| {
        let base = stack.handoff.counts();
        for _ in 0..n {
            while stack.handoff.send(static_record()) == Sent::Dropped {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        let done = wait_for(Duration::from_secs(20), || {
            stack.handoff.counts().finished() - base.finished() >= n
        });
        let counts = stack.handoff.counts();
        assert!(done, "warm-up did not finish: {counts:?}");
        assert_eq!(
            counts.delivered - base.delivered,
            n,
            "warm-up records not all delivered: {counts:?}"
        );
    };
    offer(n);
    let routed = |stack: &Stack| {
        stack
            .kafka
            .brokers()
            .is_none_or(|brokers| !brokers.keys().is_empty())
    };
    let until = Instant::now() + Duration::from_secs(10);
    while !routed(stack) {
        assert!(Instant::now() < until, "the leaf never routed by leader");
        std::thread::sleep(Duration::from_millis(20));
        offer(100);
    }
}

/// Closes the hand-off, flushes and drops the producer, then the cluster.
fn teardown(rt: &Runtime, stack: Stack, cluster: Cluster, deadline: Duration) -> HandoffCounts {
    let Stack {
        handoff,
        breaker: _,
        kafka,
    } = stack;
    let report = rt.block_on(handoff.close(deadline));
    drop(handoff);
    rt.block_on(kafka.flush(Duration::from_millis(500)));
    {
        // The last clone may be this one: drop it where its purge may block.
        let _runtime = rt.enter();
        drop(kafka);
    }
    std::thread::sleep(Duration::from_millis(100));
    drop(cluster);
    report.counts
}

/// The counts of `after` taken since `base` (queued and in flight as they are in `after`).
fn since(after: HandoffCounts, base: HandoffCounts) -> HandoffCounts {
    let mut delta = after;
    delta.offered -= base.offered;
    delta.accepted -= base.accepted;
    delta.dropped -= base.dropped;
    delta.delivered -= base.delivered;
    delta.shed -= base.shed;
    delta.rejected -= base.rejected;
    delta.failed -= base.failed;
    delta
}

// ------------------------------------------------------------------------------------------
// Percentiles
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    n: usize,
    median: u64,
    p99: u64,
    p999: u64,
    max: u64,
    mean: f64,
    over_target: usize,
}

/// Nearest-rank percentiles of nanosecond samples.
fn summarize(samples: &[u32]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = |q: f64| {
        let at = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        u64::from(sorted[at - 1])
    };
    Summary {
        n: sorted.len(),
        median: rank(0.5),
        p99: rank(0.99),
        p999: rank(0.999),
        max: u64::from(*sorted.last().unwrap()),
        mean: sorted.iter().map(|&s| f64::from(s)).sum::<f64>() / sorted.len() as f64,
        over_target: sorted
            .iter()
            .filter(|&&s| u64::from(s) > TARGET_P999_NS)
            .count(),
    }
}

fn ns(v: u64) -> String {
    if v >= 10_000_000 {
        format!("{:.1} ms", v as f64 / 1e6)
    } else if v >= 10_000 {
        format!("{:.1} µs", v as f64 / 1e3)
    } else {
        format!("{v} ns")
    }
}

// ------------------------------------------------------------------------------------------
// Part 1: send latency
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    TimerFloor,
    Healthy,
    Down,
    Frozen,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::TimerFloor => "timer floor (2× Instant::now, no send)",
            Case::Healthy => "Kafka healthy",
            Case::Down => "Kafka down (broker_down)",
            Case::Frozen => "Kafka frozen (RTT 1 h)",
        }
    }
}

/// What the paced sender saw.
#[derive(Default)]
struct Paced {
    /// Nanoseconds per send.
    latencies: Vec<u32>,
    /// Per sample: first of its batch (right after the sender slept).
    first_in_batch: Vec<bool>,
    /// Per sample: the breaker was open (or half-open) when its batch began.
    breaker_open: Vec<bool>,
    /// Every send slower than the p99.9 target, with what was going on.
    slow: Vec<Slow>,
    accepted: u64,
    dropped: u64,
    /// Batches that started more than one period late (the sender fell behind).
    late_batches: u64,
    wall: Duration,
}

/// A send slower than [`TARGET_P999_NS`].
#[derive(Clone, Copy, Debug)]
struct Slow {
    index: usize,
    nanos: u32,
    first_in_batch: bool,
    /// The sender thread was switched out (by the kernel: `send` never blocks) between the
    /// previous check and just after this send; see [`SchedCount`].
    preempted: bool,
    /// The hand-off queue was at least half full just after this send: the doorbell path
    /// (`notify_one`, which may wake a runtime thread) was possible.
    half_full: bool,
    dropped: bool,
}

/// How many times the kernel has scheduled the calling thread in (third field of
/// `/proc/thread-self/schedstat`), read with one `pread` on a file kept open.
struct SchedCount(Option<std::fs::File>);

impl SchedCount {
    fn open() -> Self {
        Self(std::fs::File::open("/proc/thread-self/schedstat").ok())
    }

    fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = self.0.as_ref()?.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n])
            .ok()?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    }
}

/// Offers `n` records at `rate` per second in batches of [`BATCH`], timing each `send`. With no
/// hand-off, times two clock reads only (the timer floor).
///
/// Slow sends are attributed without touching the timed region: the thread's schedule-in count
/// is read before each sleep and again just after a slow send; an increase beyond the one that
/// the sleep itself causes means the kernel switched the thread out in between.
fn paced_sends(
    handoff: Option<&Handoff<Record>>,
    breaker: Option<&BreakerHandle>,
    n: usize,
    rate: u64,
    payload: fn(u64) -> Record,
) -> Paced {
    let period = Duration::from_secs_f64(BATCH as f64 / rate as f64);
    let sched = SchedCount::open();
    let mut out = Paced {
        latencies: Vec::with_capacity(n),
        first_in_batch: Vec::with_capacity(n),
        breaker_open: Vec::with_capacity(n),
        ..Paced::default()
    };
    // Touch the sample buffers now, so that no page fault lands in a measurement later.
    out.latencies.resize(n, 0);
    out.latencies.clear();
    let start = Instant::now();
    let mut next = start;
    let mut i = 0u64;
    // Schedule-in count to compare with, and how many schedule-ins are expected since then.
    let mut reference = sched.read();
    let mut expected = 0;
    while out.latencies.len() < n {
        let open = breaker.is_some_and(|b| b.state() != BreakerState::Closed);
        let batch = BATCH.min(n - out.latencies.len());
        for k in 0..batch {
            let record = black_box(payload(i));
            i += 1;
            let (took, sent) = match handoff {
                Some(handoff) => {
                    let t0 = Instant::now();
                    let sent = handoff.send(record);
                    let t1 = Instant::now();
                    (t1 - t0, sent)
                }
                None => {
                    let t0 = Instant::now();
                    let t1 = Instant::now();
                    drop(record);
                    (t1 - t0, Sent::Accepted)
                }
            };
            let nanos = u32::try_from(took.as_nanos()).unwrap_or(u32::MAX);
            if u64::from(nanos) > TARGET_P999_NS {
                let now = sched.read();
                let preempted = matches!((reference, now), (Some(r), Some(c)) if c > r + expected);
                let half_full = handoff.is_some_and(|h| {
                    let counts = h.counts();
                    counts.queued * 2 >= HANDOFF_CAPACITY as u64
                });
                out.slow.push(Slow {
                    index: out.latencies.len(),
                    nanos,
                    first_in_batch: k == 0,
                    preempted,
                    half_full,
                    dropped: sent == Sent::Dropped,
                });
                reference = now;
                expected = 0;
            }
            out.latencies.push(nanos);
            out.first_in_batch.push(k == 0);
            out.breaker_open.push(open);
            match sent {
                Sent::Accepted => out.accepted += 1,
                Sent::Dropped => out.dropped += 1,
            }
        }
        next += period;
        let now = Instant::now();
        reference = sched.read();
        if next > now {
            std::thread::sleep(next - now);
            expected = 1;
        } else {
            expected = 0;
            if now - next > period {
                out.late_batches += 1;
            }
        }
    }
    out.wall = start.elapsed();
    out
}

struct LatencyRow {
    case: Case,
    all: Summary,
    first: Summary,
    rest: Summary,
    closed: Summary,
    open: Summary,
    paced: Paced,
    counts: Option<HandoffCounts>,
    breaker: Option<String>,
    rate: f64,
}

fn latency_case(rt: &Runtime, case: Case, n: usize, rate: u64) -> LatencyRow {
    progress(format!("latency: {} ({n} sends at {rate}/s)", case.label()));
    let split = |paced: &Paced, keep: &dyn Fn(usize) -> bool| {
        let picked: Vec<u32> = (0..paced.latencies.len())
            .filter(|&i| keep(i))
            .map(|i| paced.latencies[i])
            .collect();
        summarize(&picked)
    };
    let finish = |paced: Paced, counts, breaker| {
        let rate = paced.latencies.len() as f64 / paced.wall.as_secs_f64();
        LatencyRow {
            case,
            all: summarize(&paced.latencies),
            first: split(&paced, &|i| paced.first_in_batch[i]),
            rest: split(&paced, &|i| !paced.first_in_batch[i]),
            closed: split(&paced, &|i| !paced.breaker_open[i]),
            open: split(&paced, &|i| paced.breaker_open[i]),
            counts,
            breaker,
            rate,
            paced,
        }
    };
    if case == Case::TimerFloor {
        let paced = std::thread::spawn(move || paced_sends(None, None, n, rate, owned_record))
            .join()
            .expect("sender thread");
        return finish(paced, None, None);
    }

    let cluster = cluster();
    let kafka = kafka_config(&cluster, "latency")
        .message_timeout(LATENCY_MESSAGE_TIMEOUT)
        .build()
        .expect("producer");
    let stack = stack(rt, kafka, HANDOFF_CAPACITY);
    warm_up(&stack, 20_000);
    let base = stack.handoff.counts();

    match case {
        Case::Down => cluster.broker_down(-1).expect("broker_down"),
        Case::Frozen => cluster
            .broker_round_trip_time(-1, Duration::from_secs(3600))
            .expect("broker_round_trip_time"),
        Case::Healthy | Case::TimerFloor => {}
    }
    let paced = {
        let handoff = stack.handoff.clone();
        let breaker = stack.breaker.clone().expect("the layered stack");
        std::thread::spawn(move || {
            paced_sends(Some(&handoff), Some(&breaker), n, rate, owned_record)
        })
        .join()
        .expect("sender thread")
    };
    let metrics = stack.breaker.as_ref().expect("the layered stack").counts();
    let breaker = format!(
        "{:?}, opened {}×, rejected {}",
        metrics.state, metrics.times_opened, metrics.rejected
    );
    // Unfreeze before closing so that the close does not wait on a frozen broker for nothing.
    if case == Case::Frozen {
        let _ = cluster.broker_round_trip_time(-1, Duration::ZERO);
    }
    let after = teardown(rt, stack, cluster, Duration::from_secs(3));
    let delta = since(after, base);
    finish(paced, Some(delta), Some(breaker))
}

// ------------------------------------------------------------------------------------------
// Part 2: throughput
// ------------------------------------------------------------------------------------------

struct ThroughputRun {
    elapsed: Duration,
    /// CPU time of the whole process during the run (every thread: runtime, sender,
    /// librdkafka's, the mock cluster's).
    cpu: Duration,
    records: u64,
    /// Stack only: `Dropped` answers that made the sender wait and offer again.
    retries: u64,
    /// Raw only: `QueueFull` refusals.
    queue_full: u64,
    occupancy: Occupancy,
}

/// Records in librdkafka and in the hand-off's queue, sampled every ~200 µs during a run.
#[derive(Default, Clone, Copy)]
struct Occupancy {
    samples: u64,
    in_kafka: u64,
    queued: u64,
    in_stack: u64,
}

impl Occupancy {
    fn add(&mut self, in_kafka: usize, queued: u64) {
        self.samples += 1;
        self.in_kafka += in_kafka as u64;
        self.queued += queued;
    }

    fn mean_in_kafka(&self) -> f64 {
        self.in_kafka as f64 / self.samples.max(1) as f64
    }

    fn mean_in_stack(&self) -> f64 {
        self.in_stack as f64 / self.samples.max(1) as f64
    }

    fn mean_queued(&self) -> f64 {
        self.queued as f64 / self.samples.max(1) as f64
    }
}

impl ThroughputRun {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_record(&self) -> Duration {
        self.cpu / u32::try_from(self.records).unwrap_or(u32::MAX)
    }
}

/// Records/s through the layered stack, or through the quick start (`layered` false).
fn throughput_stack(rt: &Runtime, n: u64, layered: bool) -> ThroughputRun {
    let cluster = cluster();
    let kafka = kafka_config(&cluster, "throughput")
        .build()
        .expect("producer");
    let stack = if layered {
        stack(rt, kafka, THROUGHPUT_CAPACITY)
    } else {
        quick_start(rt, kafka, THROUGHPUT_CAPACITY)
    };
    warm_up(&stack, 10_000);
    let base = stack.handoff.counts();

    let cpu = process_cpu();
    let started = Instant::now();
    let sender = {
        let handoff = stack.handoff.clone();
        std::thread::spawn(move || {
            let mut retries = 0u64;
            for _ in 0..n {
                let record = static_record();
                while handoff.send(record.clone()) == Sent::Dropped {
                    retries += 1;
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            retries
        })
    };
    let mut occupancy = Occupancy::default();
    let done = wait_for(Duration::from_secs(120), || {
        let counts = stack.handoff.counts();
        occupancy.add(stack.kafka.counts().in_flight, counts.queued);
        occupancy.in_stack += counts.in_flight;
        counts.finished() - base.finished() >= n
    });
    let elapsed = started.elapsed();
    let retries = sender.join().expect("sender thread");
    let cpu = process_cpu().saturating_sub(cpu);
    let counts = stack.handoff.counts();
    assert!(done, "stack throughput run did not finish: {counts:?}");
    assert_eq!(
        counts.delivered - base.delivered,
        n,
        "stack: not every record was delivered: {counts:?}"
    );
    teardown(rt, stack, cluster, Duration::from_secs(5));
    ThroughputRun {
        elapsed,
        cpu,
        records: n,
        retries,
        queue_full: 0,
        occupancy,
    }
}

fn throughput_raw(rt: &Runtime, n: u64) -> ThroughputRun {
    let cluster = cluster();
    let producer = raw_producer(&cluster);

    async fn produce(producer: FutureProducer, n: u64) -> (u64, u64) {
        let mut in_flight = FuturesUnordered::new();
        let mut delivered = 0u64;
        let mut queue_full = 0u64;
        let mut finish = |outcome: Option<Result<_, _>>| match outcome {
            Some(Ok(Ok(_delivery))) => delivered += 1,
            Some(Ok(Err((error, _message)))) => panic!("raw delivery failed: {error}"),
            Some(Err(canceled)) => panic!("raw delivery canceled: {canceled}"),
            None => {}
        };
        for _ in 0..n {
            while in_flight.len() >= IN_FLIGHT {
                finish(in_flight.next().await);
            }
            loop {
                let record = FutureRecord::<(), [u8]>::to(TOPIC).payload(&PAYLOAD[..]);
                match producer.send_result(record) {
                    Ok(delivery) => {
                        in_flight.push(delivery);
                        break;
                    }
                    Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        queue_full += 1;
                        if in_flight.is_empty() {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        } else {
                            finish(in_flight.next().await);
                        }
                    }
                    Err((error, _)) => panic!("raw send refused: {error}"),
                }
            }
        }
        while let Some(outcome) = in_flight.next().await {
            finish(Some(outcome));
        }
        (delivered, queue_full)
    }

    // Warm-up: connections and metadata, as for the stack.
    let (warm, _) = rt
        .block_on(rt.spawn(produce(producer.clone(), 10_000)))
        .expect("raw warm-up");
    assert_eq!(warm, 10_000);

    let cpu = process_cpu();
    let started = Instant::now();
    let task = rt.spawn(produce(producer.clone(), n));
    let mut occupancy = Occupancy::default();
    wait_for(Duration::from_secs(120), || {
        occupancy.add(producer.in_flight_count().max(0) as usize, 0);
        task.is_finished()
    });
    let (delivered, queue_full) = rt.block_on(task).expect("raw producer task");
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu);
    assert_eq!(delivered, n, "raw: not every record was delivered");
    {
        let _runtime = rt.enter();
        let _ = producer.flush(Duration::from_millis(500));
        drop(producer);
    }
    std::thread::sleep(Duration::from_millis(100));
    drop(cluster);
    ThroughputRun {
        elapsed,
        cpu,
        records: n,
        retries: 0,
        queue_full,
        occupancy,
    }
}

// ------------------------------------------------------------------------------------------
// Part 3: memory with the broker down
// ------------------------------------------------------------------------------------------

/// CPU time used by the whole process so far (user + system, every thread, including threads
/// that have ended), from `/proc/self/stat`, in clock ticks of 10 ms.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of stat(5), counted from the state field (3).
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

struct MemorySample {
    at: Duration,
    rss_kib: u64,
    counts: HandoffCounts,
    kafka_in_flight: usize,
    breaker: BreakerState,
}

struct MemoryRun {
    before_down_kib: u64,
    samples: Vec<MemorySample>,
    offered_rate: f64,
}

fn memory(rt: &Runtime, secs: u64, rate: u64) -> MemoryRun {
    progress(format!(
        "memory: broker down, {rate}/s offered for {secs} s"
    ));
    let cluster = cluster();
    let kafka = kafka_config(&cluster, "memory").build().expect("producer");
    let stack = stack(rt, kafka, HANDOFF_CAPACITY);
    warm_up(&stack, 20_000);
    std::thread::sleep(Duration::from_millis(200));
    let before_down_kib = rss_kib();
    let base = stack.handoff.counts();

    cluster.broker_down(-1).expect("broker_down");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let handoff = stack.handoff.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let batch = 1000u64;
            let period = Duration::from_secs_f64(batch as f64 / rate as f64);
            let started = Instant::now();
            let mut next = started;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..batch {
                    black_box(handoff.send(owned_record(i)));
                    i += 1;
                }
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
            }
            i as f64 / started.elapsed().as_secs_f64()
        })
    };
    let started = Instant::now();
    let mut samples = Vec::new();
    for second in 0..=secs {
        let due = started + Duration::from_secs(second);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let counts = stack.handoff.counts();
        samples.push(MemorySample {
            at: started.elapsed(),
            rss_kib: rss_kib(),
            counts: since(counts, base),
            kafka_in_flight: stack.kafka.counts().in_flight,
            breaker: stack.breaker.as_ref().expect("the layered stack").state(),
        });
    }
    stop.store(true, Ordering::Relaxed);
    let offered_rate = sender.join().expect("sender thread");
    teardown(rt, stack, cluster, Duration::from_secs(1));
    MemoryRun {
        before_down_kib,
        samples,
        offered_rate,
    }
}

// ------------------------------------------------------------------------------------------
// Report
// ------------------------------------------------------------------------------------------

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let clock =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    format!(
        "commit {commit}{}, {cpus} CPUs ({model}), clocksource {clock}",
        if dirty { " + local changes" } else { "" }
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "✅"
    } else {
        "❌"
    }
}

fn report_latency(out: &mut String, rows: &[LatencyRow], rate: u64) {
    let _ = writeln!(
        out,
        "### 1. `Handoff::send` latency\n\n\
         Stack: hand-off (capacity {HANDOFF_CAPACITY}, concurrency {IN_FLIGHT}) → breaker \
         (`FaultClassifier`, defaults) → bulkhead ({IN_FLIGHT}) → `KafkaService` (message timeout \
         {LATENCY_MESSAGE_TIMEOUT:?}). One sender thread offers {rate} records/s in batches of \
         {BATCH} (one batch per {:?}, sleeping in between); each `send` is timed with two \
         `Instant::now()`, so every figure includes one clock read (the first row). Records carry \
         a {PAYLOAD_LEN} B heap payload built before the clock starts. Fault injected just before \
         the first measured send, after a healthy warm-up. Targets: median < {TARGET_MEDIAN_NS} ns, \
         p99.9 < {} µs.\n",
        Duration::from_secs_f64(BATCH as f64 / rate as f64),
        TARGET_P999_NS / 1000
    );
    let _ = writeln!(
        out,
        "| case | sends | median | p99 | p99.9 | max | mean | > 2 µs | accepted / dropped | targets |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---|:---:|");
    for row in rows {
        let s = row.all;
        let targets = if row.case == Case::TimerFloor {
            "–".to_owned()
        } else {
            format!(
                "{}{}",
                verdict(s.median < TARGET_MEDIAN_NS),
                verdict(s.p999 < TARGET_P999_NS)
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.0} ns | {} | {} / {} | {} |",
            row.case.label(),
            s.n,
            ns(s.median),
            ns(s.p99),
            ns(s.p999),
            ns(s.max),
            s.mean,
            s.over_target,
            if row.case == Case::TimerFloor {
                "–".to_owned()
            } else {
                row.paced.accepted.to_string()
            },
            if row.case == Case::TimerFloor {
                "–".to_owned()
            } else {
                row.paced.dropped.to_string()
            },
            targets,
        );
    }
    let _ = writeln!(
        out,
        "\nWhere the tail is (same samples, split): the first send of each batch (right after \
         the sender thread slept) against the others; and sends made while the breaker was \
         closed against open/half-open (state read before each batch).\n"
    );
    let _ = writeln!(
        out,
        "| case | first in batch: n / p50 / p99.9 / max | rest of batch: n / p50 / p99.9 / max | breaker closed: n / p99.9 | breaker open: n / p99.9 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for row in rows {
        let q = |s: Summary| {
            format!(
                "{} / {} / {} / {}",
                s.n,
                ns(s.median),
                ns(s.p999),
                ns(s.max)
            )
        };
        let p = |s: Summary| format!("{} / {}", s.n, ns(s.p999));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            row.case.label(),
            q(row.first),
            q(row.rest),
            p(row.closed),
            if row.open.n == 0 {
                "0 / –".to_owned()
            } else {
                p(row.open)
            },
        );
    }
    let _ = writeln!(
        out,
        "\nEvery send over 2 µs, attributed in this order: **preempted** (the kernel switched the \
         sender thread out between the last check and just after the send: `/proc/thread-self/schedstat` \
         schedule-in count, read outside the timed region), **queue ≥ half full** (the hand-off \
         queue was at least half full just after the send, so `send` may have rung the doorbell: \
         `Notify::notify_one`, which can unpark a runtime thread through a system call), **first in \
         batch** (the first send after the sender slept: cold caches), **other**. Then the three \
         slowest sends, with the time into the run.\n"
    );
    let _ = writeln!(
        out,
        "| case | > 2 µs | preempted | queue ≥ half full | first in batch | other | slowest three |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for row in rows {
        let slow = &row.paced.slow;
        let preempted = slow.iter().filter(|s| s.preempted).count();
        let half = slow.iter().filter(|s| !s.preempted && s.half_full).count();
        let first = slow
            .iter()
            .filter(|s| !s.preempted && !s.half_full && s.first_in_batch)
            .count();
        let other = slow.len() - preempted - half - first;
        let mut worst = slow.clone();
        worst.sort_by_key(|s| std::cmp::Reverse(s.nanos));
        let worst = worst
            .iter()
            .take(3)
            .map(|s| {
                let mut tags = Vec::new();
                if s.preempted {
                    tags.push("preempted");
                }
                if s.half_full {
                    tags.push("half full");
                }
                if s.first_in_batch {
                    tags.push("first");
                }
                if s.dropped {
                    tags.push("dropped");
                }
                format!(
                    "{} at {:.2} s ({})",
                    ns(u64::from(s.nanos)),
                    s.index as f64 / rate as f64,
                    if tags.is_empty() {
                        "–".to_owned()
                    } else {
                        tags.join(", ")
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(
            out,
            "| {} | {} | {preempted} | {half} | {first} | {other} | {worst} |",
            row.case.label(),
            slow.len(),
        );
    }
    let _ = writeln!(
        out,
        "\nWhat the stack did with the measured records (hand-off counts, and the breaker at the \
         end of the run; achieved offer rate; batches that started more than one period late):\n"
    );
    let _ = writeln!(
        out,
        "| case | offered | delivered | shed | rejected | failed | dropped | pending at close | breaker | rate | late batches |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    );
    for row in rows {
        let Some(c) = row.counts else { continue };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}/s | {} |",
            row.case.label(),
            c.offered,
            c.delivered,
            c.shed,
            c.rejected,
            c.failed,
            c.dropped,
            c.queued + c.in_flight,
            row.breaker.as_deref().unwrap_or("–"),
            row.rate,
            row.paced.late_batches,
        );
    }
    let _ = writeln!(out);
}

/// The quick start's throughput (hand-off → `KafkaService`, per-broker domains, no outer
/// layers), measured in the same rounds as the layered stack.
fn report_quick_start(out: &mut String, raw: &[ThroughputRun], quick: &[ThroughputRun]) {
    if raw.is_empty() || quick.is_empty() {
        return;
    }
    let mut ratios: Vec<f64> = raw
        .iter()
        .zip(quick)
        .map(|(r, q)| q.rate() / r.rate())
        .collect();
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    ratios.sort_by(f64::total_cmp);
    let mut rates: Vec<f64> = quick.iter().map(ThroughputRun::rate).collect();
    rates.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let _ = writeln!(
        out,
        "Quick start (hand-off → `KafkaService` with its per-broker domains, no outer breaker or \
         bulkhead), in the same rounds, right after the stack: median {:.0} records/s; per \
         round {}× raw; **median of per-round ratios {median:.2}×** (target ≥ 0.9×) {}.\n",
        rates[rates.len() / 2],
        shown.join(", "),
        verdict(median >= 0.9),
    );
}

fn report_throughput(out: &mut String, raw: &[ThroughputRun], stack: &[ThroughputRun]) {
    let median = |runs: &[ThroughputRun]| {
        if runs.is_empty() {
            return f64::NAN;
        }
        let mut rates: Vec<f64> = runs.iter().map(ThroughputRun::rate).collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let records = raw.iter().chain(stack).next().map_or(0, |r| r.records);
    let median_cpu = |runs: &[ThroughputRun]| {
        let mut cpu: Vec<Duration> = runs.iter().map(ThroughputRun::cpu_per_record).collect();
        cpu.sort();
        cpu.get(cpu.len() / 2).map_or("–".to_owned(), |c| {
            format!("**{:.2} µs**", c.as_secs_f64() * 1e6)
        })
    };
    let _ = writeln!(
        out,
        "### 2. Throughput: full stack vs raw rdkafka\n\n\
         {records} records of {PAYLOAD_LEN} B per run, each run on a fresh mock cluster \
         ({BROKERS} broker, {PARTITIONS} partitions) after a 10 000-record warm-up, timed until \
         every delivery report is in. Same producer properties on both (KafkaConfig's defaults, \
         linger.ms = 5). Raw: `FutureProducer::send_result` from one tokio task, at most \
         {IN_FLIGHT} delivery futures in flight. Stack: a sender thread offering to the hand-off \
         (capacity {THROUGHPUT_CAPACITY}, concurrency {IN_FLIGHT}) → breaker → bulkhead \
         ({IN_FLIGHT}) → `KafkaService` with its per-broker domains on (the broker's compartment \
         {IN_FLIGHT}), waiting 50 µs and offering again on `Dropped`. Runs \
         alternate raw, stack, so that each pair shares the machine's conditions (this machine is shared: \
         compare the ratio within a round). CPU per record is the whole process's user + system \
         time during the run (every thread, librdkafka's and the mock broker's included) divided \
         by the records. Target: stack ≥ {TARGET_RATIO}× raw.\n"
    );
    let _ = writeln!(
        out,
        "| round | raw records/s | stack records/s | stack / raw | CPU per record (raw / stack) | mean records in librdkafka (raw / stack) | stack: mean calls in the worker / mean queued | stack: `Dropped` retries |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---|---|---|---:|");
    let mut ratios = Vec::new();
    for round in 0..raw.len().max(stack.len()) {
        let (r, s) = (raw.get(round), stack.get(round));
        let rate = |run: Option<&ThroughputRun>| {
            run.map_or("–".to_owned(), |run| format!("{:.0}", run.rate()))
        };
        let ratio = match (r, s) {
            (Some(r), Some(s)) => {
                ratios.push(s.rate() / r.rate());
                format!("{:.2}", s.rate() / r.rate())
            }
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio} | {} / {} | {} / {} | {} / {} | {} |",
            round + 1,
            rate(r),
            rate(s),
            r.map_or("–".to_owned(), |r| format!(
                "{:.2} µs",
                r.cpu_per_record().as_secs_f64() * 1e6
            )),
            s.map_or("–".to_owned(), |s| format!(
                "{:.2} µs",
                s.cpu_per_record().as_secs_f64() * 1e6
            )),
            r.map_or("–".to_owned(), |r| format!(
                "{:.0}",
                r.occupancy.mean_in_kafka()
            )),
            s.map_or("–".to_owned(), |s| format!(
                "{:.0}",
                s.occupancy.mean_in_kafka()
            )),
            s.map_or("–".to_owned(), |s| format!(
                "{:.0}",
                s.occupancy.mean_in_stack()
            )),
            s.map_or("–".to_owned(), |s| format!(
                "{:.0}",
                s.occupancy.mean_queued()
            )),
            s.map_or("–".to_owned(), |s| s.retries.to_string()),
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median_ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    let ratio = median(stack) / median(raw);
    let _ = writeln!(
        out,
        "| **median** | **{:.0}** | **{:.0}** | **{ratio:.2}** (median of per-round ratios: {median_ratio:.2}) | {} / {} | | | |",
        median(raw),
        median(stack),
        median_cpu(raw),
        median_cpu(stack),
    );
    let _ = writeln!(
        out,
        "\n**stack / raw = {ratio:.2}×** (target ≥ {TARGET_RATIO}×) {}. Raw `QueueFull` refusals: {}.\n",
        verdict(ratio >= TARGET_RATIO),
        raw.iter().map(|r| r.queue_full).sum::<u64>(),
    );
}

fn report_memory(out: &mut String, run: &MemoryRun, rate: u64) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let record_size = std::mem::size_of::<Record>();
    let _ = writeln!(
        out,
        "### 3. Memory while the broker is down\n\n\
         Default `KafkaConfig` (message timeout 5 s, queue.buffering.max.messages 100 000, \
         queue.buffering.max.kbytes 65 536), default breaker with `FaultClassifier`, bulkhead \
         {IN_FLIGHT}, hand-off capacity {HANDOFF_CAPACITY}. After a healthy warm-up, \
         `broker_down(-1)`, then a sender thread offers {rate} records/s (achieved: {:.0}/s), \
         each with its own {PAYLOAD_LEN} B heap payload. VmRSS before the broker went down: \
         {:.1} MiB. A `Record` is {record_size} B + its payload.\n",
        run.offered_rate,
        mib(run.before_down_kib),
    );
    let _ = writeln!(
        out,
        "| t (s) | VmRSS (MiB) | offered | dropped | shed | rejected | failed | queued | in flight (hand-off / librdkafka) | breaker |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for s in &run.samples {
        let c = s.counts;
        let _ = writeln!(
            out,
            "| {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} / {} | {:?} |",
            s.at.as_secs_f64(),
            mib(s.rss_kib),
            c.offered,
            c.dropped,
            c.shed,
            c.rejected,
            c.failed,
            c.queued,
            c.in_flight,
            s.kafka_in_flight,
            s.breaker,
        );
    }
    let rss = |from: usize| {
        let picked: Vec<u64> = run.samples.iter().skip(from).map(|s| s.rss_kib).collect();
        let (min, max) = (
            picked.iter().copied().min().unwrap_or(0),
            picked.iter().copied().max().unwrap_or(0),
        );
        (min, max)
    };
    let (min, max) = rss(0);
    let (min1, max1) = rss(2);
    let max_in_flight = run
        .samples
        .iter()
        .map(|s| s.kafka_in_flight)
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "\nVmRSS over the whole run: min {:.1} MiB, max {:.1} MiB, **max − min = {:.2} MiB**; \
         from t = 2 s on: max − min = {:.2} MiB. Growth over the pre-outage level: {:.2} MiB. \
         Most records librdkafka held at once: {max_in_flight} (the bulkhead, {IN_FLIGHT}, \
         binds long before queue.buffering.max.messages); the hand-off queue's {HANDOFF_CAPACITY} \
         slots are allocated when it is built (≈ {:.1} MiB, in the baseline) and its payloads add \
         at most ≈ {:.1} MiB.\n",
        mib(min),
        mib(max),
        mib(max - min),
        mib(max1 - min1),
        mib(max.saturating_sub(run.before_down_kib)),
        (HANDOFF_CAPACITY * (record_size + 8)) as f64 / (1024.0 * 1024.0),
        (HANDOFF_CAPACITY * (PAYLOAD_LEN + 16)) as f64 / (1024.0 * 1024.0),
    );
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted =
        |part: &str| filters.is_empty() || filters.iter().any(|f| part.contains(f.as_str()));

    let sends = env_or("TANKER_BENCH_SENDS", 300_000) as usize;
    let rate = env_or("TANKER_BENCH_RATE", 100_000);
    let records = env_or("TANKER_BENCH_RECORDS", 150_000);
    let rounds = env_or("TANKER_BENCH_ROUNDS", 7).max(1);
    let memory_secs = env_or("TANKER_BENCH_MEMORY_SECS", 10);
    let memory_rate = env_or("TANKER_BENCH_MEMORY_RATE", 500_000);

    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "## tanker on librdkafka's mock cluster\n\n\
         Command: `cargo bench --bench kafka{}` — {}; mock cluster of {BROKERS} broker, topic of \
         {PARTITIONS} partitions; tokio multi-thread runtime with 2 workers.\n",
        if filters.is_empty() {
            String::new()
        } else {
            format!(" -- {}", filters.join(" "))
        },
        machine()
    );

    if wanted("latency") {
        let rows: Vec<LatencyRow> = [Case::TimerFloor, Case::Healthy, Case::Down, Case::Frozen]
            .into_iter()
            .map(|case| latency_case(&rt, case, sends, rate))
            .collect();
        report_latency(&mut out, &rows, rate);
    }
    if wanted("throughput") {
        let mut raw = Vec::new();
        let mut stacked = Vec::new();
        let mut quick = Vec::new();
        // `TANKER_BENCH_VARIANT=raw` (or `stack`) runs one side only, for profiling.
        let variant = std::env::var("TANKER_BENCH_VARIANT").unwrap_or_default();
        for round in 1..=rounds {
            if variant != "stack" {
                progress(format!("throughput round {round}/{rounds}: raw"));
                raw.push(throughput_raw(&rt, records));
            }
            if variant != "raw" {
                progress(format!("throughput round {round}/{rounds}: stack"));
                stacked.push(throughput_stack(&rt, records, true));
                progress(format!("throughput round {round}/{rounds}: quick start"));
                quick.push(throughput_stack(&rt, records, false));
            }
        }
        report_throughput(&mut out, &raw, &stacked);
        report_quick_start(&mut out, &raw, &quick);
    }
    if wanted("memory") {
        let run = memory(&rt, memory_secs, memory_rate);
        report_memory(&mut out, &run, memory_rate);
    }
    let _ = writeln!(
        out,
        "_Whole run: {:.0} s._",
        started.elapsed().as_secs_f64()
    );
    println!("{out}");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        std::path::PathBuf::from,
    );
    let saved = target.join("kafka-bench.md");
    match std::fs::write(&saved, &out) {
        Ok(()) => progress(format!("report saved to {}", saved.display())),
        Err(error) => progress(format!(
            "could not save the report to {}: {error}",
            saved.display()
        )),
    }
    // Producers' background threads may still be winding down; do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(2));
}
