#![cfg(feature = "kafka")]
//! The whole stack against a real Kafka-compatible broker process (tansu): hand-off → breaker
//! (`FaultClassifier`) → bulkhead → `KafkaService`, with the broker healthy, frozen mid-run
//! (`SIGSTOP`: the seed incident, connections stay open and nothing answers), and killed and
//! restarted; records read back with a consumer to check the at-least-once guarantee.
//!
//! Each test starts its own broker on a free loopback port with memory storage and stops it
//! when the test ends, even on panic. The binary is `$TANSU_BIN`, or the one
//! `scripts/tansu.sh build` caches in `.tools/`; without it the tests fail and say so.
//!
//! Waiting for an event (a delivery, a breaker transition, a port that listens) polls the
//! condition every 20 ms and fails after 20 s. The only assertion on wall-clock time is the
//! bound on how long `Handoff::send` takes (1 ms). On a busy machine the scheduler sometimes
//! preempts the test thread in the middle of a send (seen: about one send in a few thousand,
//! for 1 to 5 ms); the thread's context-switch counters tell such a send apart, and it is left
//! out of the bound, while a send during which the thread gave up the CPU itself (a lock, a
//! wait) fails the test. The tests run one at a time, as each one runs a broker.
//!
//! # Delivery guarantee checked here (at least once)
//!
//! Every record the stack reports delivered is in the topic, at the partition and offset its
//! delivery report gave. A record may be written more than once (the producer retries, without
//! idempotence), and a record reported failed may still have been written (a frozen broker that
//! resumes writes the requests it had read, after the producer gave up on them): both are
//! allowed, counted and printed. Memory storage forgets everything when the broker is killed, so
//! after a restart only the deliveries reported by the new broker are checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant as WallClock};

use futures::future::{BoxFuture, FutureExt};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tower::{Service, ServiceBuilder};

use tanker::breaker::{BreakerHandle, BreakerLayer, BreakerState};
use tanker::bulkhead::BulkheadLayer;
use tanker::handoff::{Handoff, HandoffCounts, Sent};
use tanker::kafka::{
    Delivery, Fault, FaultClassifier, KafkaError, KafkaErrorKind, KafkaService, Record,
};
use tanker::ServiceBuilderExt;

mod support;
use support::sends::SendTimes;

/// How often a wait checks its condition.
const POLL: Duration = Duration::from_millis(20);
/// How long a wait may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);
/// The bound on one `Handoff::send`, frozen broker or not.
const SEND_BOUND: Duration = Duration::from_millis(1);
/// `message.timeout.ms`: how long a record may wait for its delivery.
const MESSAGE_TIMEOUT: Duration = Duration::from_millis(2000);
/// Partitions of each test's topic.
const PARTITIONS: i32 = 3;
/// Trips the breaker after this many failures in a row.
const TRIP_AFTER: u32 = 5;

// ===== the broker =====

/// The tansu binary: `$TANSU_BIN`, else the one `scripts/tansu.sh build` caches.
fn tansu_bin() -> PathBuf {
    let bin = match std::env::var_os("TANSU_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/tansu-0.6.0/bin/tansu"),
    };
    assert!(
        bin.is_file(),
        "the tansu broker is missing at {}: run `scripts/tansu.sh build` once (about 11 minutes), \
         or point TANSU_BIN at a tansu 0.6.0 binary",
        bin.display()
    );
    bin
}

/// A port nobody listens on now: bind port 0 on loopback and let it go.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("the port bound").port()
}

/// Sends a signal to a process with `kill(1)`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// One tansu broker process on 127.0.0.1, memory storage; stopped when dropped, even on panic.
struct Broker {
    bin: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
    /// How many times it was started (a restart forgets every topic and record).
    lives: u32,
}

impl Broker {
    /// Starts a broker on a free port and waits until it listens.
    fn start(name: &str) -> Self {
        let bin = tansu_bin();
        let port = free_port();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tansu");
        std::fs::create_dir_all(&dir).expect("create the broker log directory");
        let mut broker = Self {
            bin,
            port,
            log: dir.join(format!("{name}-{port}.log")),
            child: None,
            lives: 0,
        };
        broker.spawn();
        broker
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker runs").id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the process (again, on the same port) and waits until it accepts connections.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the broker already runs");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the broker log");
        let url = self.url();
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.lives += 1;
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = WallClock::now() + PATIENCE;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            let child = self.child.as_mut().expect("the broker runs");
            if let Some(status) = child.try_wait().expect("check the broker process") {
                self.child = None;
                panic!(
                    "tansu exited ({status}) before listening; log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                WallClock::now() < deadline,
                "tansu did not listen on {addr} within {PATIENCE:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Creates a topic (memory storage: again after each restart), retrying while the broker
    /// is still starting.
    fn create_topic(&self, topic: &str, partitions: i32) {
        let deadline = WallClock::now() + PATIENCE;
        for attempt in 0.. {
            let output = Command::new(&self.bin)
                .args([
                    "topic",
                    "create",
                    topic,
                    "--partitions",
                    &partitions.to_string(),
                ])
                .args(["--broker", &self.url()])
                .stdin(Stdio::null())
                .output()
                .expect("run tansu topic create");
            let stderr = String::from_utf8_lossy(&output.stderr);
            // A retry may find the topic an earlier attempt created.
            if output.status.success() || (attempt > 0 && stderr.contains("already exists")) {
                return;
            }
            assert!(
                WallClock::now() < deadline,
                "tansu topic create {topic} failed: {}\nstdout: {}\nstderr: {}\nbroker log:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                stderr,
                self.log_text()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The seed incident: the process stops; its sockets stay open and nothing answers.
    fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// Broker down: killed at once, as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it politely (resumed first, in case it is frozen), then for good.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-CONT", &pid]).status();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = WallClock::now() + Duration::from_secs(5);
        while WallClock::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

// ===== the stack =====

/// What the Kafka leaf said about each record, by record id.
#[derive(Debug, Default)]
struct Outcomes {
    delivered: Vec<(u64, Delivery)>,
    failed: Vec<(u64, KafkaErrorKind)>,
    /// Refused by the leader's own compartment or breaker inside the leaf, never sent: the
    /// hand-off counts these as shed or rejected, not failed.
    refused: Vec<u64>,
}

/// The Kafka leaf with a tap that writes down each record's outcome (the hand-off only counts
/// them). Below the bulkhead, so it sees exactly the calls that reach Kafka.
#[derive(Clone)]
struct Tapped {
    kafka: KafkaService,
    outcomes: Arc<Mutex<Outcomes>>,
}

impl Service<Record> for Tapped {
    type Response = Delivery;
    type Error = KafkaError;
    type Future = BoxFuture<'static, Result<Delivery, KafkaError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), KafkaError>> {
        self.kafka.poll_ready(cx)
    }

    fn call(&mut self, record: Record) -> Self::Future {
        let id = id_of(record.payload());
        let outcomes = self.outcomes.clone();
        let call = self.kafka.call(record);
        async move {
            let result = call.await;
            let mut outcomes = lock(&outcomes);
            match &result {
                Ok(delivery) => outcomes.delivered.push((id, *delivery)),
                Err(error) if error.kind() == KafkaErrorKind::Refused => outcomes.refused.push(id),
                Err(error) => outcomes.failed.push((id, error.kind())),
            }
            result
        }
        .boxed()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn payload_of(id: u64) -> Vec<u8> {
    format!("tanker-{id}").into_bytes()
}

fn id_of(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.strip_prefix("tanker-"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a test payload: {payload:?}"))
}

/// Hand-off → breaker → bulkhead → Kafka, writing to one topic, with ids for the records.
struct Stack {
    topic: &'static str,
    handoff: Handoff<Record>,
    breaker: BreakerHandle,
    kafka: KafkaService,
    outcomes: Arc<Mutex<Outcomes>>,
    next_id: u64,
    accepted: Vec<u64>,
    sends: SendTimes,
}

impl Stack {
    fn new(broker: &Broker, topic: &'static str) -> Self {
        init_tracing();
        let kafka = KafkaService::builder(broker.bootstrap())
            .name(topic)
            .message_timeout(MESSAGE_TIMEOUT)
            .linger(Duration::from_millis(5))
            .reconnect_backoff_max(Duration::from_millis(250))
            .build()
            .expect("a valid producer configuration");
        let breaker = BreakerLayer::builder()
            .name(topic)
            .consecutive_failures(TRIP_AFTER)
            .open_for(Duration::from_millis(300))
            .backoff(2.0, Duration::from_secs(1))
            .jitter(0.0)
            .probe_timeout(MESSAGE_TIMEOUT * 2)
            .classify(FaultClassifier)
            .build()
            .expect("a valid breaker");
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let service = ServiceBuilder::new()
            .breaker(breaker.clone())
            .bulkhead(BulkheadLayer::new(512).expect("a valid bulkhead"))
            .service(Tapped {
                kafka: kafka.clone(),
                outcomes: outcomes.clone(),
            });
        // Parking off: these tests tell the breaker's story against a real broker, refusal by
        // refusal (tests/incident.rs and benches/faults.rs run the parking default).
        let handoff = Handoff::builder()
            .name(topic)
            .capacity(10_000)
            .concurrency(256)
            .park(false)
            .retry_failed(false)
            .spawn(service)
            .expect("a valid hand-off");
        Self {
            topic,
            handoff,
            breaker: breaker.handle(),
            kafka,
            outcomes,
            next_id: 0,
            accepted: Vec::new(),
            sends: SendTimes::new(SEND_BOUND),
        }
    }

    /// Offers one record; times the hand-off.
    fn send(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let record = Record::new(self.topic, payload_of(id)).key(id.to_string());
        let handoff = &self.handoff;
        let sent = self.sends.time(|| handoff.send(record));
        if sent == Sent::Accepted {
            self.accepted.push(id);
        }
        id
    }

    fn send_batch(&mut self, n: usize) -> Vec<u64> {
        (0..n).map(|_| self.send()).collect()
    }

    fn counts(&self) -> HandoffCounts {
        self.handoff.counts()
    }

    fn outcomes(&self) -> MutexGuard<'_, Outcomes> {
        lock(&self.outcomes)
    }

    fn delivered_ids(&self) -> BTreeSet<u64> {
        self.outcomes()
            .delivered
            .iter()
            .map(|&(id, _)| id)
            .collect()
    }

    fn state(&self) -> String {
        format!(
            "counts {:?}\nbreaker {:?}\nkafka errors {:?}",
            self.counts(),
            self.breaker.counts(),
            self.error_kinds()
        )
    }

    fn error_kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for (_, kind) in &self.outcomes().failed {
            *kinds.entry(format!("{kind:?}")).or_default() += 1;
        }
        kinds
    }

    /// Waits until `done` holds, offering one record per check when `feed` is set (a breaker
    /// changes state on time only when a call arrives).
    async fn wait(&mut self, what: &str, feed: bool, mut done: impl FnMut(&Self) -> bool) {
        let deadline = WallClock::now() + PATIENCE;
        loop {
            if done(self) {
                return;
            }
            assert!(
                WallClock::now() < deadline,
                "gave up waiting {PATIENCE:?} for: {what}\n{}",
                self.state()
            );
            if feed {
                self.send();
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every one of `ids` was delivered.
    async fn wait_delivered(&mut self, what: &str, ids: &[u64]) {
        self.wait(what, false, |s| {
            let delivered = s.delivered_ids();
            ids.iter().all(|id| delivered.contains(id))
        })
        .await;
    }

    /// Closes the hand-off, flushes the producer, and checks the accounting: every record
    /// offered is counted once, nothing is pending, and the hand-off's delivered and failed
    /// counts are exactly what Kafka reported.
    async fn finish(&mut self) -> HandoffCounts {
        let report = self.handoff.close(PATIENCE).await;
        assert!(
            report.drained,
            "the hand-off did not drain: {}",
            self.state()
        );
        let flush = self.kafka.flush(Duration::from_secs(5)).await;
        assert_eq!(
            flush.undelivered,
            0,
            "records left in the producer: {}",
            self.state()
        );
        let counts = self.counts();
        assert_eq!(counts.pending(), 0, "{counts:?}");
        assert!(
            counts.is_balanced(),
            "accounting identity broken: {counts:?}"
        );
        assert_eq!(counts.offered, self.next_id, "{counts:?}");
        assert_eq!(counts.accepted, self.accepted.len() as u64, "{counts:?}");
        let outcomes = self.outcomes();
        assert_eq!(
            counts.delivered,
            outcomes.delivered.len() as u64,
            "{counts:?}"
        );
        assert_eq!(counts.failed, outcomes.failed.len() as u64, "{counts:?}");
        // The leaf's own refusals are final here (parking is off): among the shed and rejected.
        assert!(
            counts.shed + counts.rejected >= outcomes.refused.len() as u64,
            "{counts:?}; refused by the leaf {}",
            outcomes.refused.len()
        );
        drop(outcomes);
        self.assert_sends_never_blocked();
        println!(
            "{}: {counts:?}; kafka errors {:?}; breaker opened {} times; sends {:?}",
            self.topic,
            self.error_kinds(),
            self.breaker.counts().times_opened,
            self.sends
        );
        counts
    }

    /// Each send took less than [`SEND_BOUND`], except the rare ones the scheduler preempted
    /// (their time measures the other threads of a busy machine, not the hand-off); none gave up
    /// its thread (the sign of a lock or a wait).
    fn assert_sends_never_blocked(&self) {
        let sends = &self.sends;
        assert_eq!(sends.blocked, 0, "sends gave up their thread: {sends:?}");
        assert!(
            sends.longest < SEND_BOUND,
            "a send took {:?} (bound {SEND_BOUND:?}): {sends:?}",
            sends.longest
        );
        assert!(
            sends.preempted <= 5 + self.next_id / 100,
            "{} of {} sends were preempted: {sends:?}",
            sends.preempted,
            self.next_id
        );
    }

    /// Every Kafka error so far is the dependency's fault, and at least `n` are `kind`.
    fn assert_dependency_faults(&self, kind: KafkaErrorKind, n: usize) {
        let outcomes = self.outcomes();
        let wrong: Vec<_> = outcomes
            .failed
            .iter()
            .filter(|(_, k)| k.fault() != Fault::Dependency)
            .collect();
        assert!(
            wrong.is_empty(),
            "caller faults from a healthy client: {wrong:?}"
        );
        let of_kind = outcomes.failed.iter().filter(|(_, k)| *k == kind).count();
        drop(outcomes);
        assert!(
            of_kind >= n,
            "expected at least {n} {kind:?} errors\n{}",
            self.state()
        );
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .try_init();
}

// ===== reading back =====

/// One record read back from the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    partition: i32,
    offset: i64,
    id: u64,
}

/// The reading consumer's context: the end of a partition is how reading stops, not an error
/// to log.
struct ReadBack;

impl ClientContext for ReadBack {
    fn error(&self, error: RdKafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            eprintln!("read-back consumer: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ReadBack {}

/// Reads every record of `topic`, partition by partition from the beginning, until the end of
/// each partition. `assign` only: no group coordination is needed (a `group.id` is set, offsets
/// are never committed).
async fn read_back(bootstrap: String, topic: &'static str) -> Vec<Stored> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<ReadBack> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "tanker-read-back")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create_with_context(ReadBack)
            .expect("a valid consumer configuration");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("add a partition");
        }
        consumer.assign(&assignment).expect("assign the partitions");
        let mut stored = Vec::new();
        let mut at_end = BTreeSet::new();
        let deadline = WallClock::now() + PATIENCE;
        while at_end.len() < PARTITIONS as usize {
            assert!(
                WallClock::now() < deadline,
                "reading {topic} back: partitions at their end {at_end:?} after {PATIENCE:?}, \
                 {} records read",
                stored.len()
            );
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(message)) => stored.push(Stored {
                    partition: message.partition(),
                    offset: message.offset(),
                    id: id_of(message.payload().unwrap_or_default()),
                }),
                Some(Err(RdKafkaError::PartitionEOF(partition))) => {
                    at_end.insert(partition);
                }
                Some(Err(error)) => panic!("reading {topic} back: {error}"),
            }
        }
        stored
    })
    .await
    .expect("the reading task")
}

/// Checks at-least-once: each delivery reported is in the topic, at the partition and offset
/// the report gave, with the record's id. Returns how many ids were stored more than once.
fn assert_delivered_are_stored(delivered: &[(u64, Delivery)], stored: &[Stored]) -> usize {
    let at: HashMap<(i32, i64), u64> = stored
        .iter()
        .map(|s| ((s.partition, s.offset), s.id))
        .collect();
    assert_eq!(at.len(), stored.len(), "two records read at one offset");
    for (id, delivery) in delivered {
        match at.get(&(delivery.partition, delivery.offset)) {
            Some(found) => assert_eq!(
                found, id,
                "record {id} reported delivered at {delivery:?}, but {found} is stored there"
            ),
            None => panic!(
                "record {id} reported delivered at {delivery:?} is not in the topic \
                 ({} records read)",
                stored.len()
            ),
        }
    }
    let mut copies: HashMap<u64, usize> = HashMap::new();
    for s in stored {
        *copies.entry(s.id).or_default() += 1;
    }
    copies.values().filter(|&&n| n > 1).count()
}

/// The tests share two cores with their brokers: run them one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ===== the scenarios =====

/// A healthy broker: every record is delivered, and reads back where its delivery said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_broker_gets_every_record_where_the_delivery_says() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let broker = Broker::start("healthy");
    broker.create_topic("healthy", PARTITIONS);
    let mut stack = Stack::new(&broker, "healthy");

    let ids = stack.send_batch(1000);
    stack.wait_delivered("every record delivered", &ids).await;
    assert_eq!(stack.breaker.state(), BreakerState::Closed);
    let counts = stack.finish().await;
    assert_eq!(counts.delivered, 1000, "{counts:?}");
    assert_eq!(counts.ignored(), 0, "{counts:?}");

    let stored = read_back(broker.bootstrap(), "healthy").await;
    let delivered = stack.outcomes().delivered.clone();
    let duplicates = assert_delivered_are_stored(&delivered, &stored);
    let partitions: BTreeSet<i32> = stored.iter().map(|s| s.partition).collect();
    assert_eq!(
        partitions.len(),
        PARTITIONS as usize,
        "keys spread over every partition"
    );
    assert_eq!(duplicates, 0, "a healthy broker got duplicates");
    assert_eq!(stored.len(), 1000);
}

/// The seed incident: the broker freezes mid-run. Sends never block, records time out (the
/// dependency's fault), the breaker opens and its probes fail while frozen; once the broker
/// resumes, the breaker closes by itself and records are delivered again; every record is
/// accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_broker_opens_the_breaker_and_recovery_closes_it() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let broker = Broker::start("frozen");
    broker.create_topic("frozen", PARTITIONS);
    let mut stack = Stack::new(&broker, "frozen");

    let before = stack.send_batch(200);
    stack
        .wait_delivered("delivery before the freeze", &before)
        .await;

    broker.freeze();
    stack
        .wait("the breaker opens while frozen", true, |s| {
            s.breaker.counts().times_opened >= 1
        })
        .await;
    stack
        .wait("a probe fails while frozen", true, |s| {
            s.breaker.counts().times_opened >= 2
        })
        .await;
    stack.assert_dependency_faults(KafkaErrorKind::MessageTimedOut, TRIP_AFTER as usize);
    assert!(stack.counts().rejected > 0, "{}", stack.state());
    stack.assert_sends_never_blocked();

    broker.thaw();
    stack
        .wait("the breaker closes by itself", true, |s| {
            s.breaker.state() == BreakerState::Closed
        })
        .await;
    let after = stack.send_batch(200);
    stack
        .wait_delivered("delivery after the thaw", &after)
        .await;

    let counts = stack.finish().await;
    assert!(counts.failed >= u64::from(TRIP_AFTER), "{counts:?}");
    assert!(counts.rejected > 0, "{counts:?}");
}

/// Broker down: killed mid-run, with records in flight. The breaker opens; the broker restarts
/// on the same port (memory storage: empty, the topic is created again), the breaker closes
/// by itself, new records are delivered and read back from the new broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_opens_the_breaker_and_a_restart_closes_it() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut broker = Broker::start("killed");
    broker.create_topic("killed", PARTITIONS);
    let mut stack = Stack::new(&broker, "killed");

    let before = stack.send_batch(200);
    stack
        .wait_delivered("delivery before the kill", &before)
        .await;

    // Records in flight when the broker dies.
    stack.send_batch(200);
    broker.kill();
    stack
        .wait("the breaker opens while the broker is down", true, |s| {
            s.breaker.counts().times_opened >= 1
        })
        .await;
    stack.assert_dependency_faults(KafkaErrorKind::MessageTimedOut, 0);
    assert!(stack.counts().failed > 0, "{}", stack.state());
    stack.assert_sends_never_blocked();

    // Nothing can be delivered while the broker is down: what was delivered so far was stored
    // by the broker that died (and forgotten), what comes next by the new one.
    let delivered_by_first_life = stack.outcomes().delivered.len();
    broker.spawn();
    broker.create_topic("killed", PARTITIONS);
    stack
        .wait("the breaker closes after the restart", true, |s| {
            s.breaker.state() == BreakerState::Closed
        })
        .await;
    let after = stack.send_batch(200);
    stack
        .wait_delivered("delivery after the restart", &after)
        .await;

    let counts = stack.finish().await;
    assert!(counts.rejected > 0, "{counts:?}");
    assert_eq!(broker.lives, 2);

    let stored = read_back(broker.bootstrap(), "killed").await;
    let delivered = stack.outcomes().delivered[delivered_by_first_life..].to_vec();
    let duplicates = assert_delivered_are_stored(&delivered, &stored);
    println!(
        "killed: {} records delivered by the restarted broker, {} read back, {duplicates} \
         stored more than once; {counts:?}",
        delivered.len(),
        stored.len()
    );
}

/// At least once, around a freeze: a burst is in flight when the broker freezes, more records
/// come while it is frozen and as it recovers. Every record reported delivered is stored where
/// its report says; duplicates and records written despite a reported failure are allowed and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivered_record_is_stored_around_a_freeze() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let broker = Broker::start("at-least-once");
    broker.create_topic("at-least-once", PARTITIONS);
    let mut stack = Stack::new(&broker, "at-least-once");

    stack.send_batch(300);
    broker.freeze();
    stack.send_batch(300);
    stack
        .wait("the breaker opens while frozen", true, |s| {
            s.breaker.counts().times_opened >= 1
        })
        .await;
    broker.thaw();
    stack
        .wait("the breaker closes by itself", true, |s| {
            s.breaker.state() == BreakerState::Closed
        })
        .await;
    let after = stack.send_batch(300);
    stack
        .wait_delivered("delivery after the thaw", &after)
        .await;
    let counts = stack.finish().await;

    let stored = read_back(broker.bootstrap(), "at-least-once").await;
    let outcomes = stack.outcomes();
    let duplicates = assert_delivered_are_stored(&outcomes.delivered, &stored);
    let stored_ids: BTreeSet<u64> = stored.iter().map(|s| s.id).collect();
    let offered: BTreeSet<u64> = (0..stack.next_id).collect();
    assert!(
        stored_ids.is_subset(&offered),
        "records in the topic that were never offered"
    );
    let failed_but_stored = outcomes
        .failed
        .iter()
        .filter(|(id, _)| stored_ids.contains(id))
        .count();
    let delivered_ids: BTreeSet<u64> = outcomes.delivered.iter().map(|&(id, _)| id).collect();
    assert_eq!(
        delivered_ids.len(),
        outcomes.delivered.len(),
        "a record reported delivered twice"
    );
    println!(
        "at-least-once: {} delivered, all stored; {} read back; {duplicates} stored more than \
         once; {failed_but_stored} reported failed but stored anyway; {counts:?}",
        outcomes.delivered.len(),
        stored.len()
    );
}
