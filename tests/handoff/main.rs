//! Integration tests for the hand-off: `send` never blocks, every record is counted exactly once
//! whatever the stack does, bounded concurrency, the `Service` impl, `close`, broken services,
//! the early wake-up, configuration, and a multi-threaded stress test.

#[path = "../support/mod.rs"]
mod support;

use std::cell::Cell;
use std::convert::Infallible;
use std::future::{pending, ready, Ready};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use futures::task::noop_waker;
use proptest::prelude::*;
use tokio::time::{self, Instant};
use tower::timeout::Timeout;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::mock;

use tanker::breaker::{Breaker, BreakerLayer, BreakerState};
use tanker::bulkhead::{Bulkhead, BulkheadLayer};
use tanker::handoff::{CloseReport, Handoff, HandoffBuilder, HandoffCounts, Sent};
use tanker::ServiceBuilderExt;

/// The idle tick most tests use (the builder's default).
const TICK: Duration = Duration::from_millis(1);
/// How long a [`Fate::Slow`] call takes.
const SLOW: Duration = Duration::from_millis(20);
/// The timeout that turns a [`Fate::Hang`] call into a failure.
const HANG_TIMEOUT: Duration = Duration::from_millis(50);
/// How many idle ticks `settle` waits at most (20 s of paused time).
const SETTLE_STEPS: usize = 20_000;

// ===== helpers =====

/// Lets the worker (and any other ready task) run, without moving paused time.
async fn run_worker() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

/// Yields and advances paused time one idle tick at a time until nothing is pending, and returns
/// the counts then. Panics if the hand-off does not settle within `SETTLE_STEPS` ticks.
async fn settle<Req>(handoff: &Handoff<Req>) -> HandoffCounts {
    for _ in 0..SETTLE_STEPS {
        run_worker().await;
        let counts = handoff.counts();
        if counts.pending() == 0 {
            return counts;
        }
        time::advance(TICK).await;
    }
    panic!(
        "the hand-off did not settle within {SETTLE_STEPS} ticks: {:?}",
        handoff.counts()
    );
}

/// Asserts both accounting identities and `pending == 0`.
#[track_caller]
fn assert_quiescent(counts: &HandoffCounts) {
    assert_eq!(
        counts.offered,
        counts.accepted + counts.dropped,
        "{counts:?}"
    );
    assert_eq!(
        counts.accepted,
        counts.delivered + counts.shed + counts.rejected + counts.failed + counts.pending(),
        "{counts:?}"
    );
    assert_eq!(counts.pending(), 0, "{counts:?}");
    assert!(counts.is_balanced(), "{counts:?}");
}

/// A hand-off whose refusals and failures are final (no parking, no second try), so that each
/// [`Fate`] has one outcome; `tests/handoff_parking.rs` covers parking.
fn builder(capacity: usize, concurrency: usize) -> HandoffBuilder {
    Handoff::builder()
        .capacity(capacity)
        .concurrency(concurrency)
        .park(false)
        .retry_failed(false)
        .name("test")
}

/// A dependency that answers at once.
fn instant_ok<Req: Send + 'static>(
) -> impl Service<Req, Response = (), Error = BoxError, Future = impl Send> + Send + 'static {
    service_fn(|_: Req| async { Ok::<_, BoxError>(()) })
}

/// What the test dependency does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Answered at once.
    Deliver,
    /// Answered after [`SLOW`].
    Slow,
    /// Failed by the dependency.
    Fail,
    /// Never answered: the timeout in front of the dependency fails it.
    Hang,
    /// Shed by a full bulkhead.
    Shed,
    /// Rejected by an open breaker.
    Reject,
}

use support::DependencyDown;

/// A dependency that acts out each request's [`Fate`] and records how many calls it has at once.
#[derive(Debug, Clone, Default)]
struct Dependency {
    calls: Arc<AtomicU64>,
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Dependency {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn in_flight(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
}

/// Leaves the dependency's in-flight count when the call ends or is dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service<Fate> for Dependency {
    type Response = Fate;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Fate, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, fate: Fate) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(self.now.clone());
        async move {
            let _guard = guard;
            match fate {
                Fate::Slow => time::sleep(SLOW).await,
                Fate::Hang => pending::<()>().await,
                Fate::Fail => return Err(DependencyDown.into()),
                Fate::Deliver | Fate::Shed | Fate::Reject => {}
            }
            Ok(fate)
        }
        .boxed()
    }
}

/// Sends each request to the stack that gives it its fate: a full bulkhead for `Shed`, an open
/// breaker for `Reject`, a timeout in front of the dependency for the others.
struct Router {
    direct: Timeout<Dependency>,
    shedding: Bulkhead<Dependency>,
    rejecting: Breaker<Dependency>,
    /// Holds the shedding bulkhead's only slot for as long as the router lives.
    _slot_holder: BoxFuture<'static, Result<Fate, BoxError>>,
}

impl Router {
    /// Must run inside a runtime (the breaker starts its ticker there).
    async fn new(dependency: &Dependency) -> Self {
        let bulkhead = BulkheadLayer::new(1).expect("a valid bulkhead");
        // A call that never ends holds the only slot; it goes to a service of its own so that
        // the dependency's counters see only the hand-off's calls.
        let never = tower::service_fn(|_: Fate| pending::<Result<Fate, BoxError>>());
        let mut holder = bulkhead.layer(never);
        let held = holder
            .ready()
            .await
            .expect("the holder is ready")
            .call(Fate::Hang)
            .boxed();
        assert_eq!(
            bulkhead.handle().counts().in_flight,
            1,
            "the only slot is held"
        );

        let breaker = BreakerLayer::new();
        breaker.handle().force_open();
        assert_eq!(breaker.handle().state(), BreakerState::ForcedOpen);

        Self {
            direct: Timeout::new(dependency.clone(), HANG_TIMEOUT),
            shedding: bulkhead.layer(dependency.clone()),
            rejecting: breaker.layer(dependency.clone()),
            _slot_holder: held,
        }
    }
}

impl Service<Fate> for Router {
    type Response = Fate;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Fate, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, fate: Fate) -> Self::Future {
        match fate {
            Fate::Shed => self.shedding.clone().oneshot(fate).boxed(),
            Fate::Reject => self.rejecting.clone().oneshot(fate).boxed(),
            _ => self.direct.clone().oneshot(fate).boxed(),
        }
    }
}

/// The counts a batch of accepted fates should end with.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Expected {
    delivered: u64,
    shed: u64,
    rejected: u64,
    failed: u64,
}

impl Expected {
    fn add(&mut self, fate: Fate) {
        match fate {
            Fate::Deliver | Fate::Slow => self.delivered += 1,
            Fate::Fail | Fate::Hang => self.failed += 1,
            Fate::Shed => self.shed += 1,
            Fate::Reject => self.rejected += 1,
        }
    }
}

/// A service whose `poll_ready` fails while `broken` is set; counts its polls and calls.
#[derive(Debug, Clone, Default)]
struct Breakable {
    broken: Arc<AtomicBool>,
    polls: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl Service<u32> for Breakable {
    type Response = ();
    type Error = BoxError;
    type Future = Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        if self.broken.load(Ordering::SeqCst) {
            Poll::Ready(Err("connection pool closed".into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ready(Ok(()))
    }
}

/// Takes every request the mock has received so far, keeping their responders alive (a dropped
/// responder would fail the call).
fn take_requests<T, U>(handle: &mut mock::Handle<T, U>) -> Vec<(T, mock::SendResponse<U>)> {
    let mut requests = Vec::new();
    while let Some(Some(request)) = handle.next_request().now_or_never() {
        requests.push(request);
    }
    requests
}

/// Sends every request and returns how many were accepted.
fn send_many<Req>(handoff: &Handoff<Req>, requests: impl IntoIterator<Item = Req>) -> u64 {
    requests
        .into_iter()
        .map(|request| handoff.send(request))
        .filter(|sent| *sent == Sent::Accepted)
        .count() as u64
}

// ===== send never blocks =====

#[tokio::test(start_paused = true)]
async fn send_never_blocks_on_a_hung_dependency_and_drops_beyond_capacity() {
    const CAPACITY: usize = 8;
    const CONCURRENCY: usize = 4;
    let (service, mut handle) = mock::pair::<u32, ()>();
    let handoff = builder(CAPACITY, CONCURRENCY).spawn(service).unwrap();
    let start = Instant::now();

    // The worker has not run yet: exactly `capacity` records fit, the rest are dropped at once.
    let results: Vec<Sent> = (0..5_000).map(|i| handoff.send(i)).collect();
    assert!(results[..CAPACITY].iter().all(|s| *s == Sent::Accepted));
    assert!(results[CAPACITY..].iter().all(|s| *s == Sent::Dropped));
    let counts = handoff.counts();
    assert_eq!(counts.offered, 5_000);
    assert_eq!(counts.accepted, CAPACITY as u64);
    assert_eq!(counts.dropped, 5_000 - CAPACITY as u64);
    assert_eq!(counts.queued, CAPACITY as u64);
    assert_eq!(counts.in_flight, 0);

    // The worker takes `concurrency` records into calls that never finish, in FIFO order.
    run_worker().await;
    let requests = take_requests(&mut handle);
    let seen: Vec<u32> = requests.iter().map(|(r, _)| *r).collect();
    assert_eq!(seen, vec![0, 1, 2, 3]);
    let counts = handoff.counts();
    assert_eq!(counts.in_flight, CONCURRENCY as u64);
    assert_eq!(counts.queued, (CAPACITY - CONCURRENCY) as u64);

    // That freed `concurrency` places in the queue, and no more: thousands more sends.
    let accepted = send_many(&handoff, 5_000..10_000);
    assert_eq!(accepted, CONCURRENCY as u64);
    run_worker().await;
    assert!(
        take_requests(&mut handle).is_empty(),
        "the worker must not exceed its concurrency"
    );

    let counts = handoff.counts();
    assert_eq!(counts.offered, 10_000);
    assert_eq!(counts.accepted, (CAPACITY + CONCURRENCY) as u64);
    assert_eq!(counts.dropped, 10_000 - (CAPACITY + CONCURRENCY) as u64);
    assert_eq!(counts.queued, CAPACITY as u64);
    assert_eq!(counts.in_flight, CONCURRENCY as u64);
    assert_eq!(counts.finished(), 0);
    assert!(counts.is_balanced(), "{counts:?}");
    assert_eq!(Instant::now(), start, "sending took no (paused) time");
    drop(requests);
}

#[tokio::test(start_paused = true)]
async fn send_never_blocks_when_the_service_is_never_ready() {
    const CAPACITY: usize = 16;
    let (service, mut handle) = mock::pair::<u32, ()>();
    handle.allow(0);
    let handoff = builder(CAPACITY, 4).spawn(service).unwrap();

    assert_eq!(send_many(&handoff, 0..1_000), CAPACITY as u64);
    // The worker holds one record back while the service is not ready.
    run_worker().await;
    time::advance(TICK * 10).await;
    let counts = handoff.counts();
    assert_eq!(counts.in_flight, 1, "{counts:?}");
    assert_eq!(counts.queued, CAPACITY as u64 - 1, "{counts:?}");
    assert_eq!(send_many(&handoff, 1_000..2_000), 1);
    assert!(take_requests(&mut handle).is_empty());

    let counts = handoff.counts();
    assert_eq!(counts.accepted, CAPACITY as u64 + 1);
    assert_eq!(counts.dropped, 2_000 - (CAPACITY as u64 + 1));
    assert!(counts.is_balanced(), "{counts:?}");

    // Once the service is ready, the held record and the queue are delivered, in order.
    handle.allow(u64::MAX);
    let answer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            seen.push(request);
            respond.send_response(());
            if seen.len() == CAPACITY + 1 {
                break;
            }
        }
        seen
    });
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, CAPACITY as u64 + 1);
    let seen = answer.await.unwrap();
    let mut expected: Vec<u32> = (0..CAPACITY as u32).collect();
    // The one place freed by the held record went to the first send of the second burst.
    expected.push(1_000);
    assert_eq!(seen, expected);
}

#[tokio::test(start_paused = true)]
async fn send_works_from_a_plain_thread_outside_the_runtime() {
    let delivered = Arc::new(AtomicU64::new(0));
    let inner = {
        let delivered = delivered.clone();
        service_fn(move |_: u64| {
            delivered.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        })
    };
    let handoff = builder(1_000, 8).spawn(inner).unwrap();

    let sender = handoff.clone();
    let results = std::thread::spawn(move || {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "this thread has no runtime"
        );
        (0..1_010).map(|i| sender.send(i)).collect::<Vec<_>>()
    })
    .join()
    .expect("send never panics");
    assert!(results[..1_000].iter().all(|s| *s == Sent::Accepted));
    assert!(results[1_000..].iter().all(|s| *s == Sent::Dropped));

    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.accepted, 1_000);
    assert_eq!(counts.dropped, 10);
    assert_eq!(counts.delivered, 1_000);
    assert_eq!(delivered.load(Ordering::SeqCst), 1_000);
}

// ===== accounting under every outcome =====

#[tokio::test(start_paused = true)]
async fn every_outcome_is_counted_once_and_the_identity_holds() {
    let dependency = Dependency::default();
    let router = Router::new(&dependency).await;
    let handoff = builder(64, 4).spawn(router).unwrap();

    let fates = [
        Fate::Deliver,
        Fate::Slow,
        Fate::Fail,
        Fate::Hang,
        Fate::Shed,
        Fate::Reject,
        Fate::Deliver,
        Fate::Shed,
        Fate::Reject,
        Fate::Fail,
    ];
    let mut expected = Expected::default();
    for fate in fates {
        assert_eq!(handoff.send(fate), Sent::Accepted);
        expected.add(fate);
    }
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.accepted, 10);
    assert_eq!(
        Expected {
            delivered: counts.delivered,
            shed: counts.shed,
            rejected: counts.rejected,
            failed: counts.failed,
        },
        expected
    );
    assert_eq!(counts.ignored(), 7);
    // Shed and rejected records never reached the dependency.
    assert_eq!(dependency.calls(), 6);
    assert_eq!(
        dependency.in_flight(),
        0,
        "the hung call was cancelled by the timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_dependency_behind_a_bulkhead_of_one_sheds_the_rest_of_a_burst() {
    let dependency = Dependency::default();
    let bulkhead = BulkheadLayer::new(1).unwrap();
    let stack = ServiceBuilder::new()
        .bulkhead(bulkhead.clone())
        .service(dependency.clone());
    let handoff = builder(16, 4).spawn(stack).unwrap();

    // The first call holds the only slot for `SLOW`; every other record of the burst is shed at
    // once, long before it ends.
    assert_eq!(send_many(&handoff, [Fate::Slow; 10]), 10);
    let start = Instant::now();
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 1);
    assert_eq!(counts.shed, 9);
    assert_eq!(counts.failed, 0);
    assert_eq!(bulkhead.handle().counts().shed, 9);
    assert_eq!(dependency.calls(), 1);
    assert!(Instant::now() - start >= SLOW);

    // Once it finishes, the slot is free again.
    assert_eq!(handoff.send(Fate::Deliver), Sent::Accepted);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 2);
    assert_eq!(counts.shed, 9);
}

#[tokio::test(start_paused = true)]
async fn a_failing_dependency_trips_the_breaker_and_the_handoff_resumes_after_the_cool_down() {
    let down = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU64::new(0));
    let dependency = {
        let (down, calls) = (down.clone(), calls.clone());
        service_fn(move |_: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            let down = down.load(Ordering::SeqCst);
            async move {
                if down {
                    Err::<(), BoxError>(DependencyDown.into())
                } else {
                    Ok(())
                }
            }
        })
    };
    let breaker = BreakerLayer::builder()
        .consecutive_failures(3)
        .open_for(Duration::from_secs(5))
        .jitter(0.0)
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .breaker(breaker.clone())
        .bulkhead(BulkheadLayer::new(8).unwrap())
        .service(dependency);
    // One call at a time, so the order of outcomes is fixed.
    let handoff = builder(64, 1).spawn(stack).unwrap();

    assert_eq!(send_many(&handoff, 0..10), 10);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.failed, 3);
    assert_eq!(counts.rejected, 7);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "an open breaker does not call"
    );
    assert_eq!(breaker.handle().state(), BreakerState::Open);

    // The dependency recovers; after the cool-down, the first record probes it and closes the
    // breaker, and the rest go through, with no human action.
    down.store(false, Ordering::SeqCst);
    time::advance(Duration::from_secs(5)).await;
    assert_eq!(send_many(&handoff, 10..15), 5);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 5);
    assert_eq!(counts.rejected, 7);
    assert_eq!(counts.failed, 3);
    assert_eq!(breaker.handle().state(), BreakerState::Closed);
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        4 => Just(Fate::Deliver),
        2 => Just(Fate::Slow),
        2 => Just(Fate::Fail),
        1 => Just(Fate::Hang),
        2 => Just(Fate::Shed),
        2 => Just(Fate::Reject),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Waves of records with random fates, each wave sent in one burst (so exactly `capacity` of
    /// it fit), then settled; then a close and a few sends after it. Every count is what the
    /// fates say, and both identities hold exactly.
    #[test]
    fn the_accounting_identity_holds_for_any_mix_of_outcomes(
        capacity in 1usize..=16,
        concurrency in 1usize..=8,
        waves in prop::collection::vec(prop::collection::vec(fate(), 0..40), 1..4),
        after_close in 0u64..5,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let dependency = Dependency::default();
            let router = Router::new(&dependency).await;
            let handoff = builder(capacity, concurrency).spawn(router).unwrap();

            let mut expected = Expected::default();
            let (mut offered, mut accepted) = (0u64, 0u64);
            for wave in &waves {
                for (i, fate) in wave.iter().enumerate() {
                    let sent = handoff.send(*fate);
                    offered += 1;
                    if i < capacity {
                        prop_assert_eq!(sent, Sent::Accepted);
                        accepted += 1;
                        expected.add(*fate);
                    } else {
                        prop_assert_eq!(sent, Sent::Dropped);
                    }
                }
                let counts = settle(&handoff).await;
                prop_assert!(counts.is_balanced(), "{:?}", counts);
                prop_assert_eq!(counts.pending(), 0);
                prop_assert_eq!(counts.offered, offered);
                prop_assert_eq!(counts.accepted, accepted);
            }

            let report = handoff.close(Duration::from_secs(1)).await;
            prop_assert!(report.drained);
            prop_assert_eq!(report.left, 0);
            for _ in 0..after_close {
                prop_assert_eq!(handoff.send(Fate::Deliver), Sent::Dropped);
                offered += 1;
            }

            let counts = handoff.counts();
            prop_assert_eq!(counts.offered, offered);
            prop_assert_eq!(counts.offered, counts.accepted + counts.dropped);
            prop_assert_eq!(counts.accepted, accepted);
            prop_assert_eq!(counts.dropped, offered - accepted);
            prop_assert_eq!(
                counts.accepted,
                counts.delivered + counts.shed + counts.rejected + counts.failed + counts.pending()
            );
            prop_assert_eq!(counts.pending(), 0);
            prop_assert_eq!(counts.delivered, expected.delivered);
            prop_assert_eq!(counts.shed, expected.shed);
            prop_assert_eq!(counts.rejected, expected.rejected);
            prop_assert_eq!(counts.failed, expected.failed);
            prop_assert!(counts.is_balanced());
            prop_assert!(
                dependency.peak() <= concurrency,
                "the dependency saw {} calls at once, the bound is {}",
                dependency.peak(),
                concurrency
            );
            prop_assert_eq!(dependency.in_flight(), 0);
            Ok(())
        })?;
    }
}

// ===== bounded concurrency =====

#[tokio::test(start_paused = true)]
async fn the_dependency_never_sees_more_than_concurrency_calls_at_once() {
    const CONCURRENCY: usize = 3;
    let dependency = Dependency::default();
    let handoff = builder(100, CONCURRENCY).spawn(dependency.clone()).unwrap();

    assert_eq!(send_many(&handoff, [Fate::Slow; 100]), 100);
    let start = Instant::now();
    run_worker().await;
    assert_eq!(dependency.in_flight(), CONCURRENCY);
    assert_eq!(handoff.counts().in_flight, CONCURRENCY as u64);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 100);
    assert_eq!(
        dependency.peak(),
        CONCURRENCY,
        "the bound is reached and never exceeded"
    );
    // 100 calls of `SLOW`, three at a time: 34 rounds, no faster.
    assert!(
        Instant::now() - start >= SLOW * 34,
        "{:?}",
        Instant::now() - start
    );
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_of_one_calls_the_dependency_one_record_at_a_time_in_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (seen, now, peak) = (seen.clone(), now.clone(), peak.clone());
        service_fn(move |n: u32| {
            seen.lock().unwrap().push(n);
            let current = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(current, Ordering::SeqCst);
            let now = now.clone();
            async move {
                time::sleep(Duration::from_millis(3)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        })
    };
    let handoff = builder(32, 1).spawn(inner).unwrap();
    assert_eq!(send_many(&handoff, 0..20), 20);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 20);
    assert_eq!(peak.load(Ordering::SeqCst), 1);
    assert_eq!(*seen.lock().unwrap(), (0..20).collect::<Vec<_>>());
}

// ===== the Service impl =====

/// Compile-time check: the hand-off is a service that cannot fail and answers with `Sent`.
fn assert_infallible_service<S, Req>(_: &S)
where
    S: Service<Req, Response = Sent, Error = Infallible, Future = Ready<Result<Sent, Infallible>>>,
{
}

#[tokio::test(start_paused = true)]
async fn the_service_is_always_ready_and_answers_at_once() {
    let handoff = builder(2, 1).spawn(instant_ok::<u32>()).unwrap();
    assert_infallible_service::<_, u32>(&handoff);

    let mut svc = handoff.clone();
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    for (request, expected) in [(1, Sent::Accepted), (2, Sent::Accepted), (3, Sent::Dropped)] {
        assert_eq!(svc.poll_ready(&mut cx), Poll::Ready(Ok(())));
        let answer = svc.call(request).now_or_never();
        assert_eq!(answer, Some(Ok(expected)), "request {request}");
    }
    // Ready even with the queue full.
    assert_eq!(svc.poll_ready(&mut cx), Poll::Ready(Ok(())));

    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.offered, 3);
    assert_eq!(counts.delivered, 2);
    assert_eq!(counts.dropped, 1);
}

#[tokio::test(start_paused = true)]
async fn the_service_composes_with_service_builder_and_oneshot() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let seen = seen.clone();
        service_fn(move |n: u32| {
            seen.lock().unwrap().push(n);
            async { Ok::<_, BoxError>(()) }
        })
    };
    let handoff = builder(8, 2).spawn(inner).unwrap();

    let svc = ServiceBuilder::new()
        .map_request(|n: u32| n * 10)
        .service(handoff.clone());
    assert_eq!(svc.clone().oneshot(4).await, Ok(Sent::Accepted));
    let mut svc = svc;
    assert_eq!(svc.ready().await.unwrap().call(5).await, Ok(Sent::Accepted));

    // With tower's own load shedding and timeout around it: the hand-off is always ready, so
    // nothing is ever shed by `LoadShed`, and nothing waits.
    let mut guarded = ServiceBuilder::new()
        .load_shed()
        .timeout(Duration::from_millis(1))
        .service(handoff.clone());
    let sent = guarded.ready().await.unwrap().call(6).await.unwrap();
    assert_eq!(sent, Sent::Accepted);

    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 3);
    assert_eq!(*seen.lock().unwrap(), vec![40, 50, 6]);
}

// ===== close =====

#[tokio::test(start_paused = true)]
async fn close_drains_queued_and_in_flight_records_and_drops_later_sends() {
    let dependency = Dependency::default();
    let handoff = builder(16, 2).spawn(dependency.clone()).unwrap();
    assert_eq!(send_many(&handoff, [Fate::Slow; 10]), 10);
    run_worker().await;
    assert_eq!(handoff.counts().in_flight, 2);
    assert_eq!(handoff.counts().queued, 8);

    let start = Instant::now();
    let report = handoff.close(Duration::from_secs(5)).await;
    let took = Instant::now() - start;
    assert!(report.drained, "{report:?}");
    assert_eq!(report.left, 0);
    assert_quiescent(&report.counts);
    assert_eq!(report.counts.delivered, 10);
    // Five rounds of two slow calls, and no waiting for the deadline.
    assert!(took >= SLOW * 5 && took < SLOW * 5 + TICK * 5, "{took:?}");
    assert!(handoff.is_closed());

    // Later sends, through any clone or the Service impl, are dropped and counted.
    let clone = handoff.clone();
    assert_eq!(handoff.send(Fate::Deliver), Sent::Dropped);
    assert_eq!(clone.send(Fate::Deliver), Sent::Dropped);
    assert_eq!(
        clone.clone().oneshot(Fate::Deliver).await,
        Ok(Sent::Dropped)
    );
    let counts = handoff.counts();
    assert_quiescent(&counts);
    assert_eq!(counts.dropped, 3);
    assert_eq!(counts.accepted, 10);
    assert_eq!(dependency.calls(), 10);
}

#[tokio::test(start_paused = true)]
async fn close_of_an_idle_handoff_returns_at_once() {
    let handoff = builder(4, 1).spawn(instant_ok::<u32>()).unwrap();
    run_worker().await;
    let start = Instant::now();
    let report = handoff.close(Duration::from_secs(30)).await;
    assert!(report.drained);
    assert_eq!(report.left, 0);
    assert_eq!(report.counts, HandoffCounts::default());
    assert!(
        Instant::now() - start < TICK,
        "{:?}",
        Instant::now() - start
    );

    // Closing again reports the same, at once.
    let again = handoff.close(Duration::from_secs(30)).await;
    assert_eq!(again, report);
    assert!(Instant::now() - start < TICK);
}

#[tokio::test(start_paused = true)]
async fn close_before_the_worker_ever_ran_still_drains() {
    let handoff = builder(4, 1).spawn(instant_ok::<u32>()).unwrap();
    assert_eq!(send_many(&handoff, 0..3), 3);
    let report = handoff.close(Duration::from_secs(1)).await;
    assert!(report.drained);
    assert_quiescent(&report.counts);
    assert_eq!(report.counts.delivered, 3);
}

#[tokio::test(start_paused = true)]
async fn close_with_a_hung_dependency_returns_at_the_deadline_with_what_is_left() {
    let (service, mut handle) = mock::pair::<u32, ()>();
    let handoff = builder(8, 2).spawn(service).unwrap();
    assert_eq!(send_many(&handoff, 0..5), 5);
    run_worker().await;
    let hung = take_requests(&mut handle);
    assert_eq!(hung.len(), 2);

    let deadline = Duration::from_millis(250);
    let start = Instant::now();
    let report: CloseReport = handoff.close(deadline).await;
    assert_eq!(Instant::now() - start, deadline);
    assert!(!report.drained);
    assert_eq!(report.left, 5);
    assert_eq!(report.left, report.counts.pending());
    assert_eq!(report.counts.in_flight, 2);
    assert_eq!(report.counts.queued, 3);
    assert!(report.counts.is_balanced(), "{report:?}");
    assert_eq!(handoff.send(99), Sent::Dropped);

    // The worker keeps driving what was left, and counts it when it finishes.
    for (_, respond) in hung {
        respond.send_response(());
    }
    let answer = tokio::spawn(async move {
        for _ in 0..3 {
            let (_, respond) = handle.next_request().await.expect("the worker calls");
            respond.send_error(DependencyDown);
        }
        handle
    });
    let counts = settle(&handoff).await;
    let _handle = answer.await.unwrap();
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 2);
    assert_eq!(counts.failed, 3);
    assert_eq!(counts.dropped, 1);

    // The worker has now finished: a second close reports drained at once.
    let start = Instant::now();
    let report = handoff.close(deadline).await;
    assert!(report.drained);
    assert_eq!(report.left, 0);
    assert!(Instant::now() - start < TICK);
}

#[tokio::test(start_paused = true)]
async fn close_with_a_service_that_is_never_ready_reports_the_held_record_as_left() {
    let (service, mut handle) = mock::pair::<u32, ()>();
    handle.allow(0);
    let handoff = builder(8, 4).spawn(service).unwrap();
    assert_eq!(send_many(&handoff, 0..6), 6);
    let report = handoff.close(Duration::from_millis(100)).await;
    assert!(!report.drained);
    assert_eq!(report.left, 6);
    assert_eq!(
        report.counts.in_flight, 1,
        "one record held back: {report:?}"
    );
    assert_eq!(report.counts.queued, 5);
    assert!(report.counts.is_balanced());
    drop(handle);
}

// ===== a broken service =====

#[tokio::test(start_paused = true)]
async fn a_service_whose_poll_ready_fails_closes_the_handoff_and_loses_no_record() {
    let service = Breakable::default();
    service.broken.store(true, Ordering::SeqCst);
    let handoff = builder(16, 4).spawn(service.clone()).unwrap();

    assert_eq!(send_many(&handoff, 0..10), 10);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(
        counts.failed, 10,
        "the record being started and the queued ones fail"
    );
    assert_eq!(counts.delivered, 0);
    assert_eq!(service.calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        service.polls.load(Ordering::SeqCst),
        1,
        "a service whose poll_ready failed is not polled again"
    );
    assert!(handoff.is_closed(), "a dead service closes the hand-off");

    // Later records are dropped, not accepted and failed, and close returns at once.
    assert_eq!(send_many(&handoff, 10..30), 0);
    let report = handoff.close(Duration::from_secs(1)).await;
    assert!(report.drained);
    assert_quiescent(&report.counts);
    assert_eq!(report.counts.failed, 10);
    assert_eq!(report.counts.dropped, 20);
    assert_eq!(report.counts.dropped_closed, 20);
}

#[tokio::test(start_paused = true)]
async fn a_service_that_breaks_later_closes_the_handoff_and_every_record_is_counted() {
    let service = Breakable::default();
    let handoff = builder(16, 2).spawn(service.clone()).unwrap();

    assert_eq!(send_many(&handoff, 0..3), 3);
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 3);

    service.broken.store(true, Ordering::SeqCst);
    assert_eq!(send_many(&handoff, 3..7), 4);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.failed, 4);
    let polls = service.polls.load(Ordering::SeqCst);

    // Even if the service would be ready again, a dead service is not polled again: the
    // hand-off is closed.
    service.broken.store(false, Ordering::SeqCst);
    assert_eq!(send_many(&handoff, 7..12), 0);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 3);
    assert_eq!(counts.failed, 4);
    assert_eq!(counts.dropped_closed, 5);
    assert_eq!(service.polls.load(Ordering::SeqCst), polls);
    assert_eq!(service.calls.load(Ordering::SeqCst), 3);
}

// ===== waking the worker =====

/// A dependency that answers at once and counts its calls.
fn counting_ok() -> (
    Arc<AtomicU64>,
    impl Service<u32, Response = (), Error = BoxError, Future = impl Send> + Send + 'static,
) {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let inner = service_fn(move |_: u32| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(()) }
    });
    (calls, inner)
}

/// How long an idle worker keeps its 1 ms tick before it slows down, and its slow tick.
const LINGER: Duration = Duration::from_millis(50);
const SLOW_TICK: Duration = Duration::from_millis(100);

#[tokio::test(start_paused = true)]
async fn an_idle_worker_slows_its_tick_and_a_sender_never_wakes_it() {
    let (delivered, inner) = counting_ok();
    let handoff = builder(10, 4).spawn(inner).unwrap();
    // Let the worker start and stay idle past its fast spell.
    run_worker().await;
    let slow_at = Instant::now() + LINGER + TICK * 2;
    while Instant::now() < slow_at {
        time::advance(TICK).await;
        run_worker().await;
    }

    // A lone record does not wake it (no sender pays for a wake-up), and a fast tick's time is
    // not enough any more...
    assert_eq!(handoff.send(0), Sent::Accepted);
    run_worker().await;
    time::advance(TICK * 2).await;
    run_worker().await;
    assert_eq!(delivered.load(Ordering::SeqCst), 0);
    assert_eq!(handoff.counts().queued, 1);

    // ...but the slow tick picks it up.
    time::advance(SLOW_TICK).await;
    run_worker().await;
    assert_eq!(delivered.load(Ordering::SeqCst), 1);

    // Busy again, the worker is back on its fast tick.
    assert_eq!(handoff.send(1), Sent::Accepted);
    run_worker().await;
    time::advance(TICK).await;
    run_worker().await;
    assert_eq!(delivered.load(Ordering::SeqCst), 2);
    assert_quiescent(&handoff.counts());
}

#[tokio::test(start_paused = true)]
async fn a_ticking_worker_wakes_early_when_the_queue_is_half_full() {
    let (delivered, inner) = counting_ok();
    let handoff = builder(10, 4).spawn(inner).unwrap();
    // Freshly started, the worker ticks (it has not been idle for long).
    run_worker().await;

    // Below half full, nobody rings: the records wait for the tick.
    assert_eq!(send_many(&handoff, 0..4), 4);
    run_worker().await;
    assert_eq!(handoff.counts().queued, 4);
    assert_eq!(delivered.load(Ordering::SeqCst), 0);

    // The fifth record makes the queue half full and wakes the worker before the tick.
    assert_eq!(handoff.send(4), Sent::Accepted);
    run_worker().await;
    let counts = handoff.counts();
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 5);

    // A small backlog is picked up by the next tick.
    assert_eq!(send_many(&handoff, 5..7), 2);
    run_worker().await;
    assert_eq!(handoff.counts().queued, 2);
    time::advance(TICK).await;
    run_worker().await;
    let counts = handoff.counts();
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 7);
}

#[tokio::test(start_paused = true)]
async fn an_idle_worker_picks_up_a_single_record_within_one_tick() {
    let handoff = builder(100, 4).spawn(instant_ok::<u32>()).unwrap();
    run_worker().await;
    assert_eq!(handoff.send(1), Sent::Accepted);
    time::advance(TICK).await;
    run_worker().await;
    let counts = handoff.counts();
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 1);
}

// ===== dropping the handles =====

/// A service that says when it is dropped (which happens when the worker task ends).
#[derive(Debug, Clone)]
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Service<u32> for DropFlag {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn records_queued_when_the_last_handle_is_dropped_are_still_delivered() {
    let delivered = Arc::new(AtomicU64::new(0));
    let inner = {
        let delivered = delivered.clone();
        service_fn(move |_: u32| {
            delivered.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        })
    };
    let handoff = builder(16, 2).spawn(inner).unwrap();
    assert_eq!(send_many(&handoff, 0..10), 10);
    drop(handoff);
    for _ in 0..100 {
        run_worker().await;
        time::advance(TICK).await;
    }
    assert_eq!(delivered.load(Ordering::SeqCst), 10);
}

/// Like tower's `Buffer`, the worker should end once no handle can send any more and the queue
/// is drained, instead of ticking forever and keeping the service (a Kafka producer, say) alive.
#[tokio::test(start_paused = true)]
async fn dropping_every_handle_ends_the_worker_and_drops_the_service() {
    let dropped = Arc::new(AtomicBool::new(false));
    let handoff = builder(16, 2).spawn(DropFlag(dropped.clone())).unwrap();
    let clone = handoff.clone();
    assert_eq!(send_many(&handoff, 0..3), 3);
    drop(handoff);
    run_worker().await;
    assert!(!dropped.load(Ordering::SeqCst), "a clone can still send");
    drop(clone);
    for _ in 0..1_000 {
        run_worker().await;
        if dropped.load(Ordering::SeqCst) {
            return;
        }
        time::advance(TICK).await;
    }
    panic!("the worker still runs (and holds the service) 1 s after the last handle was dropped");
}

// ===== configuration =====

#[tokio::test]
async fn invalid_settings_are_refused_with_the_setting_named() {
    let cases = [
        (Handoff::builder().capacity(0), "capacity"),
        (Handoff::builder().capacity(usize::MAX), "capacity"),
        (
            Handoff::builder().capacity(tanker::handoff::MAX_CAPACITY + 1),
            "capacity",
        ),
        (Handoff::builder().concurrency(0), "concurrency"),
    ];
    for (builder, setting) in cases {
        let err = builder
            .spawn(instant_ok::<u32>())
            .expect_err("an invalid setting is refused");
        let config = err.config().expect("a setting is named");
        assert_eq!(config.setting(), setting, "{err}");
        assert!(err.to_string().contains(setting), "{err}");
    }
}

#[tokio::test]
async fn settings_at_the_edges_of_their_range_are_accepted() {
    for builder in [
        Handoff::builder().capacity(1).concurrency(1),
        Handoff::builder().concurrency(usize::MAX),
        Handoff::builder().name(""),
    ] {
        let handoff = builder.spawn(instant_ok::<u32>()).expect("a valid setting");
        assert_eq!(handoff.send(1), Sent::Accepted);
        let report = handoff.close(Duration::from_secs(2)).await;
        assert!(report.drained);
        assert_eq!(report.counts.delivered, 1);
    }
}

#[test]
fn spawn_outside_a_runtime_is_refused_with_its_own_error() {
    let err = Handoff::builder()
        .spawn(instant_ok::<u32>())
        .expect_err("there is no runtime to run the worker");
    assert_eq!(err, tanker::handoff::SpawnError::NoRuntime);
    assert!(err.config().is_none());
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

// ===== types, clones, names =====

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn public_types_are_send_and_sync() {
    assert_send_sync::<Handoff<String>>();
    // A record only has to be `Send`.
    assert_send_sync::<Handoff<Cell<u64>>>();
    assert_send_sync::<HandoffCounts>();
    assert_send_sync::<CloseReport>();
    assert_send_sync::<Sent>();
    assert_send_sync::<HandoffBuilder>();
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_queue_the_counters_and_the_name() {
    let handoff = Handoff::builder()
        .capacity(3)
        .name("stats")
        .spawn(instant_ok::<u32>())
        .unwrap();
    let clone = handoff.clone();
    assert_eq!(clone.name(), "stats");
    assert!(format!("{handoff:?}").contains("stats"));

    assert_eq!(handoff.send(1), Sent::Accepted);
    assert_eq!(clone.send(2), Sent::Accepted);
    assert_eq!(clone.clone().send(3), Sent::Accepted);
    assert_eq!(handoff.send(4), Sent::Dropped, "one queue for all clones");
    assert_eq!(handoff.counts(), clone.counts());
    assert_eq!(clone.counts().accepted, 3);
    assert_eq!(clone.counts().dropped, 1);

    let counts = settle(&clone).await;
    assert_eq!(handoff.counts(), counts);
    assert_eq!(counts.delivered, 3);

    // Closing one closes all.
    assert!(handoff.close(Duration::from_secs(1)).await.drained);
    assert!(clone.is_closed());
    assert_eq!(clone.send(5), Sent::Dropped);
}

#[test]
fn counts_helpers_add_up() {
    // `HandoffCounts` is non-exhaustive: users can only fill a default.
    let mut counts = HandoffCounts::default();
    counts.offered = 20;
    counts.accepted = 15;
    counts.dropped = 5;
    counts.delivered = 6;
    counts.shed = 1;
    counts.rejected = 2;
    counts.failed = 3;
    counts.queued = 2;
    counts.in_flight = 1;
    assert_eq!(counts.pending(), 3);
    assert_eq!(counts.finished(), 12);
    assert_eq!(counts.ignored(), 11);
    assert!(counts.is_balanced());
    let mut unbalanced = counts;
    unbalanced.delivered += 1;
    assert!(!unbalanced.is_balanced());
    let mut unbalanced = counts;
    unbalanced.offered += 1;
    assert!(!unbalanced.is_balanced());
}

// ===== many threads =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_into_a_small_queue_lose_nothing() {
    const THREADS: u64 = 3;
    const TASKS: u64 = 3;
    const PER_SENDER: u64 = 20_000;
    let delivered = Arc::new(AtomicU64::new(0));
    let inner = {
        let delivered = delivered.clone();
        service_fn(move |_: u64| {
            delivered.fetch_add(1, Ordering::Relaxed);
            async {
                tokio::task::yield_now().await;
                Ok::<_, BoxError>(())
            }
        })
    };
    let handoff = Handoff::builder()
        .capacity(16)
        .concurrency(4)
        .spawn(inner)
        .unwrap();

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let handoff = handoff.clone();
            std::thread::spawn(move || send_many(&handoff, t * PER_SENDER..(t + 1) * PER_SENDER))
        })
        .collect();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let handoff = handoff.clone();
            tokio::spawn(async move {
                let mut accepted = 0;
                for chunk in 0..PER_SENDER / 100 {
                    let base = (THREADS + t) * PER_SENDER + chunk * 100;
                    accepted += send_many(&handoff, base..base + 100);
                    tokio::task::yield_now().await;
                }
                accepted
            })
        })
        .collect();

    let mut accepted = 0;
    for thread in threads {
        accepted += thread.join().unwrap();
    }
    for task in tasks {
        accepted += task.await.unwrap();
    }
    let sent = (THREADS + TASKS) * PER_SENDER;

    let report = handoff.close(Duration::from_secs(30)).await;
    assert!(report.drained, "{report:?}");
    let counts = report.counts;
    assert_quiescent(&counts);
    assert_eq!(counts.offered, sent);
    assert_eq!(counts.accepted + counts.dropped, sent);
    assert_eq!(counts.accepted, accepted);
    assert_eq!(counts.delivered, accepted);
    assert_eq!(delivered.load(Ordering::Relaxed), accepted);
    assert!(counts.accepted >= 16, "{counts:?}");
    assert_eq!(handoff.counts(), counts, "nothing moves after close");
}

// `close` racing with eight sender threads: `eight_senders_racing_close_are_counted_exactly`
// in tests/handoff_faults.rs.

/// Waits, without sleeping, until `done` holds; fails after ten seconds of real time.
async fn spin_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_racing_close_are_all_counted_and_the_worker_finishes() {
    // Calls wait for the gate, so the worker stays busy, polling and publishing, after `close`.
    let (gate, opened) = tokio::sync::watch::channel(false);
    let handoff = Handoff::builder()
        .capacity(64)
        .spawn(service_fn(move |_: u64| {
            let mut opened = opened.clone();
            async move {
                let _ = opened.wait_for(|open| *open).await;
                Ok::<_, Infallible>(())
            }
        }))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let handoff = handoff.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut offered = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    handoff.send(offered);
                    offered += 1;
                }
                offered
            })
        })
        .collect();

    spin_until("calls in flight", || handoff.counts().in_flight >= 64).await;
    // Closed, not drained: the calls wait for the gate.
    assert!(!handoff.close(Duration::ZERO).await.drained);
    spin_until("records dropped after close", || {
        handoff.counts().dropped_closed >= 200_000
    })
    .await;
    gate.send(true).unwrap();
    let report = handoff.close(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let offered: u64 = senders.into_iter().map(|s| s.join().unwrap()).sum();

    assert!(report.drained, "{report:?}");
    let counts = handoff.counts();
    assert_eq!(counts.offered, offered);
    assert!(counts.is_balanced(), "{counts:?}");
    assert_eq!(counts.pending(), 0);
    assert_eq!(counts.delivered, counts.accepted);
    assert!(counts.dropped_closed <= counts.dropped, "{counts:?}");
}
