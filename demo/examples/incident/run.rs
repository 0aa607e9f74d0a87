//! The incident, as a library: a service, three ways of writing stats to Kafka, a load generator,
//! fault phases, and per-second figures. Used by `demo/examples/incident/main.rs` and by the
//! end-to-end test `tests/incident.rs`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, FutureProducer, FutureRecord, Producer, ThreadedProducer,
};
use rdkafka::util::Timeout;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, Instant};

use tanker::breaker::{BreakerHandle, BreakerState};
use tanker::handoff::{Handoff, HandoffCounts};
use tanker::kafka::{KafkaConfig, KafkaService, Record};

use super::raw::{self, Counting};

/// The topic the service writes its stats to.
pub(crate) const TOPIC: &str = "request-stats";

/// Brokers of the mock cluster.
pub(crate) const BROKERS: i32 = 3;
/// Partitions of [`TOPIC`] on the mock cluster: two led by each broker.
pub(crate) const PARTITIONS: i32 = 6;
/// The broker that freezes alone in [`Fault::OneFrozen`].
pub(crate) const SICK_BROKER: i32 = 2;
/// A frozen broker holds every answer back this long, far longer than any timeout, while its
/// connections stay open.
const FROZEN_RTT: Duration = Duration::from_secs(30);

/// What Kafka does during a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Kafka answers.
    None,
    /// One broker of three ([`SICK_BROKER`]) stops answering while its connections stay open;
    /// the others answer (a slow disk, a long pause: the most common Kafka incident).
    OneFrozen,
    /// Every broker stops answering while connections stay open (the seed incident).
    Frozen,
    /// Every broker refuses connections.
    Down,
}

impl Fault {
    /// Whether the whole cluster is sick, not just one broker.
    pub(crate) fn is_cluster_wide(self) -> bool {
        matches!(self, Fault::Frozen | Fault::Down)
    }
}

/// One phase of the run.
#[derive(Debug, Clone)]
pub(crate) struct Phase {
    pub(crate) name: String,
    pub(crate) secs: u32,
    pub(crate) fault: Fault,
}

/// How the service writes its stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// Awaits each Kafka write inside the handler, as the original code did.
    Naive,
    /// Raw rdkafka: `ThreadedProducer::send`, errors ignored, nothing awaited. It never blocks
    /// either; librdkafka buffers and retries inside until the message timeout.
    FireAndForget,
    /// Hands each record off to tanker's hand-off → Kafka leaf (a compartment and a breaker per
    /// broker).
    Protected,
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Variant::Naive => "naive",
            Variant::FireAndForget => "fire-and-forget",
            Variant::Protected => "protected",
        })
    }
}

/// Knobs of one run.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) phases: Vec<Phase>,
    /// Requests per second sent by the load generator.
    pub(crate) rate: u32,
    /// Client connections (the most requests in flight at once).
    pub(crate) connections: usize,
    /// A request not answered within this is a client timeout.
    pub(crate) client_timeout: Duration,
    /// Print a progress line every second.
    pub(crate) progress: bool,
    /// A Redis URL for the handler's critical lookup instead of the in-memory map.
    pub(crate) redis: Option<String>,
}

/// Injects faults into the Kafka the service writes to.
pub(crate) trait Faults {
    /// Makes Kafka behave as `fault` says from now on.
    fn apply(&self, fault: Fault);
}

/// No fault injection (a real cluster: the faults are the operator's to cause).
pub(crate) struct NoFaults;

impl Faults for NoFaults {
    fn apply(&self, _fault: Fault) {}
}

/// librdkafka's in-process mock cluster.
pub(crate) type Cluster = MockCluster<'static, DefaultProducerContext>;

/// A mock cluster of [`BROKERS`] brokers with [`TOPIC`] in [`PARTITIONS`] partitions, partition
/// `p` led by broker `p % BROKERS + 1` (pinned, so that the sick broker's share is known: a
/// third of the partitions).
pub(crate) fn mock_cluster() -> KafkaResult<Cluster> {
    let cluster = MockCluster::new(BROKERS)?;
    cluster.create_topic(TOPIC, PARTITIONS, 1)?;
    for partition in 0..PARTITIONS {
        cluster.partition_leader(TOPIC, partition, Some(partition % BROKERS + 1))?;
    }
    Ok(cluster)
}

/// librdkafka's in-process mock cluster (from [`mock_cluster`]), with the faults injected.
pub(crate) struct MockFaults<'a> {
    pub(crate) cluster: &'a Cluster,
}

impl Faults for MockFaults<'_> {
    fn apply(&self, fault: Fault) {
        for broker in 1..=BROKERS {
            let result = match fault {
                Fault::Down => self.cluster.broker_down(broker),
                Fault::None | Fault::OneFrozen | Fault::Frozen => {
                    let frozen = fault == Fault::Frozen
                        || (fault == Fault::OneFrozen && broker == SICK_BROKER);
                    let rtt = if frozen { FROZEN_RTT } else { Duration::ZERO };
                    self.cluster
                        .broker_up(broker)
                        .and_then(|()| self.cluster.broker_round_trip_time(broker, rtt))
                }
            };
            if let Err(error) = result {
                eprintln!("fault injection on broker {broker} failed: {error}");
            }
        }
    }
}

/// One second of the run, as the client and the server saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Second {
    pub(crate) at: u32,
    pub(crate) phase: String,
    /// The phase's index in [`Settings::phases`].
    pub(crate) phase_index: usize,
    pub(crate) fault: Option<Fault>,
    /// Requests answered in this second (by intended send time).
    pub(crate) answered: u64,
    pub(crate) timeouts: u64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    /// The p99 counting each client timeout as the timeout itself: what callers felt.
    pub(crate) p99_felt_us: u64,
    pub(crate) max_us: u64,
    /// Records handed to the writer during this second (one per request that reached the
    /// handler).
    pub(crate) offered: u64,
    /// Records delivered to Kafka during this second.
    pub(crate) delivered: u64,
    /// Records given up on during this second: for tanker dropped, expired, shed, rejected or
    /// failed for good; for fire-and-forget refused by `send` or failed in Kafka.
    pub(crate) ignored: u64,
    /// Kafka's errors during this second: failed deliveries (tanker: failures its breaker
    /// counted, including the records that then got one more try).
    pub(crate) kafka_errors: u64,
    /// The most records buffered in the writer at a sample during this second: tanker's
    /// queued + parked, librdkafka's in-flight count for the raw producers.
    pub(crate) backlog: u64,
    /// The sickest of the brokers' breakers at the end of this second (protected only).
    pub(crate) breaker: Option<BreakerState>,
    /// The most brokers whose breaker was not closed at a sample during this second
    /// (protected only).
    pub(crate) open_breakers: Option<usize>,
}

/// One phase of a variant's run, summed over its seconds. Records are counted when their
/// outcome is seen (a record offered in one phase may be delivered or lost in a later one).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PhaseFigures {
    /// Requests whose intended send time fell in this phase: answered or timed out.
    pub(crate) requests: u64,
    pub(crate) answered: u64,
    /// The p99 latency (µs) of the phase's requests, counting each client timeout as the
    /// timeout itself: what callers felt.
    pub(crate) p99_felt_us: Option<u64>,
    pub(crate) offered: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    /// The most records buffered in the writer at a sample.
    pub(crate) peak_backlog: u64,
    /// From the phase's start to the end of its first second whose deliveries reached 95 % of
    /// the offered rate (for the healed phase: from the heal to full delivery).
    pub(crate) to_full_delivery: Option<Duration>,
    /// The most brokers whose breaker was not closed at once (protected only).
    pub(crate) most_open_breakers: Option<usize>,
}

/// Everything one variant's run produced.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) variant: Variant,
    pub(crate) seconds: Vec<Second>,
    /// Each phase's figures, in the order of [`Settings::phases`].
    pub(crate) phases: Vec<PhaseFigures>,
    /// Latencies (µs) of every request answered, by phase index.
    pub(crate) latencies_by_phase: Vec<Vec<u64>>,
    pub(crate) timeouts_by_phase: Vec<u64>,
    pub(crate) sent: u64,
    pub(crate) answered: u64,
    /// When the breaker was first seen closed after the last fault ended, counted from then.
    pub(crate) heal_to_closed: Option<Duration>,
    /// When the breaker was first seen open, counted from the start of the first fault.
    pub(crate) fault_to_open: Option<Duration>,
    /// The hand-off's final counts (protected only).
    pub(crate) handoff: Option<HandoffCounts>,
    /// Records offered, delivered and lost, once the writer has flushed.
    pub(crate) records: Records,
    /// The most records buffered in the writer at any sample (every 20 ms).
    pub(crate) peak_backlog: u64,
    /// From the heal to the end of the first second whose deliveries reached 95 % of the
    /// offered rate.
    pub(crate) heal_to_full_delivery: Option<Duration>,
    /// From the heal to the first sample whose backlog was at most 5 % of a second's records.
    pub(crate) heal_to_drained: Option<Duration>,
    /// The process's resident memory during the run (Linux only).
    pub(crate) rss: Option<Rss>,
    /// The breaker's states in the order seen, without repeats (protected only).
    pub(crate) breaker_states: Vec<BreakerState>,
}

impl Report {
    /// The p99 latency (µs) over the phases with this fault.
    pub(crate) fn p99_where(&self, phases: &[Phase], want: impl Fn(Fault) -> bool) -> Option<u64> {
        let mut all: Vec<u64> = phases
            .iter()
            .zip(&self.latencies_by_phase)
            .filter(|(phase, _)| want(phase.fault))
            .flat_map(|(_, lat)| lat.iter().copied())
            .collect();
        percentile(&mut all, 0.99)
    }

    /// Client timeouts over the phases with this fault.
    pub(crate) fn timeouts_where(&self, phases: &[Phase], want: impl Fn(Fault) -> bool) -> u64 {
        phases
            .iter()
            .zip(&self.timeouts_by_phase)
            .filter(|(phase, _)| want(phase.fault))
            .map(|(_, t)| *t)
            .sum()
    }
}

/// A variant's records at the end of its run, after the writer flushed (or gave up flushing).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Records {
    /// One per request that reached the handler.
    pub(crate) offered: u64,
    /// Delivered to Kafka (naive: the deliveries a handler awaited to the end; a handler
    /// cancelled by its client's timeout does not see its record's fate).
    pub(crate) delivered: u64,
    /// Given up on: refused or failed (tanker: dropped, expired, shed, rejected, failed).
    pub(crate) lost: u64,
    /// Neither: still in the writer when the run ended.
    pub(crate) left: u64,
    /// Naive only: records whose handler was cancelled (its client timed out) while it awaited
    /// the delivery. librdkafka still sent them; their outcome was seen by no one.
    pub(crate) unseen: u64,
}

/// The process's resident memory, in bytes: when the run started, and its peak during the run.
/// Variants run one after another in one process, so a later one may reuse memory an earlier
/// one freed: compare runs of one variant each (`--variant`) for exact figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rss {
    pub(crate) start: u64,
    pub(crate) peak: u64,
}

/// Reads the process's resident memory from `/proc/self/status` (Linux).
mod memory {
    fn status(field: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kib: u64 = line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// Resets the peak (`VmHWM`) to the current resident size and returns that size.
    pub(super) fn reset_peak() -> Option<u64> {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
        status("VmRSS:")
    }

    /// The peak resident size since the last reset.
    pub(super) fn peak() -> Option<u64> {
        status("VmHWM:")
    }
}

/// The p99 of `latencies` (µs) with each of `timeouts` counted as `timeout_us`.
fn felt_p99(latencies: &[u64], timeouts: u64, timeout_us: u64) -> Option<u64> {
    let mut felt = latencies.to_vec();
    felt.extend(std::iter::repeat_n(timeout_us, timeouts as usize));
    percentile(&mut felt, 0.99)
}

/// From second `from` to the end of the first of `seconds` that delivered at least `full`
/// records.
fn first_full_second<'a>(
    mut seconds: impl Iterator<Item = &'a Second>,
    from: u32,
    full: u64,
) -> Option<Duration> {
    seconds
        .find(|s| s.delivered >= full)
        .map(|s| Duration::from_secs(u64::from(s.at + 1 - from)))
}

fn percentile(values: &mut [u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

// ===== the service =====

enum Writer {
    Naive {
        producer: FutureProducer,
        delivered: AtomicU64,
        errors: AtomicU64,
        offered: AtomicU64,
    },
    FireAndForget {
        producer: ThreadedProducer<Counting>,
        reports: Arc<Reports>,
    },
    Protected(Handoff<Record>),
}

/// Fire-and-forget's records: those offered and refused by `send`, and its delivery reports.
#[derive(Default)]
pub(crate) struct Reports {
    offered: AtomicU64,
    /// `send` answered `Err` (librdkafka's local queue was full): the record is gone.
    refused: AtomicU64,
    deliveries: Counting,
}

enum Lookup {
    Memory(HashMap<u64, String>),
    Redis(redis::aio::MultiplexedConnection),
}

struct App {
    lookup: Lookup,
    writer: Writer,
}

#[derive(Deserialize)]
struct Params {
    key: u64,
}

/// The handler: the critical work (a lookup), then one stats record per request.
async fn handle(State(app): State<Arc<App>>, Query(params): Query<Params>) -> String {
    let value = match &app.lookup {
        Lookup::Memory(map) => map.get(&(params.key % 10_000)).cloned().unwrap_or_default(),
        Lookup::Redis(conn) => {
            let mut conn = conn.clone();
            redis::cmd("GET")
                .arg(format!("key:{}", params.key % 10_000))
                .query_async::<Option<String>>(&mut conn)
                .await
                .ok()
                .flatten()
                .unwrap_or_default()
        }
    };
    let stats = format!("{{\"key\":{},\"len\":{}}}", params.key, value.len());
    match &app.writer {
        Writer::Naive {
            producer,
            delivered,
            errors,
            offered,
        } => {
            offered.fetch_add(1, Ordering::Relaxed);
            // The original code: wait for Kafka before answering.
            let record = FutureRecord::<(), str>::to(TOPIC).payload(&stats);
            match producer.send(record, Timeout::Never).await {
                Ok(_) => delivered.fetch_add(1, Ordering::Relaxed),
                Err(_) => errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        Writer::FireAndForget { producer, reports } => {
            // Doing nothing, asynchronously: no await, errors ignored (only counted, to
            // measure what was lost).
            reports.offered.fetch_add(1, Ordering::Relaxed);
            let record = BaseRecord::<(), str>::to(TOPIC).payload(&stats);
            if producer.send(record).is_err() {
                reports.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        Writer::Protected(handoff) => {
            // The fix: hand the record off and answer at once.
            handoff.send(Record::new(TOPIC, stats.into_bytes()));
        }
    }
    value
}

/// The protected writer's parts, kept to read their state.
struct Protection {
    handoff: Handoff<Record>,
    kafka: KafkaService,
}

impl Protection {
    /// Brokers whose breaker is not closed.
    fn open_breakers(&self) -> usize {
        let states = self.breakers().into_iter().map(|b| b.state());
        states
            .filter(|state| !matches!(state, BreakerState::Closed | BreakerState::ForcedClosed))
            .count()
    }

    /// The state of the brokers' breakers, the sickest first: open if any is open.
    fn breaker_state(&self) -> BreakerState {
        let states = self.breakers().into_iter().map(|b| b.state());
        states
            .max_by_key(|state| match state {
                BreakerState::Closed | BreakerState::ForcedClosed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open | BreakerState::ForcedOpen => 2,
            })
            .unwrap_or(BreakerState::Closed)
    }

    /// Kafka faults the brokers' breakers counted.
    fn failures(&self) -> u64 {
        self.breakers().iter().map(|b| b.counts().failures).sum()
    }

    fn breakers(&self) -> Vec<BreakerHandle> {
        let keys = self.kafka.brokers().map(|b| b.keys()).unwrap_or_default();
        keys.iter().map(|key| key.breaker().clone()).collect()
    }
}

/// The producer's settings, shared by the protected writer and fire-and-forget: tanker's
/// defaults (`KafkaService::builder`), so both write with the same librdkafka properties.
fn kafka_config(bootstrap: &str) -> KafkaConfig {
    KafkaService::builder(bootstrap).name("stats")
}

/// The protected writer: the README's quick start on its defaults, nothing tuned for the demo
/// (message timeout 5 s; a compartment and a breaker per broker, built into the Kafka leaf;
/// hand-off of 50 000 records that parks them while a breaker is open).
fn protected_writer(bootstrap: &str) -> Result<Protection, tower::BoxError> {
    let kafka = kafka_config(bootstrap).build()?;
    let handoff = Handoff::builder().name("stats").spawn(kafka.clone())?;
    Ok(Protection { handoff, kafka })
}

/// Raw rdkafka with the protected writer's properties, counting its delivery reports.
fn fire_and_forget_producer(
    bootstrap: &str,
) -> Result<(ThreadedProducer<Counting>, Arc<Reports>), tower::BoxError> {
    let config = raw::client_config(&kafka_config(bootstrap), "fire-and-forget")?;
    let reports = Arc::new(Reports::default());
    let producer = config.create_with_context(reports.deliveries.clone())?;
    Ok((producer, reports))
}

fn naive_producer(bootstrap: &str) -> Result<FutureProducer, tower::BoxError> {
    // librdkafka's defaults, as a team would write it first.
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

// ===== the load generator =====

#[derive(Default)]
struct Tally {
    latencies: Vec<u64>,
    timeouts: u64,
}

struct Client {
    tallies: Vec<Mutex<Tally>>,
    sent: AtomicU64,
    answered: AtomicU64,
}

/// One client connection: sends its share of requests at their intended times and measures each
/// from its intended time, so a slow server cannot hide its own queueing.
/// When a connection sends: requests `first`, `first + step`, ... below `total`, request `i` at
/// `start + i / rate`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    first: u64,
    step: u64,
    total: u64,
    rate: u32,
    timeout: Duration,
}

async fn connection(addr: std::net::SocketAddr, client: Arc<Client>, schedule: Schedule) {
    let Schedule {
        start,
        first,
        step,
        total,
        rate,
        timeout,
    } = schedule;
    let mut stream: Option<BufReader<TcpStream>> = None;
    let mut busy_until = start;
    let mut i = first;
    while i < total {
        let intended = start + Duration::from_nanos(i * 1_000_000_000 / u64::from(rate));
        let second = (i / u64::from(rate)) as usize;
        let deadline = intended + timeout;
        sleep_until(intended).await;
        // A request waiting for its connection is measured from when it should have been sent
        // (the server's slowness is to blame); one sent late only because the timer fired late
        // is measured from when it was sent.
        let measured_from = if busy_until > intended {
            intended
        } else {
            Instant::now()
        };
        client.sent.fetch_add(1, Ordering::Relaxed);
        let outcome = if Instant::now() >= deadline {
            // Still busy with an earlier request: this one is already late.
            None
        } else {
            tokio::time::timeout_at(deadline, request(&mut stream, addr, i))
                .await
                .ok()
                .and_then(Result::ok)
        };
        let mut tally = client.tallies[second.min(client.tallies.len() - 1)]
            .lock()
            .unwrap();
        busy_until = Instant::now();
        match outcome {
            Some(()) => {
                tally
                    .latencies
                    .push(busy_until.duration_since(measured_from).as_micros() as u64);
                client.answered.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                tally.timeouts += 1;
                // A timed-out connection may still get an answer later: start afresh.
                stream = None;
            }
        }
        drop(tally);
        i += step;
    }
}

async fn request(
    stream: &mut Option<BufReader<TcpStream>>,
    addr: std::net::SocketAddr,
    key: u64,
) -> std::io::Result<()> {
    if stream.is_none() {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        *stream = Some(BufReader::new(tcp));
    }
    let Some(conn) = stream.as_mut() else {
        return Err(std::io::ErrorKind::NotConnected.into());
    };
    let req = format!("GET /lookup?key={key} HTTP/1.1\r\nHost: incident\r\n\r\n");
    conn.get_mut().write_all(req.as_bytes()).await?;
    let mut length = 0usize;
    let mut line = String::new();
    let mut status_ok = false;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            *stream = None;
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.starts_with("HTTP/1.1 ") {
            status_ok = line.starts_with("HTTP/1.1 200");
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    if status_ok {
        Ok(())
    } else {
        Err(std::io::ErrorKind::Other.into())
    }
}

// ===== one run =====

/// Runs `variant` through every phase and returns its figures. Faults are applied from the
/// calling task (the mock cluster must stay on its thread).
pub(crate) async fn run(
    variant: Variant,
    settings: &Settings,
    bootstrap: &str,
    faults: &dyn Faults,
) -> Result<Report, tower::BoxError> {
    faults.apply(Fault::None);
    let rss_start = memory::reset_peak();
    let protection = match variant {
        Variant::Protected => Some(protected_writer(bootstrap)?),
        Variant::Naive | Variant::FireAndForget => None,
    };
    let writer = match (&protection, variant) {
        (Some(p), _) => Writer::Protected(p.handoff.clone()),
        (None, Variant::FireAndForget) => {
            let (producer, reports) = fire_and_forget_producer(bootstrap)?;
            Writer::FireAndForget { producer, reports }
        }
        (None, _) => Writer::Naive {
            producer: naive_producer(bootstrap)?,
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            offered: AtomicU64::new(0),
        },
    };
    let lookup = match &settings.redis {
        Some(url) => {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            for key in 0..10_000u64 {
                let _: () = redis::cmd("SET")
                    .arg(format!("key:{key}"))
                    .arg(format!("value-{key}"))
                    .query_async(&mut conn)
                    .await?;
            }
            Lookup::Redis(conn)
        }
        None => Lookup::Memory((0..10_000).map(|k| (k, format!("value-{k}"))).collect()),
    };
    let app = Arc::new(App { lookup, writer });

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = Router::new()
        .route("/lookup", get(handle))
        .with_state(app.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let total_secs: u32 = settings.phases.iter().map(|p| p.secs).sum();
    let total = u64::from(total_secs) * u64::from(settings.rate);
    let client = Arc::new(Client {
        tallies: (0..total_secs.max(1)).map(|_| Mutex::default()).collect(),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
    });
    let start = Instant::now() + Duration::from_millis(50);
    let step = settings.connections as u64;
    let workers: Vec<_> = (0..step)
        .map(|first| {
            let schedule = Schedule {
                start,
                first,
                step,
                total,
                rate: settings.rate,
                timeout: settings.client_timeout,
            };
            tokio::spawn(connection(addr, client.clone(), schedule))
        })
        .collect();

    // The phase controller: applies faults on time and samples the server side.
    let mut seconds = Vec::new();
    let mut states: Vec<BreakerState> = Vec::new();
    let mut previous = ServerCounts::default();
    let mut fault_started: Option<Instant> = None;
    let mut healed_at: Option<Instant> = None;
    let mut fault_to_open = None;
    let mut heal_to_closed = None;
    let mut heal_to_drained = None;
    let mut peak_backlog = 0;
    let drained_below = u64::from(settings.rate / 20);
    let mut at = 0u32;
    for (phase_index, phase) in settings.phases.iter().enumerate() {
        let phase_start = start + Duration::from_secs(u64::from(at));
        sleep_until(phase_start).await;
        let injected = Instant::now();
        faults.apply(phase.fault);
        let took = injected.elapsed();
        if took > Duration::from_millis(100) {
            // The mock cluster answers fault injection from its own thread; say when it was
            // slow, since the first second's samples start after it.
            eprintln!(
                "  [{variant:>15}] injecting `{}` took {:.2} s",
                phase.name,
                took.as_secs_f64()
            );
        }
        if phase.fault != Fault::None && fault_started.is_none() {
            fault_started = Some(Instant::now());
        }
        if phase.fault == Fault::None && fault_started.is_some() {
            healed_at = Some(Instant::now());
            heal_to_closed = None;
        }
        for s in 0..phase.secs {
            let second_end = phase_start + Duration::from_secs(u64::from(s) + 1);
            // Watch the breaker and the backlog closely so transitions are timed to 20 ms.
            let mut backlog = 0;
            let mut open_breakers = protection.as_ref().map(|_| 0);
            // At least one sample per second, even when injecting the fault took a while.
            loop {
                let buffered = buffered(&app.writer);
                backlog = backlog.max(buffered);
                if buffered <= drained_below && heal_to_drained.is_none() {
                    heal_to_drained = healed_at.map(|t| t.elapsed());
                }
                if let Some(p) = &protection {
                    open_breakers = open_breakers.max(Some(p.open_breakers()));
                    let state = p.breaker_state();
                    if states.last() != Some(&state) {
                        states.push(state);
                    }
                    if state == BreakerState::Open && fault_to_open.is_none() {
                        fault_to_open = fault_started.map(|t| t.elapsed());
                    }
                    if state == BreakerState::Closed && heal_to_closed.is_none() {
                        heal_to_closed = healed_at.map(|t| t.elapsed());
                    }
                }
                let left = second_end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20).min(left)).await;
            }
            let now = server_counts(&app.writer, protection.as_ref());
            let second = Second {
                at,
                phase: phase.name.clone(),
                phase_index,
                fault: Some(phase.fault),
                offered: now.offered - previous.offered,
                delivered: now.delivered - previous.delivered,
                ignored: now.ignored - previous.ignored,
                kafka_errors: now.errors - previous.errors,
                backlog,
                breaker: protection.as_ref().map(Protection::breaker_state),
                open_breakers,
                ..Second::default()
            };
            previous = now;
            peak_backlog = peak_backlog.max(backlog);
            if settings.progress {
                let tally = client.tallies[at as usize].lock().unwrap();
                println!(
                    "  [{variant:>15}] {:>3}s {:<8} sent {:>6}  answered {:>6}  timeouts {:>4}  delivered {:>5}  ignored {:>5}  kafka errors {:>4}  backlog {:>6}  breaker {}",
                    at + 1,
                    phase.name,
                    client.sent.load(Ordering::Relaxed),
                    client.answered.load(Ordering::Relaxed),
                    tally.timeouts,
                    second.delivered,
                    second.ignored,
                    second.kafka_errors,
                    second.backlog,
                    second.breaker.map_or("-".to_owned(), |s| s.to_string()),
                );
            }
            seconds.push(second);
            at += 1;
        }
    }
    for worker in workers {
        let _ = worker.await;
    }
    faults.apply(Fault::None);

    // Per-second and per-phase latencies from the client's tallies.
    let mut latencies_by_phase = vec![Vec::new(); settings.phases.len()];
    let mut timeouts_by_phase = vec![0; settings.phases.len()];
    let timeout_us = settings.client_timeout.as_micros() as u64;
    for (second, tally) in seconds.iter_mut().zip(&client.tallies) {
        let mut tally = tally.lock().unwrap();
        let phase = second.phase_index;
        latencies_by_phase[phase].extend(tally.latencies.iter().copied());
        timeouts_by_phase[phase] += tally.timeouts;
        second.answered = tally.latencies.len() as u64;
        second.timeouts = tally.timeouts;
        second.p50_us = percentile(&mut tally.latencies, 0.50).unwrap_or(0);
        second.p99_us = percentile(&mut tally.latencies, 0.99).unwrap_or(0);
        second.p99_felt_us = felt_p99(&tally.latencies, tally.timeouts, timeout_us).unwrap_or(0);
        second.max_us = tally.latencies.last().copied().unwrap_or(0);
    }

    server.abort();
    let full = u64::from(settings.rate) * 95 / 100;
    let mut phase_start = 0;
    let mut phases = Vec::new();
    for (index, phase) in settings.phases.iter().enumerate() {
        let own = || seconds.iter().filter(move |s| s.phase_index == index);
        let latencies = &latencies_by_phase[index];
        let timeouts = timeouts_by_phase[index];
        phases.push(PhaseFigures {
            requests: latencies.len() as u64 + timeouts,
            answered: latencies.len() as u64,
            p99_felt_us: felt_p99(latencies, timeouts, timeout_us),
            offered: own().map(|s| s.offered).sum(),
            delivered: own().map(|s| s.delivered).sum(),
            lost: own().map(|s| s.ignored).sum(),
            peak_backlog: own().map(|s| s.backlog).max().unwrap_or(0),
            to_full_delivery: first_full_second(own(), phase_start, full),
            most_open_breakers: own().filter_map(|s| s.open_breakers).max(),
        });
        phase_start += phase.secs;
    }
    let healed_start = settings
        .phases
        .iter()
        .rposition(|p| p.fault != Fault::None)
        .map(|last_fault| {
            settings.phases[..=last_fault]
                .iter()
                .map(|p| p.secs)
                .sum::<u32>()
        });
    let heal_to_full_delivery = healed_start
        .and_then(|from| first_full_second(seconds.iter().filter(|s| s.at >= from), from, full));
    let (handoff, records) = finish(&app.writer, protection.as_ref()).await;
    let rss = rss_start
        .zip(memory::peak())
        .map(|(start, peak)| Rss { start, peak });
    Ok(Report {
        variant,
        seconds,
        phases,
        latencies_by_phase,
        timeouts_by_phase,
        sent: client.sent.load(Ordering::Relaxed),
        answered: client.answered.load(Ordering::Relaxed),
        heal_to_closed,
        fault_to_open,
        handoff,
        records,
        peak_backlog,
        heal_to_full_delivery,
        heal_to_drained,
        rss,
        breaker_states: states,
    })
}

/// Lets the writer finish what it holds (up to the message timeout and a little more), then
/// counts its records.
async fn finish(
    writer: &Writer,
    protection: Option<&Protection>,
) -> (Option<HandoffCounts>, Records) {
    let grace = Duration::from_secs(6);
    match (writer, protection) {
        (Writer::Protected(_), Some(p)) => {
            let report = p.handoff.close(grace).await;
            let _ = p.kafka.flush(Duration::from_secs(2)).await;
            let c = report.counts;
            let records = Records {
                offered: c.offered,
                delivered: c.delivered,
                lost: c.ignored(),
                left: c.pending(),
                unseen: 0,
            };
            (Some(c), records)
        }
        (Writer::FireAndForget { producer, reports }, _) => {
            // librdkafka's flush blocks: keep it off the runtime's threads.
            let _ = tokio::task::block_in_place(|| producer.flush(Timeout::After(grace)));
            let refused = reports.refused.load(Ordering::Relaxed);
            let failed = reports.deliveries.0.failed.load(Ordering::Relaxed);
            let records = Records {
                offered: reports.offered.load(Ordering::Relaxed),
                delivered: reports.deliveries.0.delivered.load(Ordering::Relaxed),
                lost: refused + failed,
                left: producer.in_flight_count().max(0) as u64,
                unseen: 0,
            };
            (None, records)
        }
        (
            Writer::Naive {
                producer,
                delivered,
                errors,
                offered,
            },
            _,
        ) => {
            let _ = tokio::task::block_in_place(|| producer.flush(Timeout::After(grace)));
            let mut records = Records {
                offered: offered.load(Ordering::Relaxed),
                delivered: delivered.load(Ordering::Relaxed),
                lost: errors.load(Ordering::Relaxed),
                left: producer.in_flight_count().max(0) as u64,
                unseen: 0,
            };
            records.unseen = records.offered - records.delivered - records.lost - records.left;
            (None, records)
        }
        (Writer::Protected(_), None) => (None, Records::default()),
    }
}

/// Records buffered in the writer now: tanker's queued + parked, librdkafka's in-flight count.
fn buffered(writer: &Writer) -> u64 {
    match writer {
        Writer::Naive { producer, .. } => producer.in_flight_count().max(0) as u64,
        Writer::FireAndForget { producer, .. } => producer.in_flight_count().max(0) as u64,
        Writer::Protected(handoff) => {
            let c = handoff.counts();
            c.queued + c.parked
        }
    }
}

#[derive(Default, Clone, Copy)]
struct ServerCounts {
    offered: u64,
    delivered: u64,
    ignored: u64,
    errors: u64,
}

fn server_counts(writer: &Writer, protection: Option<&Protection>) -> ServerCounts {
    match writer {
        Writer::Naive {
            delivered,
            errors,
            offered,
            ..
        } => ServerCounts {
            offered: offered.load(Ordering::Relaxed),
            delivered: delivered.load(Ordering::Relaxed),
            ignored: 0,
            errors: errors.load(Ordering::Relaxed),
        },
        Writer::FireAndForget { reports, .. } => {
            let failed = reports.deliveries.0.failed.load(Ordering::Relaxed);
            ServerCounts {
                offered: reports.offered.load(Ordering::Relaxed),
                delivered: reports.deliveries.0.delivered.load(Ordering::Relaxed),
                ignored: failed + reports.refused.load(Ordering::Relaxed),
                errors: failed,
            }
        }
        Writer::Protected(handoff) => {
            let c = handoff.counts();
            ServerCounts {
                offered: c.offered,
                delivered: c.delivered,
                ignored: c.ignored(),
                errors: protection.map_or(c.failed, Protection::failures),
            }
        }
    }
}
