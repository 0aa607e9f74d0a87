//! The cost of librdkafka's statistics on its polling thread: parsing one report, as rdkafka
//! does before the leaf's `stats` callback sees it, for a small and a larger cluster.
//!
//! Run with `cargo bench --all-features --bench statistics`. The reports are real ones, taken
//! from librdkafka's mock cluster (3 brokers) with a topic of 6 and one of 100 partitions,
//! after a record was delivered to every partition. The polling thread also delivers the
//! delivery reports, so a parse every `statistics.interval.ms` is time taken from them: the
//! figures here choose the default interval of `BrokerDomains`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;

/// Keeps the last raw statistics report.
#[derive(Default)]
struct Keep(Mutex<Option<Vec<u8>>>);

impl ClientContext for Keep {
    fn stats_raw(&self, statistics: &[u8]) {
        *self.0.lock().unwrap() = Some(statistics.to_vec());
    }
}

impl ProducerContext for Keep {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// A statistics report of a producer that delivered a record to each of `partitions`
/// partitions of one topic on a mock cluster of 3 brokers.
fn report(partitions: i32) -> Vec<u8> {
    let cluster = MockCluster::new(3).expect("mock cluster");
    cluster.create_topic("stats", partitions, 1).expect("topic");
    let producer: ThreadedProducer<Keep> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("statistics.interval.ms", "50")
        .set("linger.ms", "1")
        .create_with_context(Keep::default())
        .expect("producer");
    for partition in 0..partitions {
        let record = BaseRecord::<(), str>::to("stats")
            .payload("x")
            .partition(partition);
        producer.send(record).map_err(|(e, _)| e).expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("delivered");
    // A report taken after every partition's delivery lists them all with their leaders.
    let deadline = Instant::now() + Duration::from_secs(10);
    producer.context().0.lock().unwrap().take();
    loop {
        if let Some(report) = producer.context().0.lock().unwrap().take() {
            let parsed: Statistics = serde_json::from_slice(&report).expect("a report");
            let known = parsed.topics.get("stats").map_or(0, |t| {
                t.partitions.values().filter(|p| p.leader >= 0).count()
            });
            if known >= partitions as usize {
                return report;
            }
        }
        assert!(Instant::now() < deadline, "no full report");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("statistics");
    for partitions in [6, 100] {
        let report = report(partitions);
        eprintln!(
            "report for 3 brokers, {partitions} partitions: {} bytes",
            report.len()
        );
        group.throughput(Throughput::Bytes(report.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("parse", format!("3-brokers-{partitions}-partitions")),
            &report,
            |b, report| b.iter(|| serde_json::from_slice::<Statistics>(report).unwrap()),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = parse
}
criterion_main!(benches);
