#![cfg(feature = "kafka")]
//! The leaf's per-broker failure domains against librdkafka's in-process mock cluster: keys map
//! to partitions as librdkafka maps them, records without a key avoid a broker that is down or
//! frozen, a moved leader is followed, and a hand-off over the leaf accounts for every record.
//!
//! Each test owns its `MockCluster` (it is `!Send`: it stays in the test body). Waiting for an
//! event is a bounded polling loop on a condition.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio::time::{Instant, MissedTickBehavior};
use tower::{Service, ServiceExt};

use tanker::breaker::BreakerState;
use tanker::handoff::{Handoff, Sent};
use tanker::kafka::{BrokerDomains, Delivery, KafkaConfig, KafkaError, KafkaService, Record};

type Cluster = MockCluster<'static, DefaultProducerContext>;

const TOPIC: &str = "domains";
const BROKERS: i32 = 3;
const PARTITIONS: i32 = 6;
/// How long any awaited event may take before the test fails.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);
/// `message.timeout.ms`: how long librdkafka keeps a record that no broker confirms.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// 3 brokers, a topic of 6 partitions, partition `p` led by broker `p % 3 + 1`.
fn cluster() -> Cluster {
    let cluster = MockCluster::new(BROKERS).expect("mock cluster");
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .expect("create topic");
    for partition in 0..PARTITIONS {
        cluster
            .partition_leader(TOPIC, partition, Some(leader_of(partition)))
            .expect("leader");
    }
    cluster
}

fn leader_of(partition: i32) -> i32 {
    partition % BROKERS + 1
}

/// A producer for `cluster` tuned for fast tests, with its per-broker domains (statistics every
/// 100 ms).
fn config(cluster: &Cluster, name: &str) -> KafkaConfig {
    KafkaService::builder(cluster.bootstrap_servers())
        .name(name.to_owned())
        .message_timeout(MESSAGE_TIMEOUT)
        .linger(Duration::from_millis(1))
        .set("reconnect.backoff.ms", "20")
        .reconnect_backoff_max(Duration::from_millis(100))
        .broker_domains(BrokerDomains::new().statistics_interval(Duration::from_millis(100)))
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn produce(kafka: &KafkaService, record: Record) -> Result<Delivery, KafkaError> {
    let mut kafka = kafka.clone();
    let future = kafka.ready().await.expect("ready").call(record);
    tokio::time::timeout(EVENT_DEADLINE, future)
        .await
        .expect("a delivery report")
}

/// Produces to every partition until the leaf knows every leader and has routed a record
/// through each broker's compartment.
async fn warm_up(kafka: &KafkaService) {
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        for partition in 0..PARTITIONS {
            let record = Record::new(TOPIC, "warm-up").partition(partition);
            produce(kafka, record).await.expect("healthy cluster");
        }
        let brokers = kafka.brokers().expect("domains on");
        if brokers.counts().keys == BROKERS as usize {
            return;
        }
        assert!(Instant::now() < deadline, "the leaders were never learnt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records admitted by `broker`'s compartment so far.
fn admitted(kafka: &KafkaService, broker: i32) -> u64 {
    kafka
        .brokers()
        .and_then(|brokers| brokers.get(&broker))
        .map_or(0, |key| key.bulkhead().counts().admitted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_map_to_the_partitions_librdkafka_chooses() {
    let cluster = cluster();
    let plain = config(&cluster, "plain")
        .no_broker_domains()
        .build()
        .unwrap();
    let routed = config(&cluster, "routed").build().unwrap();
    warm_up(&routed).await;
    let before: u64 = (1..=BROKERS).map(|b| admitted(&routed, b)).sum();

    const KEYS: usize = 300;
    for i in 0..KEYS {
        // Keys of every length, and bytes that are not text.
        let key: Vec<u8> = format!("user-{i}-{}", "x".repeat(i % 17))
            .into_bytes()
            .into_iter()
            .chain([(i % 256) as u8])
            .collect();
        let by_librdkafka = produce(&plain, Record::new(TOPIC, "p").key(key.clone()))
            .await
            .unwrap();
        let by_tanker = produce(&routed, Record::new(TOPIC, "r").key(key.clone()))
            .await
            .unwrap();
        assert_eq!(by_tanker.partition, by_librdkafka.partition, "key {key:?}");
    }
    let after: u64 = (1..=BROKERS).map(|b| admitted(&routed, b)).sum();
    assert_eq!(
        after - before,
        KEYS as u64,
        "every keyed record went through its leader's compartment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_key_is_spread_as_librdkafka_spreads_it() {
    let cluster = cluster();
    let plain = config(&cluster, "plain-empty")
        .no_broker_domains()
        .build()
        .unwrap();
    let routed = config(&cluster, "routed-empty").build().unwrap();
    warm_up(&routed).await;
    let before: u64 = (1..=BROKERS).map(|b| admitted(&routed, b)).sum();

    // Four of tanker's batches of records without a key; librdkafka's own sticky batches last
    // 10 ms (`sticky.partitioning.linger.ms`), a few records each here.
    const RECORDS: usize = 256;
    let (mut by_librdkafka, mut by_tanker) = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..RECORDS {
        let plain = produce(&plain, Record::new(TOPIC, "p").key(""))
            .await
            .unwrap();
        by_librdkafka.insert(plain.partition);
        let routed = produce(&routed, Record::new(TOPIC, "r").key(""))
            .await
            .unwrap();
        by_tanker.insert(routed.partition);
    }
    // The CRC-32 of an empty key is 0: mapped as a key, every record would go to partition 0.
    assert!(by_librdkafka.len() > 1, "librdkafka: {by_librdkafka:?}");
    assert!(by_tanker.len() > 1, "tanker: {by_tanker:?}");
    let after: u64 = (1..=BROKERS).map(|b| admitted(&routed, b)).sum();
    assert_eq!(
        after - before,
        RECORDS as u64,
        "every record went through its leader's compartment"
    );
}

/// What became of the keyless records sent during a fault, by when they were sent.
#[derive(Default)]
struct Outcomes {
    /// (sent after the fault began, delivered to this partition or failed).
    records: Vec<(Duration, Option<i32>)>,
}

/// When the sick broker has surely been seen: it is seen 0.5 s after its first record stalls,
/// plus up to one statistics interval (0.1 s), so 2 s leaves a loaded machine slack. (The
/// README's faults run gives how soon it is seen: about 0.6 s.)
const SETTLED: Duration = Duration::from_secs(2);
/// Records sent after [`SETTLED`] that make a test's verdict mean something: records without a
/// key go to the partitions in turn, a batch of 64 each, so any 6 batches in a row reach every
/// partition, and a leaf that did not avoid the sick broker would send some of them there.
const LATE_RECORDS: usize = 6 * 64;

/// Sends a keyless record every 2 ms, starting when the fault does, until [`LATE_RECORDS`] were
/// sent after [`SETTLED`], and collects what became of each. Ticks that a loaded machine delays
/// are sent in a burst once it wakes (tokio's default, wanted here), so the offered rate holds
/// on average.
///
/// Every record must be sent before the first of those stuck on the sick broker times out
/// ([`MESSAGE_TIMEOUT`] after the fault at the earliest): from then on the broker no longer
/// counts as stalled, and its breaker may rightly probe it with a record without a key.
async fn keyless_through(kafka: &KafkaService) -> Outcomes {
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let start = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(2));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let (mut tasks, mut late) = (Vec::new(), 0);
    while late < LATE_RECORDS {
        ticks.tick().await;
        let sent = start.elapsed();
        assert!(
            sent < MESSAGE_TIMEOUT,
            "sent only {late} records between {SETTLED:?} and the first timeout"
        );
        late += usize::from(sent >= SETTLED);
        let (kafka, outcomes) = (kafka.clone(), outcomes.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = produce(&kafka, Record::new(TOPIC, "keyless")).await;
            let partition = outcome.ok().map(|delivery| delivery.partition);
            outcomes.lock().unwrap().records.push((sent, partition));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(outcomes)
        .ok()
        .expect("every task done")
        .into_inner()
        .unwrap()
}

/// Records without a key sent once the sick broker was seen ([`SETTLED`]) are all delivered,
/// none to the sick broker; the healthy brokers' breakers never trip.
fn assert_avoided(outcomes: &Outcomes, kafka: &KafkaService, sick: i32) {
    let late: Vec<_> = outcomes
        .records
        .iter()
        .filter(|(sent, _)| *sent >= SETTLED)
        .collect();
    let failed = late.iter().filter(|(_, p)| p.is_none()).count();
    assert_eq!(failed, 0, "records sent after {SETTLED:?} failed");
    let mut per_broker = BTreeMap::new();
    for (_, partition) in &late {
        *per_broker.entry(leader_of(partition.unwrap())).or_insert(0) += 1;
    }
    assert_eq!(per_broker.get(&sick), None, "{per_broker:?}");
    assert_eq!(per_broker.len(), (BROKERS - 1) as usize, "{per_broker:?}");
    for healthy in (1..=BROKERS).filter(|&b| b != sick) {
        let key = kafka.brokers().unwrap().get(&healthy).unwrap();
        assert_eq!(key.breaker().state(), BreakerState::Closed);
        assert_eq!(key.breaker().counts().times_opened, 0, "broker {healthy}");
    }
}

/// A producer whose brokers' compartments are far larger than the records a test sends: a sick
/// broker's compartment never fills, so only its stall steers records away from it.
fn avoids_only_stalls(cluster: &Cluster, name: &str) -> KafkaService {
    let domains = BrokerDomains::new()
        .statistics_interval(Duration::from_millis(100))
        .bulkhead(tanker::bulkhead::BulkheadLayer::builder().max_in_flight(100_000));
    config(cluster, name)
        .broker_domains(domains)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_avoid_a_broker_that_is_down() {
    let cluster = cluster();
    let kafka = avoids_only_stalls(&cluster, "down");
    warm_up(&kafka).await;
    cluster.broker_down(2).unwrap();
    let outcomes = keyless_through(&kafka).await;
    assert_avoided(&outcomes, &kafka, 2);
    cluster.broker_up(2).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_avoid_a_frozen_broker() {
    let cluster = cluster();
    let kafka = avoids_only_stalls(&cluster, "frozen");
    warm_up(&kafka).await;
    cluster
        .broker_round_trip_time(2, Duration::from_secs(30))
        .unwrap();
    let outcomes = keyless_through(&kafka).await;
    assert_avoided(&outcomes, &kafka, 2);
    cluster.broker_round_trip_time(2, Duration::ZERO).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_leader_is_followed_within_a_second() {
    let cluster = cluster();
    let kafka = config(&cluster, "moved").build().unwrap();
    warm_up(&kafka).await;
    // Partition 0 moves from broker 1 to broker 3; only partition 0 is written to.
    let before = admitted(&kafka, 3);
    cluster.partition_leader(TOPIC, 0, Some(3)).unwrap();
    let moved = Instant::now();
    let mut followed = None;
    while moved.elapsed() < Duration::from_secs(3) {
        let record = Record::new(TOPIC, "keyed").key("k").partition(0);
        let delivery = produce(&kafka, record).await.expect("delivered");
        assert_eq!(delivery.partition, 0);
        if followed.is_none() && admitted(&kafka, 3) > before {
            followed = Some(moved.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let followed = followed.expect("records never went through broker 3's compartment");
    assert!(
        followed <= Duration::from_secs(1),
        "followed after {followed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_over_the_leaf_accounts_for_every_record_through_a_frozen_broker() {
    let cluster = cluster();
    let kafka = config(&cluster, "accounting")
        .message_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    warm_up(&kafka).await;
    let handoff = Handoff::builder()
        .name("accounting")
        .spawn(kafka.clone())
        .unwrap();
    let mut sent = 0u64;
    for round in 0..300u64 {
        if round == 50 {
            cluster
                .broker_round_trip_time(2, Duration::from_secs(30))
                .unwrap();
        }
        if round == 250 {
            cluster.broker_round_trip_time(2, Duration::ZERO).unwrap();
        }
        let keyless = Record::new(TOPIC, "keyless");
        let keyed = Record::new(TOPIC, "keyed").key(format!("key-{round}"));
        for record in [keyless, keyed] {
            assert_eq!(handoff.send(record), Sent::Accepted);
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handoff.close(Duration::from_secs(20)).await;
    let counts = handoff.counts();
    assert!(counts.is_balanced(), "{counts:?}");
    assert_eq!(counts.offered, sent);
    assert_eq!(counts.pending(), 0, "{counts:?}");
    wait_until("the leaf's records all reported", || {
        kafka.counts().in_flight == 0
    })
    .await;
    assert!(
        counts.delivered * 100 >= sent * 99,
        "{counts:?}: fewer than 99 % delivered"
    );
}

/// A warmed-up producer whose brokers' breakers open on one failure (a record times out in
/// 500 ms) for a minute: far longer than a test, so that only a broker's return can end the
/// cool-down early.
async fn opens_for_a_minute(cluster: &Cluster, name: &str) -> KafkaService {
    let domains = BrokerDomains::new()
        .statistics_interval(Duration::from_millis(100))
        .breaker(
            tanker::breaker::BreakerLayer::builder()
                .consecutive_failures(1)
                .open_for(Duration::from_secs(60))
                .backoff(1.0, Duration::from_secs(60)),
        );
    let kafka = config(cluster, name)
        .message_timeout(Duration::from_millis(500))
        .broker_domains(domains)
        .build()
        .unwrap();
    warm_up(&kafka).await;
    kafka
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_comes_back_up_is_probed_at_once() {
    let cluster = cluster();
    let kafka = opens_for_a_minute(&cluster, "comes-back").await;
    let breaker = kafka.brokers().unwrap().get(&2).unwrap().breaker().clone();

    cluster.broker_down(2).unwrap();
    // Records for broker 2's partition time out and open its breaker.
    let to_broker_2 = || Record::new(TOPIC, "keyed").key("k").partition(1);
    let failed = produce(&kafka, to_broker_2()).await;
    assert!(failed.is_err(), "{failed:?}");
    wait_until("broker 2's breaker opened", || {
        breaker.state() == BreakerState::Open
    })
    .await;
    let refused = produce(&kafka, to_broker_2()).await.unwrap_err();
    assert_eq!(refused.kind(), tanker::kafka::KafkaErrorKind::Refused);
    assert!(tanker::Rejection::find(&refused).is_some(), "{refused}");

    cluster.broker_up(2).unwrap();
    let healed = Instant::now();
    // The statistics see the connection come up again, and the breaker's next call is a probe,
    // long before the 60 s cool-down is over.
    let delivery = loop {
        match produce(&kafka, to_broker_2()).await {
            Ok(delivery) => break delivery,
            // The bound is the point (long before the 60 s cool-down), not the speed: the
            // faults bench measures that (1 s); a loaded CI machine needs slack.
            Err(error) => assert!(
                healed.elapsed() < Duration::from_secs(15),
                "still refused {:?} after the heal: {error}",
                healed.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(delivery.partition, 1);
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(breaker.counts().times_opened, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_down_is_one_outage_that_ends_soon_after_the_heal() {
    let cluster = cluster();
    let kafka = opens_for_a_minute(&cluster, "outage").await;
    let brokers = kafka.brokers().unwrap().clone();
    assert!(!brokers.outage());

    cluster.broker_down(-1).unwrap();
    // One record per broker times out and opens that broker's breaker; the third open broker is
    // one more than the default cap of two: one outage of the cluster.
    for partition in 0..BROKERS {
        let record = Record::new(TOPIC, "keyed").key("k").partition(partition);
        assert!(produce(&kafka, record).await.is_err());
    }
    for partition in 0..BROKERS {
        let record = Record::new(TOPIC, "keyed").key("k").partition(partition);
        let refused = produce(&kafka, record).await.unwrap_err();
        assert_eq!(refused.kind(), tanker::kafka::KafkaErrorKind::Refused);
    }
    wait_until("one outage", || brokers.outage()).await;
    assert_eq!(brokers.counts().open_keys, BROKERS as usize);

    cluster.broker_up(-1).unwrap();
    let healed = Instant::now();
    // Every broker comes back, is probed at once, and takes records again: long before the
    // 60 s cool-down.
    for partition in 0..PARTITIONS {
        loop {
            let record = Record::new(TOPIC, "keyed").key("k").partition(partition);
            match produce(&kafka, record).await {
                Ok(delivery) => {
                    assert_eq!(delivery.partition, partition);
                    break;
                }
                // The bound is the point (long before the 60 s cool-down), not the speed:
                // the faults bench measures that (1 s); a loaded CI machine needs slack.
                Err(error) => assert!(
                    healed.elapsed() < Duration::from_secs(15),
                    "partition {partition} still failing {:?} after the heal: {error}",
                    healed.elapsed()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(!brokers.outage());
    assert_eq!(brokers.counts().open_keys, 0);
}
