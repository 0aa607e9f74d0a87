//! Parking: what the stack gives back waits in the hand-off instead of being lost. Records refused
//! by an open breaker or a full bulkhead wait (the dependency gets only probes), a dependency
//! fault gets one more try, the queue drops the newest only when full, and records past their
//! maximum age expire. All on paused time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time;
use tower::timeout::error::Elapsed;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

use tanker::breaker::{BreakerHandle, BreakerLayer, BreakerState};
use tanker::bulkhead::BulkheadLayer;
use tanker::handoff::{Handoff, HandoffCounts, Sent};
use tanker::keyed::KeyedLayer;
use tanker::ServiceBuilderExt;

/// Lets the worker run without moving paused time.
async fn run_worker() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

/// Moves paused time by `by`, a millisecond at a time, letting the worker run at each step.
async fn run_for(by: Duration) {
    let steps = by.as_millis() as u64;
    for _ in 0..steps {
        run_worker().await;
        time::advance(Duration::from_millis(1)).await;
    }
    run_worker().await;
}

/// Runs until nothing is pending (at most a minute of paused time).
async fn settle<Req>(handoff: &Handoff<Req>) -> HandoffCounts {
    for _ in 0..60_000 {
        run_worker().await;
        let counts = handoff.counts();
        if counts.pending() == 0 {
            return counts;
        }
        time::advance(Duration::from_millis(1)).await;
    }
    panic!("the hand-off did not settle: {:?}", handoff.counts());
}

/// Both accounting identities, by the crate's own definition (`HandoffCounts::is_balanced`:
/// `offered = accepted + dropped`, `accepted = delivered + expired + shed + rejected + failed +
/// queued + parked + in_flight`).
#[track_caller]
fn assert_identity(counts: &HandoffCounts) {
    assert!(counts.is_balanced(), "{counts:?}");
}

fn send_all(handoff: &Handoff<u32>, records: std::ops::Range<u32>) -> u32 {
    records
        .map(|n| handoff.send(n))
        .filter(|sent| *sent == Sent::Accepted)
        .count() as u32
}

/// A dependency that records the requests it got, in order, and times out (never answers)
/// while `down` is set.
#[derive(Clone, Default)]
struct Dependency {
    seen: Arc<Mutex<Vec<u32>>>,
    calls: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
}

impl Dependency {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn delivered(&self) -> Vec<u32> {
        self.seen.lock().unwrap().clone()
    }
}

/// breaker (five consecutive failures, 1 s cool-down) → 100 ms timeout → `dependency`.
fn stack(
    dependency: &Dependency,
) -> (
    BreakerHandle,
    impl tower::Service<u32, Response = (), Error = BoxError, Future = impl Send> + Send + 'static,
) {
    let breaker = BreakerLayer::builder()
        .consecutive_failures(5)
        .open_for(Duration::from_secs(1))
        .backoff(2.0, Duration::from_secs(1))
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let dependency = dependency.clone();
    let service = ServiceBuilder::new()
        .breaker(breaker)
        .timeout(Duration::from_millis(100))
        .service(service_fn(move |n: u32| {
            let dependency = dependency.clone();
            async move {
                dependency.calls.fetch_add(1, Ordering::SeqCst);
                if dependency.down.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                dependency.seen.lock().unwrap().push(n);
                Ok::<_, BoxError>(())
            }
        }));
    (handle, service)
}

#[tokio::test(start_paused = true)]
async fn records_refused_by_an_open_breaker_wait_and_are_delivered_oldest_first() {
    let dependency = Dependency::default();
    let (breaker, service) = stack(&dependency);
    let handoff = Handoff::builder().capacity(100).spawn(service).unwrap();
    breaker.force_open();

    assert_eq!(send_all(&handoff, 0..20), 20);
    run_for(Duration::from_secs(3)).await;
    let counts = handoff.counts();
    assert_eq!(counts.pending(), 20, "nothing lost while open: {counts:?}");
    assert_eq!(counts.rejected, 0, "{counts:?}");
    assert!(counts.parked >= 1, "the refused record waits: {counts:?}");
    assert_eq!(
        dependency.calls(),
        0,
        "an open breaker keeps every call away"
    );
    assert_identity(&counts);

    breaker.reset();
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 20, "{counts:?}");
    assert_identity(&counts);
    assert_eq!(
        dependency.delivered(),
        (0..20).collect::<Vec<_>>(),
        "oldest first"
    );
}

#[tokio::test(start_paused = true)]
async fn a_sick_dependency_gets_only_probes_and_every_record_is_delivered_after_the_heal() {
    let dependency = Dependency::default();
    let (_breaker, service) = stack(&dependency);
    let handoff = Handoff::builder()
        .capacity(1000)
        .concurrency(8)
        .spawn(service)
        .unwrap();

    dependency.down.store(true, Ordering::SeqCst);
    // 10 s of outage, 10 records a second.
    for second in 0..10 {
        assert_eq!(send_all(&handoff, second * 10..second * 10 + 10), 10);
        run_for(Duration::from_secs(1)).await;
    }
    let during = dependency.calls();
    let counts = handoff.counts();
    // Before the breaker opened: at most the worker's concurrency, plus one more try each for
    // the first failures. Then one probe per cool-down (1 s, plus the probe's 100 ms timeout).
    assert!(
        during <= 8 + 8 + 10,
        "the dependency saw {during} calls in a 10 s outage"
    );
    // A probe is a record, the oldest, which already had its one more try when the calls in
    // flight timed out: each failed probe loses it. That is the whole cost of probing, about one
    // record per probe (one a cool-down plus the probe's timeout: at most 10 in 10 s).
    assert!(counts.failed <= 10, "{counts:?}");
    assert_eq!(counts.pending() + counts.failed, 100, "{counts:?}");

    dependency.down.store(false, Ordering::SeqCst);
    let counts = settle(&handoff).await;
    assert_identity(&counts);
    assert_eq!(
        counts.delivered + counts.failed,
        100,
        "every record delivered but failed probes: {counts:?}"
    );
    assert!(counts.failed <= 10, "{counts:?}");
    assert_eq!(
        counts.rejected + counts.expired + counts.shed,
        0,
        "{counts:?}"
    );
    assert!(
        counts.retried >= 5,
        "the first timeouts got one more try: {counts:?}"
    );
    let mut delivered = dependency.delivered();
    delivered.sort_unstable();
    delivered.dedup();
    assert_eq!(
        delivered.len() as u64,
        counts.delivered,
        "each exactly once"
    );
}

#[tokio::test(start_paused = true)]
async fn delivery_resumes_within_a_cool_down_of_the_heal() {
    let dependency = Dependency::default();
    let (breaker, service) = stack(&dependency);
    let handoff = Handoff::builder().capacity(1000).spawn(service).unwrap();

    dependency.down.store(true, Ordering::SeqCst);
    assert_eq!(send_all(&handoff, 0..50), 50);
    run_for(Duration::from_secs(20)).await;
    assert_ne!(breaker.state(), BreakerState::Closed);

    dependency.down.store(false, Ordering::SeqCst);
    let healed = time::Instant::now();
    let counts = settle(&handoff).await;
    // The cool-down is capped at 1 s; then a probe succeeds and the backlog drains.
    assert!(
        healed.elapsed() <= Duration::from_millis(1200),
        "{:?}",
        healed.elapsed()
    );
    // Every record but the failed probes (about one per probe: at most 20 in 20 s).
    assert_eq!(counts.delivered + counts.failed, 50, "{counts:?}");
    assert!(counts.failed <= 20, "{counts:?}");
    assert_identity(&counts);
}

#[tokio::test(start_paused = true)]
async fn the_queue_drops_the_newest_only_when_full() {
    let dependency = Dependency::default();
    let (breaker, service) = stack(&dependency);
    let handoff = Handoff::builder()
        .capacity(10)
        .concurrency(4)
        .spawn(service)
        .unwrap();
    breaker.force_open();

    let accepted = send_all(&handoff, 0..10);
    assert_eq!(accepted, 10, "room for every record so far");
    run_for(Duration::from_millis(50)).await;
    // The worker parked what the breaker refused. Nothing is delivered anywhere, so this one
    // domain may use the whole capacity (a domain is held to half only while others deliver).
    // Parked and queued records share the one capacity: the queue's freed places are no room.
    let counts = handoff.counts();
    assert_eq!((counts.parked, counts.rejected), (10, 0), "{counts:?}");
    let more = send_all(&handoff, 10..40);
    let counts = handoff.counts();
    assert_eq!(more, 0, "{counts:?}");
    assert_eq!(counts.dropped, 30, "the newest are dropped: {counts:?}");
    run_for(Duration::from_millis(500)).await;
    assert_eq!(send_all(&handoff, 40..50), 0, "still full");
    assert_identity(&handoff.counts());

    breaker.reset();
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 10, "{counts:?}");
    // What parked is the oldest.
    assert_eq!(dependency.delivered(), (0..10).collect::<Vec<_>>());
    assert_identity(&counts);
}

#[tokio::test(start_paused = true)]
async fn records_older_than_max_age_expire_unsent() {
    let dependency = Dependency::default();
    let (breaker, service) = stack(&dependency);
    let handoff = Handoff::builder()
        .max_age(Duration::from_secs(2))
        .spawn(service)
        .unwrap();
    breaker.force_open();
    assert_eq!(send_all(&handoff, 0..5), 5);
    run_for(Duration::from_secs(1)).await;
    assert_eq!(send_all(&handoff, 5..8), 3);
    run_for(Duration::from_millis(1500)).await;

    breaker.reset();
    let counts = settle(&handoff).await;
    assert_eq!(
        counts.expired, 5,
        "the first five are 2.5 s old: {counts:?}"
    );
    assert_eq!(counts.delivered, 3, "{counts:?}");
    assert_eq!(dependency.delivered(), vec![5, 6, 7]);
    assert_identity(&counts);
}

/// What the worker finishes or starts in one turn before it yields its thread (its `BUDGET`).
const WORKER_BUDGET: u64 = 1024;

/// Records past their maximum age take the worker's per-turn budget like any other record: a
/// large expired backlog is counted over several turns, and other tasks run in between, instead
/// of one turn holding the thread for all of it.
///
/// Built so that it cannot hang: an observer task looks at the counts once per poll and wakes
/// itself at once, a bounded number of times. On a current-thread runtime, a task that wakes
/// itself goes to the back of the run queue, so the observer and the worker (which also wakes
/// itself when its budget runs out) take turns; nothing here waits for the worker to finish.
#[tokio::test(start_paused = true)]
async fn expiry_takes_the_workers_budget_and_yields_between_turns() {
    const BACKLOG: u64 = 3000;
    let gate = Arc::new(tokio::sync::Notify::new());
    let service = {
        let gate = gate.clone();
        service_fn(move |n: u64| {
            let gate = gate.clone();
            async move {
                if n == 0 {
                    gate.notified().await;
                }
                Ok::<_, BoxError>(())
            }
        })
    };
    let handoff = Handoff::builder()
        .max_age(Duration::from_secs(2))
        .concurrency(1)
        .spawn(service)
        .unwrap();

    // The first record holds the worker's only call, so the backlog waits in the queue.
    assert_eq!(handoff.send(0), Sent::Accepted);
    run_worker().await;
    assert_eq!(handoff.counts().in_flight, 1, "{:?}", handoff.counts());
    for n in 1..=BACKLOG {
        assert_eq!(handoff.send(n), Sent::Accepted);
    }
    time::advance(Duration::from_millis(2100)).await;
    run_worker().await;
    let before = handoff.counts();
    assert_eq!((before.queued, before.expired), (BACKLOG, 0), "{before:?}");

    // The call ends: the worker's next turns find the whole backlog expired.
    gate.notify_one();
    let observer = tokio::spawn({
        let handoff = handoff.clone();
        let mut seen = Vec::new();
        std::future::poll_fn(move |cx| {
            seen.push(handoff.counts().expired);
            if seen.len() == 16 {
                return std::task::Poll::Ready(std::mem::take(&mut seen));
            }
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        })
    });
    let seen = observer.await.unwrap();

    let steps: Vec<u64> = seen.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        steps.iter().all(|&step| step <= WORKER_BUDGET),
        "a turn counted more than its budget: {seen:?}"
    );
    assert!(
        seen.iter().any(|&n| 0 < n && n < BACKLOG),
        "the observer ran between two of the worker's turns: {seen:?}"
    );
    let counts = settle(&handoff).await;
    assert_eq!(
        (counts.expired, counts.delivered),
        (BACKLOG, 1),
        "{counts:?}"
    );
    assert_identity(&counts);
}

#[tokio::test(start_paused = true)]
async fn a_dependency_fault_gets_exactly_one_more_try() {
    let dependency = Dependency::default();
    dependency.down.store(true, Ordering::SeqCst);
    let dep = dependency.clone();
    // No breaker: every try times out.
    let service = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .service(service_fn(move |_: u32| {
            let dep = dep.clone();
            async move {
                dep.calls.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Ok::<_, BoxError>(())
            }
        }));
    let handoff = Handoff::builder().spawn(service).unwrap();
    assert_eq!(send_all(&handoff, 0..10), 10);
    let counts = settle(&handoff).await;
    assert_eq!(counts.failed, 10, "{counts:?}");
    assert_eq!(counts.retried, 10, "{counts:?}");
    assert_eq!(dependency.calls(), 20, "two tries each, no more");
    assert_identity(&counts);
}

/// A dependency that never answers, behind a 100 ms tower timeout (a dependency fault each
/// call), and the number of calls it was given.
fn hung_behind_a_timeout() -> (
    Arc<AtomicU64>,
    impl Service<u32, Response = (), Error = BoxError, Future: Send> + Send + 'static,
) {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let service = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .service(service_fn(move |_: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<(), BoxError>>()
        }));
    (calls, service)
}

#[tokio::test(start_paused = true)]
async fn retry_failed_off_makes_a_dependency_fault_final() {
    let (calls, service) = hung_behind_a_timeout();
    let handoff = Handoff::builder()
        .retry_failed(false)
        .spawn(service)
        .unwrap();
    assert_eq!(send_all(&handoff, 0..10), 10);
    let counts = settle(&handoff).await;
    assert_eq!((counts.failed, counts.retried), (10, 0), "{counts:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn a_callers_fault_is_never_retried() {
    #[derive(Debug)]
    struct TooLarge;
    impl std::fmt::Display for TooLarge {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("record too large")
        }
    }
    impl std::error::Error for TooLarge {}

    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let service = service_fn(move |_: u32| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), BoxError>(TooLarge.into()) }
    });
    let handoff = Handoff::builder().spawn(service).unwrap();
    assert_eq!(send_all(&handoff, 0..10), 10);
    let counts = settle(&handoff).await;
    assert_eq!((counts.failed, counts.retried), (10, 0), "{counts:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn parking_off_counts_refusals_at_once() {
    let dependency = Dependency::default();
    let (breaker, service) = stack(&dependency);
    let handoff = Handoff::builder().park(false).spawn(service).unwrap();
    breaker.force_open();
    assert_eq!(send_all(&handoff, 0..10), 10);
    let counts = settle(&handoff).await;
    assert_eq!((counts.rejected, counts.parked), (10, 0), "{counts:?}");
    assert_identity(&counts);
}

#[tokio::test(start_paused = true)]
async fn a_max_age_of_a_millisecond_or_less_is_refused() {
    let service = service_fn(|_: u32| async { Ok::<_, BoxError>(()) });
    let err = Handoff::builder()
        .max_age(Duration::from_millis(1))
        .spawn(service)
        .unwrap_err();
    assert_eq!(err.config().unwrap().setting(), "max_age");
    assert!(err.to_string().contains("Duration::MAX"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn closing_drains_parked_records_once_the_dependency_takes_them() {
    let dependency = Dependency::default();
    let (breaker, service) = stack(&dependency);
    let handoff = Handoff::builder().spawn(service).unwrap();
    breaker.force_open();
    assert_eq!(send_all(&handoff, 0..5), 5);
    run_for(Duration::from_millis(10)).await;

    let closing = tokio::spawn({
        let handoff = handoff.clone();
        async move { handoff.close(Duration::from_secs(10)).await }
    });
    run_for(Duration::from_secs(1)).await;
    assert!(!closing.is_finished(), "still waiting for the breaker");
    breaker.reset();
    run_for(Duration::from_millis(10)).await;
    let report = closing.await.unwrap();
    assert!(report.drained, "{report:?}");
    assert_eq!(report.counts.delivered, 5);
    assert_identity(&report.counts);
}

#[tokio::test(start_paused = true)]
async fn a_byte_budget_drops_what_would_not_fit_and_gets_its_bytes_back() {
    let dependency = Dependency::default();
    let (breaker, service) = stack(&dependency);
    // Each record weighs its own value, in bytes.
    let handoff = Handoff::builder()
        .max_bytes(100, |n: &u32| *n as usize)
        .spawn(service)
        .unwrap();
    breaker.force_open();

    assert_eq!(handoff.send(40), Sent::Accepted);
    assert_eq!(handoff.send(40), Sent::Accepted);
    assert_eq!(
        handoff.send(40),
        Sent::Dropped,
        "120 bytes would not fit in 100"
    );
    assert_eq!(handoff.send(20), Sent::Accepted, "100 bytes do");
    assert_eq!(
        handoff.send(101),
        Sent::Dropped,
        "heavier than the budget alone"
    );
    run_for(Duration::from_secs(2)).await;
    let counts = handoff.counts();
    assert_eq!((counts.bytes, counts.dropped), (100, 2), "{counts:?}");
    assert_identity(&counts);

    breaker.reset();
    let counts = settle(&handoff).await;
    assert_eq!((counts.delivered, counts.bytes), (3, 0), "{counts:?}");
    assert_eq!(
        handoff.send(100),
        Sent::Accepted,
        "the budget is whole again"
    );
    let counts = settle(&handoff).await;
    assert_eq!((counts.delivered, counts.bytes), (4, 0), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn expired_and_failed_records_give_their_bytes_back() {
    let (_calls, service) = hung_behind_a_timeout();
    let handoff = Handoff::builder()
        .max_bytes(1000, |n: &u32| *n as usize)
        .spawn(service)
        .unwrap();
    for _ in 0..10 {
        assert_eq!(handoff.send(100), Sent::Accepted);
    }
    assert_eq!(handoff.send(1), Sent::Dropped, "the budget is spent");
    let counts = settle(&handoff).await;
    assert_eq!((counts.failed, counts.bytes), (10, 0), "{counts:?}");
    assert_eq!(handoff.send(1000), Sent::Accepted);
}

#[test]
fn a_byte_budget_of_zero_is_refused() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let service = service_fn(|_: u32| async { Ok::<_, BoxError>(()) });
    let err = Handoff::builder()
        .max_bytes(0, |n: &u32| *n as usize)
        .spawn(service)
        .unwrap_err();
    assert_eq!(err.config().unwrap().setting(), "max_bytes");
}

#[tokio::test(start_paused = true)]
async fn records_flow_again_soon_after_a_half_open_breaker_closes_early() {
    // A dependency that holds every call while it is down and answers them all when it heals,
    // behind a breaker whose probe may take 10 s: a refusal while the probe runs says "come
    // back in up to 10 s", but the probe succeeds at the heal.
    let (heal, healed) = tokio::sync::watch::channel(false);
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let breaker = BreakerLayer::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_millis(500))
        .probe_timeout(Duration::from_secs(10))
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let service = ServiceBuilder::new()
        .breaker(breaker)
        .service(service_fn(move |n: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut healed = healed.clone();
            async move {
                if n == 0 {
                    return Err::<(), BoxError>("the first call fails: the breaker opens".into());
                }
                healed.wait_for(|up| *up).await.map_err(BoxError::from)?;
                Ok(())
            }
        }));
    let handoff = Handoff::builder()
        .retry_failed(false)
        .spawn(service)
        .unwrap();
    assert_eq!(send_all(&handoff, 0..20), 20);
    run_for(Duration::from_secs(3)).await;
    assert_eq!(handle.state(), BreakerState::HalfOpen, "a probe hangs");
    let before = calls.load(Ordering::SeqCst);

    heal.send(true).unwrap();
    let healed_at = time::Instant::now();
    let counts = settle(&handoff).await;
    assert!(
        healed_at.elapsed() <= Duration::from_millis(200),
        "delivery resumed {:?} after the heal, not after the probe's 10 s",
        healed_at.elapsed()
    );
    assert_eq!((counts.delivered, counts.failed), (19, 1), "{counts:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst) - before,
        18,
        "each parked record sent once"
    );
    assert_identity(&counts);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_weight_function_drops_the_record_and_leaves_nothing_behind() {
    let service = service_fn(|_: u32| async { Ok::<_, BoxError>(()) });
    let handoff = Handoff::builder()
        .max_bytes(100, |n: &u32| {
            assert!(*n != 7, "no weight for seven");
            1
        })
        .spawn(service)
        .unwrap();
    assert_eq!(handoff.send(1), Sent::Accepted);
    assert_eq!(handoff.send(7), Sent::Dropped);
    assert_eq!(handoff.send(2), Sent::Accepted);
    let report = handoff.close(Duration::from_secs(1)).await;
    assert!(report.drained, "{report:?}");
    assert_eq!((report.counts.delivered, report.counts.dropped), (2, 1));
    assert_eq!(report.counts.bytes, 0);
    assert_identity(&report.counts);
}

#[tokio::test(start_paused = true)]
async fn a_forced_open_breaker_is_looked_at_ten_times_a_second_not_a_thousand() {
    let dependency = Dependency::default();
    let (breaker, service) = stack(&dependency);
    let handoff = Handoff::builder().spawn(service).unwrap();
    breaker.force_open();
    assert_eq!(send_all(&handoff, 0..5), 5);
    run_for(Duration::from_secs(2)).await;
    let rejected = breaker.counts().rejected;
    assert!(
        (10..=25).contains(&rejected),
        "{rejected} refusals in 2 s: the worker offers the oldest record again every 100 ms"
    );
    breaker.reset();
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 5, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_dies_outside_the_guarded_calls_closes_the_handoff() {
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("a response that panics when dropped");
            }
        }
    }
    let service = service_fn(|_: u32| async { Ok::<_, BoxError>(Bomb) });
    let handoff = Handoff::builder().spawn(service).unwrap();
    assert_eq!(handoff.send(1), Sent::Accepted);
    run_for(Duration::from_millis(10)).await;
    let report = time::timeout(
        Duration::from_millis(100),
        handoff.close(Duration::from_secs(60)),
    )
    .await
    .expect("close returns at once: the worker is gone");
    assert!(handoff.is_closed());
    assert_eq!(handoff.send(2), Sent::Dropped);
    assert_eq!(report.counts.offered, 1);
}

// ===== Parking per failure domain, and issue 10's leftovers =====

/// What a dependency was given, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u32>>>);

impl Seen {
    fn push(&self, n: u32) {
        self.0.lock().unwrap().push(n);
    }

    fn all(&self) -> Vec<u32> {
        self.0.lock().unwrap().clone()
    }

    fn of(&self, parity: u32) -> Vec<u32> {
        self.all().into_iter().filter(|n| n % 2 == parity).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusing_domain_parks_only_its_records_and_the_other_flows_in_order() {
    // Two domains: even records go to key 0, odd ones to key 1, each with its own breaker.
    let per_key = KeyedLayer::builder(|n: &u32| n % 2)
        .breaker(BreakerLayer::builder().jitter(0.0))
        .build()
        .unwrap();
    let keys = per_key.handle();
    let seen = Seen::default();
    let dependency = {
        let seen = seen.clone();
        service_fn(move |n: u32| {
            seen.push(n);
            async move { Ok::<_, BoxError>(()) }
        })
    };
    let stack = ServiceBuilder::new().layer(per_key).service(dependency);
    let handoff = Handoff::builder().capacity(1000).spawn(stack).unwrap();
    assert_eq!(handoff.send(0), Sent::Accepted);
    assert_eq!(handoff.send(1), Sent::Accepted);
    settle(&handoff).await;
    let sick = keys.get(&1).unwrap().breaker().clone();
    sick.force_open();

    // 200 ms at 2 records a millisecond: the healthy key's records are delivered as they come.
    let mut n = 2;
    for _ in 0..200 {
        assert_eq!(handoff.send(n), Sent::Accepted);
        assert_eq!(handoff.send(n + 1), Sent::Accepted);
        n += 2;
        run_for(Duration::from_millis(2)).await;
        let counts = handoff.counts();
        assert!(counts.is_balanced(), "{counts:?}");
        let evens: Vec<u32> = (0..n).step_by(2).collect();
        assert_eq!(seen.of(0), evens, "the healthy domain keeps up, in order");
        assert_eq!(seen.of(1), [1], "the refusing domain gets nothing");
        assert_eq!(counts.parked, u64::from(n / 2 - 1), "{counts:?}");
        assert_eq!(counts.rejected, 0, "{counts:?}");
    }

    // The breaker closes: its records go, oldest first, and every one is delivered.
    sick.reset();
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, u64::from(n), "{counts:?}");
    let odds: Vec<u32> = (1..n).step_by(2).collect();
    assert_eq!(seen.of(1), odds, "oldest first");
}

#[tokio::test(start_paused = true)]
async fn a_cluster_wide_refusal_parks_everything_behind_one_pause() {
    let breaker = BreakerLayer::builder().jitter(0.0).build().unwrap();
    let handle = breaker.handle();
    let calls = Arc::new(AtomicU64::new(0));
    let seen = Seen::default();
    let stack = {
        let (calls, seen) = (calls.clone(), seen.clone());
        ServiceBuilder::new()
            .breaker(breaker)
            .service(service_fn(move |n: u32| {
                calls.fetch_add(1, Ordering::SeqCst);
                seen.push(n);
                async move { Ok::<_, BoxError>(()) }
            }))
    };
    let handoff = Handoff::builder().capacity(1000).spawn(stack).unwrap();
    handle.force_open();
    for n in 0..300 {
        assert_eq!(handoff.send(n), Sent::Accepted);
        if n % 10 == 0 {
            run_for(Duration::from_millis(3)).await;
        }
    }
    run_for(Duration::from_secs(1)).await;
    let counts = handoff.counts();
    assert!(counts.is_balanced(), "{counts:?}");
    assert_eq!(counts.parked, 300, "every record parks: {counts:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    handle.reset();
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 300, "{counts:?}");
    assert_eq!(seen.all(), (0..300).collect::<Vec<_>>(), "oldest first");
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_full_of_others_calls_is_not_retried_every_millisecond() {
    let bulkhead = BulkheadLayer::new(1).unwrap();
    let compartment = bulkhead.handle();
    let release = Arc::new(tokio::sync::Notify::new());
    let dependency = {
        let release = release.clone();
        service_fn(move |n: u32| {
            let release = release.clone();
            async move {
                if n == u32::MAX {
                    release.notified().await;
                }
                Ok::<_, BoxError>(())
            }
        })
    };
    let mut stack = ServiceBuilder::new().layer(bulkhead).service(dependency);
    // Someone else holds the only slot.
    let other = tokio::spawn(stack.ready().await.unwrap().call(u32::MAX));
    run_worker().await;
    let handoff = Handoff::builder().spawn(stack).unwrap();
    assert_eq!(handoff.send(1), Sent::Accepted);
    run_for(Duration::from_secs(1)).await;
    let sheds = compartment.counts().shed;
    // 1, 2, 4 ... 64 ms, then every 100 ms: about 16 in a second, not a thousand.
    assert!((5..=25).contains(&sheds), "{sheds} sheds in a second");
    assert_eq!(handoff.counts().parked, 1);

    release.notify_one();
    other.await.unwrap().unwrap();
    run_for(Duration::from_millis(101)).await;
    let counts = handoff.counts();
    assert_eq!(
        counts.delivered, 1,
        "delivered once a slot is free: {counts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_full_of_our_own_calls_waits_for_one_to_end() {
    let bulkhead = BulkheadLayer::new(1).unwrap();
    let compartment = bulkhead.handle();
    let stack = ServiceBuilder::new()
        .layer(bulkhead)
        .service(service_fn(|_: u32| async {
            time::sleep(Duration::from_millis(10)).await;
            Ok::<_, BoxError>(())
        }));
    let handoff = Handoff::builder().concurrency(4).spawn(stack).unwrap();
    for n in 0..4 {
        assert_eq!(handoff.send(n), Sent::Accepted);
    }
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 4, "{counts:?}");
    // Each parked record is tried again when a call of ours ends, not every millisecond: with
    // 10 ms calls, a shed per millisecond would be about 30.
    let sheds = compartment.counts().shed;
    assert!(sheds <= 8, "{sheds} sheds");
}

#[tokio::test(start_paused = true)]
async fn the_one_more_try_waits_for_the_dependency_to_look_healthy() {
    let calls = Arc::new(AtomicU64::new(0));
    let failed_once = Arc::new(AtomicBool::new(false));
    let stack = {
        let (calls, failed_once) = (calls.clone(), failed_once.clone());
        service_fn(move |n: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            let fail = n == 0 && !failed_once.swap(true, Ordering::SeqCst);
            async move {
                if fail {
                    return Err::<(), BoxError>(Box::new(Elapsed::new()));
                }
                Ok(())
            }
        })
    };
    let handoff = Handoff::builder().spawn(stack).unwrap();
    assert_eq!(handoff.send(0), Sent::Accepted);
    run_for(Duration::from_millis(50)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not tried again at once");
    assert_eq!(handoff.counts().parked, 1);
    // A success says the dependency is back: the faulted record follows it.
    assert_eq!(handoff.send(1), Sent::Accepted);
    run_for(Duration::from_millis(5)).await;
    let counts = handoff.counts();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!((counts.delivered, counts.retried), (2, 1), "{counts:?}");

    // With no success to follow, it goes after 100 ms.
    failed_once.store(false, Ordering::SeqCst);
    assert_eq!(handoff.send(0), Sent::Accepted);
    run_for(Duration::from_millis(90)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    run_for(Duration::from_millis(20)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(settle(&handoff).await.delivered, 3);
}

#[tokio::test(start_paused = true)]
async fn failed_probes_cost_one_more_try_not_a_record() {
    let down = Arc::new(AtomicBool::new(true));
    let probes = Arc::new(AtomicU64::new(0));
    let breaker = BreakerLayer::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_millis(100))
        .backoff(2.0, Duration::from_millis(400))
        .jitter(0.0)
        .build()
        .unwrap();
    let stack = {
        let (down, probes) = (down.clone(), probes.clone());
        ServiceBuilder::new()
            .breaker(breaker)
            .service(service_fn(move |_: u32| {
                let down = down.load(Ordering::SeqCst);
                probes.fetch_add(u64::from(down), Ordering::SeqCst);
                async move {
                    if down {
                        return Err::<(), BoxError>(Box::new(Elapsed::new()));
                    }
                    Ok(())
                }
            }))
    };
    let handoff = Handoff::builder().spawn(stack).unwrap();
    for n in 0..20 {
        assert_eq!(handoff.send(n), Sent::Accepted);
    }
    run_for(Duration::from_secs(3)).await;
    let failed_calls = probes.load(Ordering::SeqCst);
    assert!(
        failed_calls >= 5,
        "{failed_calls} failed calls: the breaker probed"
    );
    down.store(false, Ordering::SeqCst);
    let counts = settle(&handoff).await;
    // Each failed call used up a record's one more try, never a record: all are delivered.
    assert_eq!(counts.failed, 0, "{counts:?}");
    assert_eq!(counts.delivered, 20, "{counts:?}");
    assert_eq!(counts.retried, failed_calls, "{counts:?}");
}

/// A request that counts its clones.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::SeqCst);
        Self(self.0.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn with_parking_and_retries_off_a_record_is_never_cloned() {
    let clones = Arc::new(AtomicUsize::new(0));
    let handoff = Handoff::builder()
        .park(false)
        .retry_failed(false)
        .spawn(service_fn(|_: Counted| async { Ok::<_, BoxError>(()) }))
        .unwrap();
    for _ in 0..10 {
        assert_eq!(handoff.send(Counted(clones.clone())), Sent::Accepted);
    }
    assert_eq!(settle(&handoff).await.delivered, 10);
    assert_eq!(clones.load(Ordering::SeqCst), 0);
}

// ===== The review's findings on the hand-off (branch handoff-fixes) =====

/// Two domains: even records go to key 0, odd ones to key 1, each with its own breaker and a
/// compartment of `slots`; `hang` tells which records never answer. Returns the keyed handle.
#[allow(clippy::type_complexity)]
fn two_domains(
    slots: usize,
    seen: &Seen,
    hang: fn(u32) -> bool,
) -> (
    tanker::keyed::KeyedHandle<u32, tanker::breaker::ErrorsAsFailures>,
    impl tower::Service<u32, Response = (), Error = BoxError, Future = impl Send> + Send + 'static,
) {
    let per_key = KeyedLayer::builder(|n: &u32| n % 2)
        .bulkhead(BulkheadLayer::builder().max_in_flight(slots))
        .breaker(BreakerLayer::builder().jitter(0.0))
        .build()
        .unwrap();
    let keys = per_key.handle();
    let seen = seen.clone();
    let dependency = service_fn(move |n: u32| {
        let seen = seen.clone();
        async move {
            if hang(n) {
                std::future::pending::<()>().await;
            }
            seen.push(n);
            Ok::<_, BoxError>(())
        }
    });
    (
        keys,
        ServiceBuilder::new().layer(per_key).service(dependency),
    )
}

/// `dependency` behind a breaker with the defaults, and the breaker's handle.
fn behind_a_breaker<S>(dependency: S) -> (BreakerHandle, tanker::breaker::Breaker<S>) {
    let breaker = BreakerLayer::builder().build().unwrap();
    (
        breaker.handle(),
        ServiceBuilder::new().breaker(breaker).service(dependency),
    )
}

#[tokio::test(start_paused = true)]
async fn a_backlog_past_max_age_expires_at_once_not_one_probe_at_a_time() {
    let (handle, stack) = behind_a_breaker(service_fn(|_: u32| async { Ok::<_, BoxError>(()) }));
    let handoff = Handoff::builder()
        .capacity(1000)
        .max_age(Duration::from_secs(2))
        .spawn(stack)
        .unwrap();
    handle.force_open();
    assert_eq!(send_all(&handoff, 0..200), 200);
    run_for(Duration::from_millis(1800)).await;
    assert_eq!(handoff.counts().parked, 200);
    // Past two seconds, the whole backlog expires while the domain still refuses (it used to
    // go one record per probe, ten a second, and hold the lot meanwhile).
    run_for(Duration::from_millis(400)).await;
    let counts = handoff.counts();
    assert_identity(&counts);
    assert_eq!((counts.expired, counts.parked), (200, 0), "{counts:?}");
    handle.reset();
    assert_eq!(send_all(&handoff, 200..210), 10);
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 10, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_sick_domain_parks_at_most_half_the_lot_and_the_others_keep_flowing() {
    let seen = Seen::default();
    let (keys, stack) = two_domains(1024, &seen, |_| false);
    let handoff = Handoff::builder().capacity(100).spawn(stack).unwrap();
    assert_eq!(send_all(&handoff, 0..2), 2);
    settle(&handoff).await;
    let sick = keys.get(&1).unwrap().breaker().clone();
    sick.force_open();
    // 150 records per domain: the sick one's first 50 park, its other 100 are rejected (a full
    // lot would stop the worker, and the queue would drop the healthy domain's records too).
    let mut n = 2;
    for _ in 0..150 {
        assert_eq!(send_all(&handoff, n..n + 2), 2);
        n += 2;
        run_for(Duration::from_millis(1)).await;
    }
    let counts = handoff.counts();
    assert_identity(&counts);
    assert_eq!((counts.parked, counts.rejected), (50, 100), "{counts:?}");
    assert_eq!(counts.dropped, 0, "{counts:?}");
    assert_eq!(seen.of(0), (0..n).step_by(2).collect::<Vec<_>>());
    sick.reset();
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 2 + 150 + 50, "{counts:?}");
    assert_eq!(seen.of(1)[..3], [1, 3, 5], "the parked ones, oldest first");
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_panics_in_call_does_not_strand_its_domain() {
    let (handle, stack) = behind_a_breaker(service_fn(|n: u32| {
        assert_ne!(n, 0, "record 0 makes the call panic");
        async { Ok::<_, BoxError>(()) }
    }));
    let handoff = Handoff::builder().spawn(stack).unwrap();
    handle.force_open();
    assert_eq!(send_all(&handoff, 0..5), 5);
    run_for(Duration::from_millis(500)).await;
    assert_eq!(handoff.counts().parked, 5);
    // Record 0 is the first probe: its call panics; the bay waits and probes again.
    handle.reset();
    run_for(Duration::from_millis(500)).await;
    let counts = handoff.counts();
    assert_identity(&counts);
    assert_eq!((counts.delivered, counts.failed), (4, 1), "{counts:?}");
    assert_eq!(counts.pending(), 0, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn calls_ending_in_a_healthy_domain_do_not_each_retry_a_full_compartment() {
    let seen = Seen::default();
    // Key 1's compartment has one slot, taken by a call of ours that never ends.
    let (keys, stack) = two_domains(1, &seen, |n| n == 1);
    let handoff = Handoff::builder().spawn(stack).unwrap();
    assert_eq!(send_all(&handoff, 1..2), 1);
    run_for(Duration::from_millis(1)).await;
    assert_eq!(send_all(&handoff, 3..4), 1);
    run_for(Duration::from_millis(1)).await;
    assert_eq!(handoff.counts().parked, 1);
    // A second of the healthy domain's records, one a millisecond, each a call that ends.
    for n in 0..1000 {
        assert_eq!(handoff.send(n * 2), Sent::Accepted);
        run_for(Duration::from_millis(1)).await;
    }
    assert_eq!(seen.of(0).len(), 1000);
    // 1, 2, 4 ... 64 ms, then every 100 ms: about 16, not one per call that ended elsewhere.
    let sheds = keys.get(&1).unwrap().bulkhead().counts().shed;
    assert!((5..=25).contains(&sheds), "{sheds} sheds");
    assert_eq!(handoff.counts().parked, 1);
}

/// Each record's first call yields once and then times out, the second succeeds; after a
/// timeout the service is not ready twice (it wakes its caller at once each time), so that the
/// worker yields and polls again with records waiting for their one more try.
#[derive(Clone, Default)]
struct FailsOnce {
    tried: Arc<Mutex<Vec<u32>>>,
    stall: Arc<AtomicU64>,
}

impl Service<u32> for FailsOnce {
    type Response = ();
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        let stalled = self
            .stall
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if stalled.is_ok() {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u32) -> Self::Future {
        let first = {
            let mut tried = self.tried.lock().unwrap();
            let first = !tried.contains(&n);
            tried.push(n);
            first
        };
        let stall = self.stall.clone();
        Box::pin(async move {
            if !first {
                return Ok(());
            }
            tokio::task::yield_now().await;
            stall.store(2, Ordering::SeqCst);
            Err(Box::new(Elapsed::new()) as BoxError)
        })
    }
}

/// A runtime without the time driver (no `enable_time`): no timer may be armed there.
#[test]
fn a_dependency_fault_on_a_runtime_without_timers_is_retried_and_the_worker_lives() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let handoff = Handoff::builder().spawn(FailsOnce::default()).unwrap();
        assert_eq!(send_all(&handoff, 0..2), 2);
        run_worker().await;
        let counts = handoff.counts();
        assert!(!handoff.is_closed(), "the worker died: {counts:?}");
        assert_eq!((counts.delivered, counts.retried), (2, 2), "{counts:?}");
    });
}
