//! What tanker logs: every event names its component, state changes are logged at warn or info,
//! nothing at info or above is logged per call, and shedding and dropping are reported at most
//! once a second with a count instead of once per call. On paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tanker::breaker::{BreakerLayer, BreakerOpen};
use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
use tanker::handoff::{Handoff, Sent};
use tanker::ServiceBuilderExt;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::mock;
use tracing::Level;

mod support;
use support::capture::{Capture, Logged};
use support::DependencyDown;

/// A bulkhead of one slot, held by a call that never finishes (kept alive by the caller).
async fn full_bulkhead(name: &str) -> (BulkheadLayer, impl Sized) {
    let layer = BulkheadLayer::builder()
        .name(name)
        .max_in_flight(1)
        .build()
        .unwrap();
    let (inner, handle) = mock::pair::<(), ()>();
    let mut holder = layer.layer(inner);
    let held = holder.ready().await.unwrap().call(());
    (layer, (handle, held))
}

async fn shed(layer: &BulkheadLayer, calls: usize) {
    let (inner, _unused) = mock::pair::<(), ()>();
    let mut svc = layer.layer(inner);
    for _ in 0..calls {
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.is::<BulkheadFull>());
    }
}

#[tokio::test(start_paused = true)]
async fn shedding_is_reported_at_most_once_a_second_with_a_count() {
    let (capture, _guard) = Capture::start();
    let (layer, _held) = full_bulkhead("redis").await;

    shed(&layer, 100).await;
    let reports = capture.with_message("bulkhead is full, shedding calls");
    assert_eq!(
        reports.len(),
        1,
        "one report for 100 shed calls: {reports:?}"
    );
    assert_eq!(reports[0].level, Level::WARN);
    assert_eq!(reports[0].field("bulkhead"), "redis");
    assert_eq!(reports[0].field("shed"), "1");

    tokio::time::advance(Duration::from_millis(999)).await;
    shed(&layer, 10).await;
    assert_eq!(
        capture
            .with_message("bulkhead is full, shedding calls")
            .len(),
        1
    );

    // Due now; the clock is read at check points (after 1, 2, 4... up to 64 more sheds), so the
    // report comes with the next one: here the 129th shed call.
    tokio::time::advance(Duration::from_millis(1)).await;
    shed(&layer, 50).await;
    let reports = capture.with_message("bulkhead is full, shedding calls");
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(
        reports[1].field("shed"),
        "128",
        "the calls shed since the first report"
    );
    assert_eq!(reports[1].field("shed_total"), "129");
    assert_eq!(layer.handle().counts().shed, 160);
}

#[tokio::test(start_paused = true)]
async fn calls_that_go_through_log_nothing_at_info_or_above() {
    let (capture, _guard) = Capture::start();
    let breaker = BreakerLayer::builder().name("quiet").build().unwrap();
    let bulkhead = BulkheadLayer::builder().name("quiet").build().unwrap();
    let mut svc = ServiceBuilder::new()
        .breaker(breaker)
        .bulkhead(bulkhead)
        .service(service_fn(|n: u32| async move {
            if n.is_multiple_of(10) {
                Err(BoxError::from(DependencyDown))
            } else {
                Ok(n)
            }
        }));
    for n in 1..=1000 {
        let _ = svc.ready().await.unwrap().call(n).await;
    }
    let loud: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|event| event.level <= Level::INFO)
        .collect();
    assert!(loud.is_empty(), "{loud:?}");
}

#[tokio::test(start_paused = true)]
async fn breaker_transitions_name_the_breaker_and_count_rejections() {
    let (capture, _guard) = Capture::start();
    let breaker = BreakerLayer::builder()
        .name("kafka-writer")
        .consecutive_failures(2)
        .open_for(Duration::from_secs(1))
        .jitter(0.0)
        .build()
        .unwrap();
    let up = Arc::new(Mutex::new(false));
    let flag = up.clone();
    let mut svc = breaker.layer(service_fn(move |()| {
        let up = *flag.lock().unwrap();
        async move {
            if up {
                Ok(())
            } else {
                Err(BoxError::from(DependencyDown))
            }
        }
    }));
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(()).await;
    }
    for _ in 0..7 {
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.is::<BreakerOpen>());
    }
    *up.lock().unwrap() = true;
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.ready().await.unwrap().call(()).await.unwrap();

    let transitions: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|event| event.message.starts_with("circuit breaker"))
        .collect();
    let summary: Vec<_> = transitions
        .iter()
        .map(|event| (event.level, event.message.as_str(), event.field("breaker")))
        .collect();
    assert_eq!(
        summary,
        [
            (Level::WARN, "circuit breaker opened", "kafka-writer"),
            (Level::INFO, "circuit breaker half-open", "kafka-writer"),
            (Level::INFO, "circuit breaker closed", "kafka-writer"),
        ]
    );
    assert_eq!(transitions[0].field("reason"), "consecutive failures");
    assert_eq!(
        transitions[1].field("rejected"),
        "7",
        "the calls rejected while open are counted, not logged one by one"
    );
    assert_eq!(transitions[2].field("rejected"), "0");
}

#[tokio::test(start_paused = true)]
async fn dropped_records_are_reported_at_most_once_a_second() {
    let (capture, _guard) = Capture::start();
    let (service, mut handle) = mock::pair::<u32, ()>();
    handle.allow(0);
    let handoff = Handoff::builder()
        .name("audit")
        .capacity(4)
        .spawn(service)
        .unwrap();
    let mut dropped = 0;
    for n in 0..1000 {
        if handoff.send(n) == Sent::Dropped {
            dropped += 1;
        }
    }
    assert!(dropped >= 990, "{dropped}");
    // The worker reports when it next runs: at the latest at its next tick.
    tokio::time::advance(Duration::from_millis(2)).await;
    tokio::task::yield_now().await;
    let reports =
        capture.with_message("hand-off dropped records: its queue was full or it was closed");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].level, Level::WARN);
    assert_eq!(reports[0].field("handoff"), "audit");
    assert_eq!(reports[0].field("dropped"), dropped.to_string());

    // More drops within the second: no new report until it is over.
    let mut more = 0;
    for n in 0..100 {
        if handoff.send(n) == Sent::Dropped {
            more += 1;
        }
    }
    // The worker has taken one record off the queue meanwhile (and holds it): one more fits.
    assert_eq!(more, 99);
    tokio::time::advance(Duration::from_millis(500)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        capture
            .with_message("hand-off dropped records: its queue was full or it was closed")
            .len(),
        1
    );
    tokio::time::advance(Duration::from_millis(600)).await;
    tokio::task::yield_now().await;
    let reports =
        capture.with_message("hand-off dropped records: its queue was full or it was closed");
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(reports[1].field("dropped"), more.to_string());
}

/// librdkafka's own reports while Kafka is down: its log lines and its client errors come from
/// its own threads, in real time, so this test cannot pause time. It keeps the cluster down for a
/// stretch of real time and bounds the *number* of lines against the time that really passed (at
/// most one a second, plus the first), whatever the machine's speed; it never asserts when a line
/// comes. The producer has a SASL password, which no event, at any level, may show.
#[cfg(feature = "kafka")]
mod kafka_down {
    use super::*;
    use std::time::Instant;

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use tanker::kafka::KafkaService;

    /// The producer this test watches (other tests' events are ignored).
    const PRODUCER: &str = "down-and-quiet";
    const SECRET: &str = "hunter2-correct-horse";

    /// librdkafka logs from its own threads, which see only the global subscriber.
    fn global_capture() -> &'static Capture {
        Capture::global()
    }

    #[test]
    fn kafka_down_is_reported_at_most_once_a_second_with_a_count() {
        let capture = global_capture();
        // Three brokers, all down: each fails its reconnections on its own.
        let cluster = MockCluster::<'static, DefaultProducerContext>::new(3).unwrap();
        cluster.create_topic("stats", 1, 1).unwrap();
        cluster.broker_down(-1).unwrap();

        let started = Instant::now();
        // Reconnect fast, so that librdkafka reports many failures (one per attempt) and the
        // throttle has something to hold back.
        let kafka = KafkaService::builder(cluster.bootstrap_servers())
            .name(PRODUCER)
            .set("reconnect.backoff.ms", "10")
            .reconnect_backoff_max(Duration::from_millis(20))
            // Credentials, which no line may show.
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "PLAIN")
            .set("sasl.username", "stats")
            .set("sasl.password", SECRET)
            .build()
            .unwrap();
        std::thread::sleep(Duration::from_secs(4));
        drop(kafka);
        let elapsed = started.elapsed();

        let lines: Vec<Logged> = capture
            .events()
            .into_iter()
            .filter(|event| event.fields.get("producer").map(String::as_str) == Some(PRODUCER))
            .filter(|event| event.level <= Level::WARN)
            .collect();
        assert!(
            lines
                .iter()
                .any(|line| line.message.starts_with("kafka client error")),
            "the outage is reported: {lines:?}"
        );
        // One line a second at most, the first at once: over `elapsed`, at most one line per
        // whole second that passed, plus the first.
        let bound = elapsed.as_secs() as usize + 1;
        assert!(
            lines.len() <= bound,
            "{} lines in {elapsed:?}, at most {bound} expected: {lines:#?}",
            lines.len()
        );
        // Each line counts the reports since the previous one, itself included, so nothing is
        // hidden; what is held back is still there at debug level.
        let reports: u64 = lines
            .iter()
            .map(|line| line.field("reports").parse::<u64>().unwrap())
            .sum();
        let client_events = capture
            .events()
            .into_iter()
            .filter(|event| event.fields.get("producer").map(String::as_str) == Some(PRODUCER))
            .filter(|event| {
                event.message.starts_with("kafka client error")
                    || event.message.starts_with("librdkafka:")
            })
            .count();
        eprintln!(
            "{} lines for {reports} reports ({client_events} client events) in {elapsed:?}",
            lines.len()
        );
        assert!(reports >= lines.len() as u64, "{lines:#?}");
        assert!(
            lines.len() < client_events,
            "librdkafka's failures and its log lines of them are not each a warning: {lines:#?}"
        );
        for event in capture.events() {
            let shown = format!("{event:?}");
            assert!(!shown.contains(SECRET), "a secret was logged: {shown}");
        }
        assert!(
            lines.iter().all(|line| !line.message.contains(" 0/")),
            "no line claims that zero brokers are down: {lines:#?}"
        );
    }
}
