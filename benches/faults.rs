//! Records kept through Kafka faults: tanker's quick-start stack next to raw rdkafka
//! fire-and-forget, side by side in one process.
//!
//! Run with `cargo bench --bench faults`; `cargo bench --bench faults -- frozen` runs the
//! scenarios whose name contains `frozen`. It prints a Markdown report on stdout (progress on
//! stderr; the report is also saved to `target/faults-bench.md`) and takes about 40 s a
//! scenario. The phases can be changed with `TANKER_FAULTS_RATE` (records/s, 2000),
//! `TANKER_FAULTS_HEALTHY` (s, 5), `TANKER_FAULTS_FAULT` (s, 15), `TANKER_FAULTS_HEALED` (s, 10)
//! and `TANKER_FAULTS_SETTLE` (s, 6). `-- long` runs an outage longer than the hand-off's budget
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
//!   most) → `breaker` with `FaultClassifier` → `bulkhead(4096)` → `KafkaService`.
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

use tanker::breaker::{BreakerHandle, BreakerLayer};
use tanker::bulkhead::BulkheadLayer;
use tanker::handoff::Handoff;
use tanker::kafka::{FaultClassifier, KafkaConfig, KafkaService, Record};
use tanker::ServiceBuilderExt;

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
                cluster.partition_leader(TOPIC, partition, Some(partition % BROKERS + 1))
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

fn cluster() -> Cluster {
    let cluster = MockCluster::new(BROKERS).expect("mock cluster");
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .expect("create topic");
    cluster
}

fn record() -> Record {
    Record::new(TOPIC, Bytes::from_static(&PAYLOAD))
}

// ------------------------------------------------------------------------------------------
// The two variants
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
        let config = raw::client_config(&KafkaConfig::new(cluster.bootstrap_servers()), "raw")
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

    fn send(&mut self) {
        self.offered += 1;
        let record: BaseRecord<'_, (), [u8]> = BaseRecord::to(TOPIC).payload(&PAYLOAD[..]);
        if self.producer.send(record).is_err() {
            self.refused += 1;
        }
    }

    fn delivered(&self) -> u64 {
        self.reports.delivered.load(Ordering::Relaxed)
    }
}

struct Tanker {
    handoff: Handoff<Record>,
    breaker: BreakerHandle,
    kafka: KafkaService,
}

impl Tanker {
    /// The README's quick start, on its defaults.
    fn new(rt: &Runtime, cluster: &Cluster) -> Self {
        let _runtime = rt.enter();
        let kafka = KafkaConfig::new(cluster.bootstrap_servers())
            .name("stats")
            .build()
            .expect("kafka settings");
        let breaker = BreakerLayer::builder()
            .name("kafka")
            .classify(FaultClassifier)
            .build()
            .expect("breaker settings");
        let handle = breaker.handle();
        let stack = ServiceBuilder::new()
            .breaker(breaker)
            .bulkhead(BulkheadLayer::new(4096).expect("bulkhead settings"))
            .service(kafka.clone());
        let handoff = Handoff::builder()
            .name("stats")
            .max_bytes(64 << 20, Record::weight)
            .spawn(stack)
            .expect("hand-off settings");
        Self {
            handoff,
            breaker: handle,
            kafka,
        }
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
    offered: u64,
    delivered: u64,
    /// Deliveries in each second of the run (the settle time included).
    per_second: Vec<u64>,
    /// Whatever else the variant reports about its records, for the report.
    detail: String,
    /// The duration of each of its `send` calls, in nanoseconds, sorted.
    sends: Vec<u32>,
}

impl Outcome {
    fn share(&self) -> f64 {
        100.0 * self.delivered as f64 / self.offered.max(1) as f64
    }

    /// The `q` quantile of its sends, in nanoseconds.
    fn send_ns(&self, q: f64) -> u32 {
        if self.sends.is_empty() {
            return 0;
        }
        let at = ((self.sends.len() - 1) as f64 * q).round() as usize;
        self.sends[at]
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
}

struct ScenarioRun {
    fault: Fault,
    phases: Phases,
    /// The process's resident memory during the fault, lowest and highest, in MiB.
    rss_mib: (f64, f64),
    raw: Outcome,
    tanker: Outcome,
    balanced: bool,
    breaker_opened: u64,
}

/// Runs `send` and adds its duration to `sends`.
fn timed(sends: &mut Vec<u32>, send: impl FnOnce()) {
    let start = Instant::now();
    send();
    sends.push(u32::try_from(start.elapsed().as_nanos()).unwrap_or(u32::MAX));
}

fn scenario(rt: &Runtime, fault: Fault, phases: &Phases) -> ScenarioRun {
    progress(format!("{}: {}", fault.name(), fault.describe()));
    let phases = &Phases {
        fault: fault.lasts(phases),
        ..*phases
    };
    let raw_cluster = cluster();
    let tanker_cluster = cluster();
    let mut raw = Raw::new(&raw_cluster);
    let tanker = Tanker::new(rt, &tanker_cluster);

    let total = phases.sending() + phases.settle;
    let mut raw_seconds = Vec::with_capacity(total as usize);
    let mut tanker_seconds = Vec::with_capacity(total as usize);
    let (mut raw_mark, mut tanker_mark) = (0, 0);
    let (mut raw_sends, mut tanker_sends) = (Vec::new(), Vec::new());
    let (mut rss_low, mut rss_high) = (f64::MAX, 0.0f64);
    let mut peak_backlog = 0;
    let start = Instant::now();
    let mut sent = 0u64;
    for second in 0..total {
        if second == phases.healthy {
            progress(format!("  t={second}s: fault starts"));
            fault.start(&raw_cluster);
            fault.start(&tanker_cluster);
        }
        if second == phases.heal_at() {
            progress(format!("  t={second}s: healed"));
            fault.heal(&raw_cluster);
            fault.heal(&tanker_cluster);
        }
        let end_of_second = start + Duration::from_secs(second + 1);
        // Offer the second's records in steps of 10 ms, to both variants alike.
        while Instant::now() < end_of_second {
            if second < phases.sending() {
                let due = (start.elapsed().as_secs_f64() * phases.rate as f64) as u64;
                while sent < due.min(phases.sending() * phases.rate) {
                    timed(&mut raw_sends, || raw.send());
                    timed(&mut tanker_sends, || {
                        let _ = tanker.handoff.send(record());
                    });
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let counts = tanker.handoff.counts();
        peak_backlog = peak_backlog.max(counts.queued + counts.parked);
        if (phases.healthy..phases.heal_at()).contains(&second) {
            let rss = rss_kib() as f64 / 1024.0;
            (rss_low, rss_high) = (rss_low.min(rss), rss_high.max(rss));
        }
        let (raw_now, tanker_now) = (raw.delivered(), counts.delivered);
        raw_seconds.push(raw_now - raw_mark);
        tanker_seconds.push(tanker_now - tanker_mark);
        (raw_mark, tanker_mark) = (raw_now, tanker_now);
    }

    // Raw: whatever librdkafka still holds after the settle time is as good as lost to the
    // caller; flush briefly so the producer can be dropped.
    let _ = raw.producer.flush(Duration::from_secs(1));
    let raw_failed = raw.reports.failed.load(Ordering::Relaxed);
    let raw_outcome = Outcome {
        offered: raw.offered,
        delivered: raw.delivered(),
        per_second: raw_seconds,
        detail: format!(
            "failed {raw_failed}, refused by send {}, still queued {}",
            raw.refused,
            raw.producer.in_flight_count()
        ),
        sends: sorted(raw_sends),
    };

    let Tanker {
        handoff,
        breaker,
        kafka,
    } = tanker;
    let counts = rt.block_on(handoff.close(Duration::from_secs(5))).counts;
    let _ = rt.block_on(kafka.flush(Duration::from_secs(1)));
    let balanced = counts.is_balanced() && counts.pending() == 0;
    let tanker_outcome = Outcome {
        offered: counts.offered,
        delivered: counts.delivered,
        per_second: tanker_seconds,
        detail: format!(
            "dropped {}, expired {}, shed {}, rejected {}, failed {}, pending {} \
             (one more try for {}; at most {} records held at once)",
            counts.dropped,
            counts.expired,
            counts.shed,
            counts.rejected,
            counts.failed,
            counts.pending(),
            counts.retried,
            peak_backlog,
        ),
        sends: sorted(tanker_sends),
    };
    let breaker_opened = breaker.counts().times_opened;
    drop(raw);
    drop(raw_cluster);
    drop(tanker_cluster);
    ScenarioRun {
        fault,
        phases: *phases,
        rss_mib: (rss_low, rss_high),
        raw: raw_outcome,
        tanker: tanker_outcome,
        balanced,
        breaker_opened,
    }
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
        "## Records kept through Kafka faults: tanker (quick start, defaults) vs raw fire-and-forget\n\n\
         Mock cluster of {BROKERS} brokers, topic of {PARTITIONS} partitions, {} keyless records/s of \
         100 B; {} s healthy, {} s fault, {} s healed, then {} s to settle. Both variants in one \
         process, offered the same records by one sender thread.\n",
        phases.rate, phases.healthy, phases.fault, phases.healed, phases.settle
    );
    let _ = writeln!(
        out,
        "| fault | raw: delivered | tanker: delivered | tanker / raw | raw: full delivery after the heal | tanker: full delivery after the heal | tanker: breaker opened | tanker: accounting |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|---|---:|---|");
    for run in runs {
        let _ = writeln!(
            out,
            "| {} ({} s) | {:.1} % ({}/{}) | {:.1} % ({}/{}) | {:.3} | {} | {} | {} | {} |",
            run.fault.describe(),
            run.phases.fault,
            run.raw.share(),
            run.raw.delivered,
            run.raw.offered,
            run.tanker.share(),
            run.tanker.delivered,
            run.tanker.offered,
            run.tanker.delivered as f64 / run.raw.delivered.max(1) as f64,
            resumed(&run.raw, &run.phases, run.fault),
            resumed(&run.tanker, &run.phases, run.fault),
            run.breaker_opened,
            if run.balanced { "exact" } else { "UNBALANCED" },
        );
    }
    let _ = writeln!(
        out,
        "\n`send` latency over the whole run (ns, two clock reads included), and the process's \
         resident memory during the fault (both variants share the process):\n\n\
         | fault | raw: p50 / p99 / p99.9 | tanker: p50 / p99 / p99.9 | RSS during the fault (MiB) |\n\
         |---|---|---|---|"
    );
    for run in runs {
        let _ = writeln!(
            out,
            "| {} | {} / {} / {} | {} / {} / {} | {:.1} – {:.1} |",
            run.fault.describe(),
            run.raw.send_ns(0.5),
            run.raw.send_ns(0.99),
            run.raw.send_ns(0.999),
            run.tanker.send_ns(0.5),
            run.tanker.send_ns(0.99),
            run.tanker.send_ns(0.999),
            run.rss_mib.0,
            run.rss_mib.1,
        );
    }
    let _ = writeln!(out, "\nWhat became of the rest:\n");
    for run in runs {
        let _ = writeln!(
            out,
            "- {}: raw {}; tanker {}.",
            run.fault.describe(),
            run.raw.detail,
            run.tanker.detail
        );
    }
    let _ = writeln!(out, "\nDeliveries per second (raw / tanker):\n");
    for run in runs {
        let seconds: Vec<String> = run
            .raw
            .per_second
            .iter()
            .zip(&run.tanker.per_second)
            .map(|(r, t)| format!("{r}/{t}"))
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
