//! The metrics each component records through the `metrics` facade: names, labels and values,
//! read from a recorder that keeps what it is given (as Prometheus would), on paused time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tanker::breaker::{BreakerLayer, BreakerOpen};
use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
use tanker::handoff::{Handoff, Sent};
use tanker::metrics as names;
use tokio::sync::oneshot;
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_test::{assert_request_eq, mock};

mod support;
use support::DependencyDown;

/// A recorder that keeps every counter and gauge in an atomic, keyed by name and labels.
#[derive(Clone, Default)]
struct Store {
    metrics: Arc<Mutex<BTreeMap<String, Arc<AtomicU64>>>>,
    described: Arc<Mutex<Vec<String>>>,
}

impl Store {
    /// `name{key="value",...}` with the labels in the order the metric was registered with.
    fn id(key: &Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    fn cell(&self, key: &Key) -> Arc<AtomicU64> {
        self.metrics
            .lock()
            .unwrap()
            .entry(Self::id(key))
            .or_default()
            .clone()
    }

    fn counter(&self, id: &str) -> u64 {
        match self.metrics.lock().unwrap().get(id) {
            Some(cell) => cell.load(Ordering::SeqCst),
            None => panic!("no metric {id}; recorded: {:?}", self.ids()),
        }
    }

    fn gauge(&self, id: &str) -> f64 {
        f64::from_bits(self.counter(id))
    }

    fn ids(&self) -> Vec<String> {
        self.metrics.lock().unwrap().keys().cloned().collect()
    }

    /// Builds something with this store as the recorder its metric handles come from.
    fn build<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self, f)
    }
}

impl Recorder for Store {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_owned());
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_owned());
    }
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn id(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

#[tokio::test(start_paused = true)]
async fn bulkhead_counts_admitted_and_shed_and_tracks_its_slots() {
    let store = Store::default();
    let layer = store.build(|| {
        BulkheadLayer::builder()
            .name("redis")
            .max_in_flight(2)
            .build()
            .unwrap()
    });
    let labels = [("bulkhead", "redis")];
    assert_eq!(
        store.gauge(&id(names::BULKHEAD_MAX_IN_FLIGHT, &labels)),
        2.0
    );

    let (inner, mut handle) = mock::pair::<&str, &str>();
    let svc = layer.layer(inner);
    let mut calls = Vec::new();
    for request in ["a", "b"] {
        let mut svc = svc.clone();
        svc.ready().await.unwrap();
        calls.push(task::spawn(svc.call(request)));
    }
    assert_eq!(store.gauge(&id(names::BULKHEAD_IN_FLIGHT, &labels)), 2.0);
    // The third call finds the compartment full.
    let mut third = svc.clone();
    third.ready().await.unwrap();
    let err = third.call("c").await.unwrap_err();
    assert!(err.is::<BulkheadFull>());
    assert_eq!(store.counter(&id(names::BULKHEAD_SHED, &labels)), 1);
    assert_eq!(store.counter(&id(names::BULKHEAD_ADMITTED, &labels)), 2);

    for (call, request) in calls.iter_mut().zip(["a", "b"]) {
        assert_request_eq!(handle, request).send_response("ok");
        assert_eq!(assert_ready_ok!(call.poll()), "ok");
    }
    drop(calls);
    assert_eq!(store.gauge(&id(names::BULKHEAD_IN_FLIGHT, &labels)), 0.0);
    assert_eq!(store.gauge(&id(names::BULKHEAD_WAITING, &labels)), 0.0);
    assert_eq!(layer.handle().name(), "redis");
    let described = store.described.lock().unwrap().clone();
    assert!(described.iter().any(|name| name == names::BULKHEAD_SHED));
}

#[tokio::test(start_paused = true)]
async fn bulkhead_waiting_room_shows_in_the_waiting_gauge() {
    let store = Store::default();
    let layer = store.build(|| {
        BulkheadLayer::builder()
            .name("db")
            .max_in_flight(1)
            .waiting_room(4, Duration::from_millis(100))
            .build()
            .unwrap()
    });
    let labels = [("bulkhead", "db")];
    let (inner, mut handle) = mock::pair::<&str, &str>();
    let mut first = layer.layer(inner);
    first.ready().await.unwrap();
    let mut first_call = task::spawn(first.call("first"));
    let mut second = mock::Spawn::new(layer.layer(first.get_ref().clone()));
    assert_pending!(second.poll_ready());
    assert_eq!(store.gauge(&id(names::BULKHEAD_WAITING, &labels)), 1.0);

    assert_request_eq!(handle, "first").send_response("done");
    assert_ready_ok!(first_call.poll());
    drop(first_call);
    assert!(second.is_woken());
    assert_ready_ok!(second.poll_ready());
    assert_eq!(store.gauge(&id(names::BULKHEAD_WAITING, &labels)), 0.0);
    // The waiter holds the freed slot until its call.
    assert_eq!(store.gauge(&id(names::BULKHEAD_IN_FLIGHT, &labels)), 1.0);
    // Dropped without a call: the slot goes back, and no call was admitted.
    drop(second);
    assert_eq!(store.gauge(&id(names::BULKHEAD_IN_FLIGHT, &labels)), 0.0);
    assert_eq!(store.counter(&id(names::BULKHEAD_ADMITTED, &labels)), 1);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_waiting_gauge_drops_when_a_waiter_times_out_or_leaves() {
    let store = Store::default();
    let max_wait = Duration::from_millis(100);
    let layer = store.build(|| {
        BulkheadLayer::builder()
            .name("db")
            .max_in_flight(1)
            .waiting_room(4, max_wait)
            .build()
            .unwrap()
    });
    let waiting = || store.gauge(&id(names::BULKHEAD_WAITING, &[("bulkhead", "db")]));
    let (inner, _handle) = mock::pair::<&str, &str>();
    let mut holder = layer.layer(inner.clone());
    holder.ready().await.unwrap();
    let _held = holder.call("held");

    let mut timing_out = mock::Spawn::new(layer.layer(inner.clone()));
    let mut leaving = mock::Spawn::new(layer.layer(inner));
    assert_pending!(timing_out.poll_ready());
    assert_pending!(leaving.poll_ready());
    assert_eq!(waiting(), 2.0);

    drop(leaving);
    assert_eq!(waiting(), 1.0, "a waiter that leaves gives its place back");

    tokio::time::advance(max_wait).await;
    // Ready, to be shed by the call: its wait is over.
    assert_ready_ok!(timing_out.poll_ready());
    assert_eq!(
        waiting(),
        0.0,
        "a waiter whose wait is over leaves the room"
    );
    assert!(timing_out
        .call("late")
        .await
        .unwrap_err()
        .is::<BulkheadFull>());
    assert_eq!(layer.handle().counts().waiting, 0);
}

/// A recorder whose gauges keep only absolute values and drop increments and decrements, as
/// a StatsD exporter does: the bulkhead's gauges must read right through it.
#[derive(Clone, Default)]
struct AbsoluteGauges {
    gauges: Arc<Mutex<BTreeMap<String, Arc<AbsoluteGauge>>>>,
}

#[derive(Default)]
struct AbsoluteGauge(AtomicU64);

impl metrics::GaugeFn for AbsoluteGauge {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

impl AbsoluteGauges {
    fn gauge(&self, id: &str) -> f64 {
        match self.gauges.lock().unwrap().get(id) {
            Some(gauge) => f64::from_bits(gauge.0.load(Ordering::SeqCst)),
            None => panic!("no gauge {id}"),
        }
    }
}

impl Recorder for AbsoluteGauges {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let gauge = self
            .gauges
            .lock()
            .unwrap()
            .entry(Store::id(key))
            .or_default()
            .clone();
        Gauge::from_arc(gauge)
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(start_paused = true)]
async fn bulkhead_gauges_are_absolute_values_for_exporters_that_drop_increments() {
    let recorder = AbsoluteGauges::default();
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder()
            .name("statsd")
            .max_in_flight(2)
            .waiting_room(4, Duration::from_millis(100))
            .build()
            .unwrap()
    });
    let labels = [("bulkhead", "statsd")];
    let in_flight = || recorder.gauge(&id(names::BULKHEAD_IN_FLIGHT, &labels));
    let waiting = || recorder.gauge(&id(names::BULKHEAD_WAITING, &labels));

    let (inner, mut handle) = mock::pair::<&str, &str>();
    let svc = layer.layer(inner);
    let mut calls = Vec::new();
    for request in ["a", "b"] {
        let mut svc = svc.clone();
        svc.ready().await.unwrap();
        calls.push(task::spawn(svc.call(request)));
    }
    assert_eq!(in_flight(), 2.0);
    let mut waiter = mock::Spawn::new(svc.clone());
    assert_pending!(waiter.poll_ready());
    assert_eq!(waiting(), 1.0);

    for (call, request) in calls.iter_mut().zip(["a", "b"]) {
        assert_request_eq!(handle, request).send_response("ok");
        assert_eq!(assert_ready_ok!(call.poll()), "ok");
    }
    assert_eq!(in_flight(), 0.0);
    assert_ready_ok!(waiter.poll_ready());
    assert_eq!(waiting(), 0.0);
    assert_eq!(in_flight(), 1.0, "the waiter holds a slot until its call");
    drop(waiter);
    assert_eq!(in_flight(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn breaker_reports_state_transitions_outcomes_and_rejections() {
    let store = Store::default();
    let layer = store.build(|| {
        BreakerLayer::builder()
            .name("kafka")
            .consecutive_failures(3)
            .open_for(Duration::from_secs(1))
            .jitter(0.0)
            .build()
            .unwrap()
    });
    let state = |s: &str| {
        store.gauge(&id(
            names::BREAKER_STATE,
            &[("breaker", "kafka"), ("state", s)],
        ))
    };
    let transitions = |to: &str| {
        store.counter(&id(
            names::BREAKER_TRANSITIONS,
            &[("breaker", "kafka"), ("to", to)],
        ))
    };
    let calls = |outcome: &str| {
        store.counter(&id(
            names::BREAKER_CALLS,
            &[("breaker", "kafka"), ("outcome", outcome)],
        ))
    };
    assert_eq!(state("closed"), 1.0);
    assert_eq!(state("open"), 0.0);

    let healthy = Arc::new(AtomicU64::new(0));
    let flag = healthy.clone();
    let mut svc = layer.layer(service_fn(move |()| {
        let up = flag.load(Ordering::SeqCst) == 1;
        async move {
            if up {
                Ok(())
            } else {
                Err(BoxError::from(DependencyDown))
            }
        }
    }));
    for _ in 0..3 {
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.is::<DependencyDown>());
    }
    assert_eq!(calls("failure"), 3);
    assert_eq!(transitions("open"), 1);
    assert_eq!((state("closed"), state("open")), (0.0, 1.0));

    for _ in 0..4 {
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.is::<BreakerOpen>());
    }
    assert_eq!(
        store.counter(&id(names::BREAKER_REJECTED, &[("breaker", "kafka")])),
        4
    );

    healthy.store(1, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(transitions("half_open"), 1);
    assert_eq!(transitions("closed"), 1);
    assert_eq!(calls("success"), 1, "the probe counts as a call");
    assert_eq!(
        (state("closed"), state("open"), state("half_open")),
        (1.0, 0.0, 0.0)
    );

    // Resetting a closed breaker is not a change of state.
    layer.handle().reset();
    assert_eq!(transitions("closed"), 1);

    layer.handle().force_open();
    layer.handle().force_open();
    assert_eq!(
        transitions("forced_open"),
        1,
        "forcing it open twice is one change"
    );
    assert_eq!((state("closed"), state("forced_open")), (0.0, 1.0));
    layer.handle().reset();
    assert_eq!(transitions("closed"), 2);
    assert_eq!((state("closed"), state("forced_open")), (1.0, 0.0));
}

#[tokio::test(start_paused = true)]
async fn breaker_counts_slow_and_ignored_calls() {
    let store = Store::default();
    let layer = store.build(|| {
        BreakerLayer::builder()
            .name("slow")
            .slow_calls(Duration::from_millis(100), 1.0)
            .classify(|result: Result<&u32, &BoxError>| match result {
                Ok(_) => tanker::breaker::Outcome::Success,
                Err(_) => tanker::breaker::Outcome::Ignore,
            })
            .build()
            .unwrap()
    });
    let mut svc = layer.layer(service_fn(|delay: u32| async move {
        tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
        if delay % 2 == 1 {
            Err(BoxError::from(DependencyDown))
        } else {
            Ok(delay)
        }
    }));
    svc.ready().await.unwrap().call(150).await.unwrap();
    svc.ready().await.unwrap().call(10).await.unwrap();
    // Ignored by the classifier, and slow all the same.
    svc.ready().await.unwrap().call(151).await.unwrap_err();
    svc.ready().await.unwrap().call(1).await.unwrap_err();
    let labels = |outcome| [("breaker", "slow"), ("outcome", outcome)];
    assert_eq!(
        store.counter(&id(names::BREAKER_CALLS, &labels("success"))),
        2
    );
    assert_eq!(
        store.counter(&id(names::BREAKER_CALLS, &labels("ignored"))),
        2
    );
    assert_eq!(
        store.counter(&id(names::BREAKER_SLOW_CALLS, &[("breaker", "slow")])),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn handoff_publishes_its_counts_by_outcome_and_reason() {
    let store = Store::default();
    let gates: Arc<Mutex<Vec<oneshot::Sender<()>>>> = Arc::default();
    let parked = gates.clone();
    let (shed, open) = (shed_error().await, open_error().await);
    // Records 0 and 1 park until released; 2 is delivered; 3 fails; 4 is shed; 5 rejected.
    let service = service_fn(move |n: u32| {
        let (tx, rx) = oneshot::channel();
        if n < 2 {
            parked.lock().unwrap().push(tx);
        }
        async move {
            match n {
                0 | 1 => rx.await.map_err(BoxError::from),
                2 => Ok(()),
                3 => Err(BoxError::from(DependencyDown)),
                4 => Err(BoxError::from(shed)),
                _ => Err(BoxError::from(open)),
            }
        }
    });
    let handoff = store.build(|| {
        Handoff::builder()
            .name("events")
            .capacity(8)
            // Refusals final, so that each reason is counted once.
            .park(false)
            .spawn(service)
            .unwrap()
    });
    let labels = [("handoff", "events")];
    let reason = |name: &str, reason: &str| {
        store.counter(&id(name, &[("handoff", "events"), ("reason", reason)]))
    };
    for n in 0..6 {
        assert_eq!(handoff.send(n), Sent::Accepted);
    }
    // Let the worker run until both parked calls are in flight.
    while gates.lock().unwrap().len() < 2 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_millis(2)).await;
    tokio::task::yield_now().await;
    assert_eq!(store.counter(&id(names::HANDOFF_ACCEPTED, &labels)), 6);
    assert_eq!(store.gauge(&id(names::HANDOFF_IN_FLIGHT, &labels)), 2.0);
    assert_eq!(store.counter(&id(names::HANDOFF_DELIVERED, &labels)), 1);
    assert_eq!(reason(names::HANDOFF_FAILED, "error"), 1);
    assert_eq!(reason(names::HANDOFF_FAILED, "shed"), 1);
    assert_eq!(reason(names::HANDOFF_FAILED, "rejected"), 1);

    for gate in gates.lock().unwrap().drain(..) {
        gate.send(()).unwrap();
    }
    let report = handoff.close(Duration::from_secs(1)).await;
    assert!(report.drained);
    assert_eq!(handoff.send(9), Sent::Dropped);
    assert_eq!(handoff.counts().dropped_closed, 1);
    assert!(handoff.counts().is_balanced());
    // The worker published its last batch when it ended; a drop after close is recorded by
    // `send` itself, since the worker is gone.
    assert_eq!(reason(names::HANDOFF_DROPPED, "closed"), 1);
    assert_eq!(store.counter(&id(names::HANDOFF_ACCEPTED, &labels)), 6);
    assert_eq!(store.counter(&id(names::HANDOFF_DELIVERED, &labels)), 3);
    assert_eq!(store.gauge(&id(names::HANDOFF_IN_FLIGHT, &labels)), 0.0);
    assert_eq!(store.gauge(&id(names::HANDOFF_QUEUED, &labels)), 0.0);
    assert_eq!(reason(names::HANDOFF_DROPPED, "full"), 0);
}

#[tokio::test(start_paused = true)]
async fn handoff_splits_drops_into_full_and_closed() {
    let store = Store::default();
    let (service, mut handle) = mock::pair::<u32, ()>();
    handle.allow(0);
    let handoff = store.build(|| {
        Handoff::builder()
            .name("stats")
            .capacity(2)
            .spawn(service)
            .unwrap()
    });
    for n in 0..5 {
        handoff.send(n);
    }
    let counts = handoff.counts();
    assert_eq!(
        (counts.accepted, counts.dropped, counts.dropped_closed),
        (2, 3, 0)
    );
    tokio::time::advance(Duration::from_millis(2)).await;
    tokio::task::yield_now().await;
    let reason = |reason: &str| {
        store.counter(&id(
            names::HANDOFF_DROPPED,
            &[("handoff", "stats"), ("reason", reason)],
        ))
    };
    assert_eq!(reason("full"), 3);
    assert_eq!(reason("closed"), 0);
    assert_eq!(
        store.gauge(&id(names::HANDOFF_QUEUED, &[("handoff", "stats")])),
        1.0,
        "one record waits in the queue, one waits for the service to be ready"
    );
}

/// A service that never answers.
fn hang() -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(|()| std::future::pending::<Result<(), BoxError>>())
}

/// A `BulkheadFull` as the crate makes it (only the crate builds its errors).
async fn shed_error() -> BulkheadFull {
    let layer = BulkheadLayer::new(1).unwrap();
    let mut holder = layer.layer(hang());
    let _held = holder.ready().await.unwrap().call(());
    let err = layer.layer(hang()).oneshot(()).await.unwrap_err();
    *err.downcast_ref::<BulkheadFull>().unwrap()
}

/// A `BreakerOpen` as the crate makes it.
async fn open_error() -> BreakerOpen {
    let layer = BreakerLayer::new();
    layer.handle().force_open();
    let err = layer.layer(hang()).oneshot(()).await.unwrap_err();
    *err.downcast_ref::<BreakerOpen>().unwrap()
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_counts_deliveries_and_errors_by_kind() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use tanker::kafka::{KafkaErrorKind, KafkaService, Record};

    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let store = Store::default();
    let kafka = store.build(|| {
        KafkaService::builder(cluster.bootstrap_servers())
            .name("events-writer")
            .linger(Duration::from_millis(1))
            .build()
            .unwrap()
    });
    let labels = [("producer", "events-writer")];
    for n in 0..3 {
        let record = Record::new("events", format!("record {n}").into_bytes());
        tokio::time::timeout(Duration::from_secs(10), kafka.clone().oneshot(record))
            .await
            .expect("a delivery report within 10 s")
            .unwrap();
    }
    assert_eq!(store.counter(&id(names::KAFKA_DELIVERED, &labels)), 3);
    assert_eq!(store.gauge(&id(names::KAFKA_IN_FLIGHT, &labels)), 0.0);

    // Larger than `message.max.bytes`: refused at once, no report to wait for.
    let too_large = Record::new("events", vec![0u8; 2_000_000]);
    let err = kafka.clone().oneshot(too_large).await.unwrap_err();
    assert_eq!(err.kind(), KafkaErrorKind::MessageTooLarge);
    let errors = |kind: &str| {
        store.counter(&id(
            names::KAFKA_ERRORS,
            &[("producer", "events-writer"), ("kind", kind)],
        ))
    };
    assert_eq!(errors("message_too_large"), 1);
    assert_eq!(errors("queue_full"), 0);
    assert_eq!(store.gauge(&id(names::KAFKA_IN_FLIGHT, &labels)), 0.0);
    assert_eq!(kafka.flush(Duration::from_secs(5)).await.undelivered, 0);

    // Records in flight when the producer is dropped are purged: counted as `closed`, and the
    // in-flight gauge comes back to zero.
    cluster.broker_down(-1).unwrap();
    let calls: Vec<_> = (0..5)
        .map(|n| tokio::spawn(kafka.clone().oneshot(Record::new("events", vec![n]))))
        .collect();
    let in_flight = || store.gauge(&id(names::KAFKA_IN_FLIGHT, &labels));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while in_flight() < 5.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "records never in flight"
        );
        tokio::task::yield_now().await;
    }
    drop(kafka);
    for call in calls {
        let err = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("purged within 10 s")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), KafkaErrorKind::Closed);
    }
    assert_eq!(errors("closed"), 5);
    assert_eq!(in_flight(), 0.0);
}
