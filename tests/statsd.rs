//! The incident's two lines, records ignored and Kafka errors, sent to StatsD the way the seed's
//! stack (StatsD → Graphite) receives them: through `metrics-exporter-statsd`, with labels
//! flattened into Graphite names by `examples/statsd/graphite.rs`, to a UDP socket on 127.0.0.1
//! that plays the StatsD daemon.
//!
//! Kafka is librdkafka's mock cluster, down from the start, so this test runs in real time (the
//! producer's threads do not follow tokio's clock): it waits for counts, bounded by a deadline,
//! and never asserts how long anything took.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use metrics_exporter_statsd::StatsdBuilder;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tower::ServiceBuilder;

use tanker::breaker::BreakerLayer;
use tanker::bulkhead::BulkheadLayer;
use tanker::handoff::Handoff;
use tanker::kafka::{FaultClassifier, KafkaService, Record};
use tanker::ServiceBuilderExt;

#[path = "../examples/statsd/graphite.rs"]
mod graphite;

/// What the daemon received: the values of each metric, in order of arrival.
#[derive(Debug, Default)]
struct Received(BTreeMap<String, Vec<(f64, String)>>);

impl Received {
    /// Reads datagrams on a thread of its own from now on (the socket's receive buffer is
    /// small, and what does not fit is lost), until `done` holds or the deadline passes.
    fn collect(
        socket: UdpSocket,
        deadline: Duration,
        done: impl Fn(&Self) -> bool + Send + 'static,
    ) -> std::thread::JoinHandle<Self> {
        std::thread::spawn(move || {
            let mut received = Self::default();
            let until = Instant::now() + deadline;
            let mut buffer = [0u8; 65_536];
            while !done(&received) && Instant::now() < until {
                let Ok(n) = socket.recv(&mut buffer) else {
                    continue; // the read timed out: check the deadline
                };
                for line in String::from_utf8_lossy(&buffer[..n]).lines() {
                    received.add(line);
                }
            }
            received
        })
    }

    /// One line in StatsD's format, `name:value|type`.
    fn add(&mut self, line: &str) {
        let (name, rest) = line.split_once(':').expect("name:value|type");
        let (value, kind) = rest.split_once('|').expect("value|type");
        self.0
            .entry(name.to_owned())
            .or_default()
            .push((value.parse().expect("a number"), kind.to_owned()));
    }

    /// The sum of a counter's increments.
    fn count(&self, name: &str) -> f64 {
        self.0.get(name).map_or(0.0, |values| {
            values
                .iter()
                .inspect(|(_, kind)| assert_eq!(kind, "c", "{name} is a counter"))
                .map(|(value, _)| value)
                .sum()
        })
    }

    /// A gauge's last value.
    fn gauge(&self, name: &str) -> Option<f64> {
        let (value, kind) = self.0.get(name)?.last()?;
        assert_eq!(kind, "g", "{name} is a gauge");
        Some(*value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_records_and_kafka_errors_reach_statsd_as_graphite_names() {
    let daemon = UdpSocket::bind("127.0.0.1:0").unwrap();
    daemon
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let port = daemon.local_addr().unwrap().port();
    const ERRORS: &str = "tanker_kafka_errors_total.stats.message_timed_out";
    const IGNORED: &str = "tanker_handoff_failed_total.stats.rejected";
    const IN_FLIGHT: &str = "tanker_kafka_in_flight.stats";
    let received = Received::collect(daemon, Duration::from_secs(20), |r| {
        r.count(ERRORS) >= 2.0 && r.count(IGNORED) >= 18.0 && r.gauge(IN_FLIGHT) == Some(0.0)
    });
    // One line per datagram, sent as soon as it is recorded: a low-rate counter is not held
    // back in a buffer that fills slowly. A queue long enough that a slow sender thread on a
    // busy machine does not drop lines (the exporter drops what does not fit, silently).
    let statsd = StatsdBuilder::from("127.0.0.1", port)
        .with_buffer_size(1)
        .with_queue_size(1 << 20)
        .build(None)
        .unwrap();
    let recorder = graphite::Flatten(statsd);

    let cluster = MockCluster::<'static, DefaultProducerContext>::new(1).unwrap();
    cluster.create_topic("stats", 1, 1).unwrap();
    cluster.broker_down(-1).unwrap();

    // Components resolve their metric handles when they are built: build them under the recorder.
    let (kafka, stats) = metrics::with_local_recorder(&recorder, || {
        let kafka = KafkaService::builder(cluster.bootstrap_servers())
            .name("stats")
            .message_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let stack = ServiceBuilder::new()
            .breaker(
                BreakerLayer::builder()
                    .name("stats")
                    .consecutive_failures(2)
                    .open_for(Duration::from_secs(60))
                    .classify(FaultClassifier)
                    .build()
                    .unwrap(),
            )
            .bulkhead(BulkheadLayer::builder().name("stats").build().unwrap())
            .service(kafka.clone());
        // One record at a time: two time out, the breaker opens, the rest are rejected (parking
        // off, so that the refusals are counted as ignored at once).
        let stats = Handoff::builder()
            .name("stats")
            .concurrency(1)
            .park(false)
            .retry_failed(false)
            .spawn(stack)
            .unwrap();
        (kafka, stats)
    });

    for i in 0..20 {
        stats.send(Record::new("stats", vec![i]));
    }
    let report = stats.close(Duration::from_secs(10)).await;
    assert!(report.drained, "{report:?}");
    let counts = report.counts;
    assert_eq!((counts.failed, counts.rejected), (2, 18), "{counts:?}");
    assert_eq!(kafka.flush(Duration::from_secs(1)).await.undelivered, 0);

    let received = received.join().unwrap();
    assert_eq!(received.count(ERRORS), 2.0, "{received:#?}");
    assert_eq!(received.count(IGNORED), 18.0, "{received:#?}");
    // The gauge is published as an absolute value (StatsD cannot apply increments to a gauge),
    // and it settles on the true value: nothing in flight.
    assert_eq!(received.gauge(IN_FLIGHT), Some(0.0), "{received:#?}");
    let in_flight = &received.0[IN_FLIGHT];
    assert!(
        in_flight.iter().any(|(value, _)| *value >= 1.0),
        "the records in flight were seen: {in_flight:?}"
    );
}
