//! The incident's two lines, records ignored and Kafka errors, sent to StatsD for Graphite.
//!
//! ```sh
//! cargo run --example statsd --features metrics                      # to 127.0.0.1:8125
//! cargo run --example statsd --features metrics -- --statsd HOST:PORT
//! ```
//!
//! Runs the incident stack (hand-off → breaker → bulkhead → Kafka) against librdkafka's mock
//! cluster for 15 s: healthy for 5 s, down for 5 s, healthy again. Every metric goes to StatsD
//! with its labels flattened into Graphite names (`graphite.rs`). In Graphite, the two lines of
//! the incident's chart are:
//!
//! - records ignored (dropped, shed or rejected: never sent to Kafka):
//!   `sumSeries(tanker_handoff_dropped_total.stats.*, tanker_handoff_failed_total.stats.{shed,rejected})`
//! - Kafka errors: `sumSeries(tanker_kafka_errors_total.stats.*)`
//!
//! Without a StatsD daemon the datagrams are simply lost; `nc -ul 8125` shows them.

use std::time::Duration;

use metrics_exporter_statsd::StatsdBuilder;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tower::{BoxError, ServiceBuilder};

use tanker::breaker::BreakerLayer;
use tanker::bulkhead::BulkheadLayer;
use tanker::handoff::Handoff;
use tanker::kafka::{FaultClassifier, KafkaService, Record};
use tanker::ServiceBuilderExt;

mod graphite;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let statsd = match args.iter().position(|arg| arg == "--statsd") {
        Some(i) => args.get(i + 1).ok_or("--statsd needs HOST:PORT")?.clone(),
        None => "127.0.0.1:8125".to_owned(),
    };
    let (host, port) = statsd.rsplit_once(':').ok_or("--statsd takes HOST:PORT")?;
    // Before any component is built: each resolves its metric handles once, when it is built.
    let recorder = StatsdBuilder::from(host, port.parse()?)
        // Lines leave at once, one per datagram, rather than when a buffer fills.
        .with_buffer_size(1)
        .build(None)?;
    metrics::set_global_recorder(graphite::Flatten(recorder))?;

    let cluster = MockCluster::<'static, DefaultProducerContext>::new(1)?;
    cluster.create_topic("stats", 1, 1)?;
    let kafka = KafkaService::builder(cluster.bootstrap_servers())
        .name("stats")
        .message_timeout(Duration::from_millis(500))
        .build()?;
    let stack = ServiceBuilder::new()
        .breaker(
            BreakerLayer::builder()
                .name("stats")
                .open_for(Duration::from_secs(1))
                .classify(FaultClassifier)
                .build()?,
        )
        .bulkhead(BulkheadLayer::builder().name("stats").build()?)
        .service(kafka.clone());
    let stats = Handoff::builder().name("stats").spawn(stack)?;

    println!("sending to StatsD at {statsd}; Kafka goes down from 5 s to 10 s");
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for i in 0..3000u32 {
        match i {
            1000 => cluster.broker_down(-1)?,
            2000 => cluster.broker_up(-1)?,
            _ => {}
        }
        tick.tick().await;
        stats.send(Record::new("stats", i.to_be_bytes().to_vec()));
        if i % 200 == 199 {
            let c = stats.counts();
            println!(
                "{:>4.1} s  delivered {:>5}  ignored {:>5}  kafka errors {:>4}",
                f64::from(i + 1) / 200.0,
                c.delivered,
                c.dropped + c.shed + c.rejected,
                c.failed
            );
        }
    }
    let report = stats.close(Duration::from_secs(5)).await;
    kafka.flush(Duration::from_secs(5)).await;
    println!("{:?}", report.counts);
    Ok(())
}
