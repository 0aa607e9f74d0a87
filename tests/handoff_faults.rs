//! The hand-off under faults of the stack and of its user: panics at every place the worker runs
//! user code, refusals wrapped by other layers, a bulkhead smaller than the worker's concurrency,
//! extreme settings, a runtime without timers, and many senders racing `close`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time;
use tower::{service_fn, BoxError, Service, ServiceBuilder};

use tanker::breaker::BreakerLayer;
use tanker::bulkhead::BulkheadLayer;
use tanker::handoff::{Handoff, HandoffCounts, Sent, SpawnError, MAX_CAPACITY};
use tanker::ServiceBuilderExt;

mod support;

use support::Wrapped;

/// Lets the worker run and paused time move a tick at a time until nothing is pending.
async fn settle<Req>(handoff: &Handoff<Req>) -> HandoffCounts {
    for _ in 0..10_000 {
        for _ in 0..32 {
            tokio::task::yield_now().await;
        }
        let counts = handoff.counts();
        if counts.pending() == 0 {
            return counts;
        }
        time::advance(Duration::from_millis(1)).await;
    }
    panic!("the hand-off did not settle: {:?}", handoff.counts());
}

#[track_caller]
fn assert_balanced_and_quiet(counts: &HandoffCounts) {
    assert!(counts.is_balanced(), "{counts:?}");
    assert_eq!(counts.pending(), 0, "{counts:?}");
}

/// Closes the hand-off, checks that it drained with every record counted, and returns the counts.
async fn close_drained<Req>(handoff: &Handoff<Req>) -> HandoffCounts {
    let report = handoff.close(Duration::from_secs(1)).await;
    assert!(report.drained, "{report:?}");
    assert_balanced_and_quiet(&report.counts);
    report.counts
}

fn send_all<Req>(handoff: &Handoff<Req>, requests: impl IntoIterator<Item = Req>) -> u64 {
    requests
        .into_iter()
        .map(|request| handoff.send(request))
        .filter(|sent| *sent == Sent::Accepted)
        .count() as u64
}

// ===== panics =====

/// Where [`Panicky`] panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PanicAt {
    /// In `poll_ready`, from the given poll on (counting from 0).
    PollReady(u64),
    /// In `call`, for this request.
    Call(u32),
    /// In the response future, for this request.
    Future(u32),
}

/// A dependency that answers at once, except that it panics at one place.
#[derive(Clone)]
struct Panicky {
    at: PanicAt,
    polls: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl Panicky {
    fn new(at: PanicAt) -> Self {
        Self {
            at,
            polls: Arc::default(),
            calls: Arc::default(),
        }
    }
}

impl Service<u32> for Panicky {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let poll = self.polls.fetch_add(1, Ordering::SeqCst);
        if let PanicAt::PollReady(from) = self.at {
            assert!(poll < from, "poll_ready blew up");
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        assert!(self.at != PanicAt::Call(request), "call blew up");
        let at = self.at;
        Box::pin(async move {
            assert!(at != PanicAt::Future(request), "the future blew up");
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_poll_ready_closes_the_handoff_and_counts_every_record() {
    let service = Panicky::new(PanicAt::PollReady(3));
    let handoff = Handoff::builder()
        .capacity(16)
        .concurrency(1)
        .spawn(service.clone())
        .unwrap();

    assert_eq!(send_all(&handoff, 0..10), 10);
    let counts = settle(&handoff).await;
    assert_balanced_and_quiet(&counts);
    assert_eq!(counts.delivered, 3, "the first three polls were fine");
    assert_eq!(
        counts.failed, 7,
        "the record being started and the queued ones fail"
    );
    assert_eq!(
        service.polls.load(Ordering::SeqCst),
        4,
        "not polled after it panicked"
    );
    assert!(handoff.is_closed());

    // Later records are dropped and counted, and close returns at once, drained.
    assert_eq!(send_all(&handoff, 10..15), 0);
    assert_eq!(close_drained(&handoff).await.dropped_closed, 5);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_call_fails_that_record_and_the_worker_goes_on() {
    let service = Panicky::new(PanicAt::Call(3));
    let handoff = Handoff::builder()
        .capacity(16)
        .concurrency(4)
        .spawn(service.clone())
        .unwrap();

    assert_eq!(send_all(&handoff, 0..10), 10);
    let counts = settle(&handoff).await;
    assert_balanced_and_quiet(&counts);
    assert_eq!((counts.delivered, counts.failed), (9, 1));
    assert!(
        !handoff.is_closed(),
        "a panic in one call does not condemn the service"
    );

    assert_eq!(send_all(&handoff, 10..12), 2);
    let counts = close_drained(&handoff).await;
    assert_eq!((counts.delivered, counts.failed), (11, 1));
    assert_eq!(service.calls.load(Ordering::SeqCst), 12);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_response_future_fails_that_record_and_the_worker_goes_on() {
    let service = Panicky::new(PanicAt::Future(5));
    let handoff = Handoff::builder()
        .capacity(16)
        .concurrency(4)
        .spawn(service)
        .unwrap();

    assert_eq!(send_all(&handoff, 0..10), 10);
    let counts = settle(&handoff).await;
    assert_balanced_and_quiet(&counts);
    assert_eq!((counts.delivered, counts.failed), (9, 1));

    assert_eq!(send_all(&handoff, 10..12), 2);
    let counts = close_drained(&handoff).await;
    assert_eq!((counts.delivered, counts.failed), (11, 1));
}

// ===== a bulkhead smaller than the worker's concurrency =====

#[tokio::test(start_paused = true)]
async fn a_burst_to_an_instant_service_behind_a_small_bulkhead_is_delivered_not_shed() {
    let stack = ServiceBuilder::new()
        .bulkhead(BulkheadLayer::new(64).unwrap())
        .service(service_fn(|_: u32| async { Ok::<_, BoxError>(()) }));
    // The defaults: concurrency 1024, far above the bulkhead.
    let handoff = Handoff::builder().capacity(10_000).spawn(stack).unwrap();

    assert_eq!(send_all(&handoff, 0..10_000), 10_000);
    let counts = settle(&handoff).await;
    assert_balanced_and_quiet(&counts);
    assert_eq!(counts.shed, 0, "{counts:?}");
    assert_eq!(counts.delivered, 10_000);
}

// ===== refusals wrapped by another layer =====

#[tokio::test(start_paused = true)]
async fn a_shed_wrapped_in_another_error_is_counted_as_shed() {
    // A bulkhead of one whose first call never ends: every later call is shed, and the shed
    // reaches the hand-off wrapped.
    let stack = ServiceBuilder::new()
        .map_err(|error: BoxError| BoxError::from(Wrapped(error)))
        .bulkhead(BulkheadLayer::new(1).unwrap())
        .service(service_fn(|request: u32| async move {
            if request == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(())
        }));
    // Parking off: the refusal is final, and counted by what it is.
    let handoff = Handoff::builder()
        .capacity(16)
        .concurrency(8)
        .park(false)
        .spawn(stack)
        .unwrap();
    assert_eq!(send_all(&handoff, 0..6), 6);
    let counts = settle_but(&handoff, 1).await;
    assert_eq!(counts.shed, 5, "{counts:?}");
    assert_eq!(counts.failed, 0, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_breaker_rejection_wrapped_in_another_error_is_counted_as_rejected() {
    let breaker = BreakerLayer::new();
    breaker.handle().force_open();
    let stack = ServiceBuilder::new()
        .map_err(|error: BoxError| BoxError::from(Wrapped(Box::new(Wrapped(error)))))
        .breaker(breaker)
        .service(service_fn(|_: u32| async { Ok::<_, BoxError>(()) }));
    let handoff = Handoff::builder()
        .capacity(16)
        .park(false)
        .spawn(stack)
        .unwrap();
    assert_eq!(send_all(&handoff, 0..5), 5);
    let counts = settle(&handoff).await;
    assert_balanced_and_quiet(&counts);
    assert_eq!(counts.rejected, 5, "{counts:?}");
    assert_eq!(counts.failed, 0, "{counts:?}");
}

/// Like `settle`, until exactly `left` records are still pending (calls that never end).
async fn settle_but<Req>(handoff: &Handoff<Req>, left: u64) -> HandoffCounts {
    for _ in 0..10_000 {
        for _ in 0..32 {
            tokio::task::yield_now().await;
        }
        let counts = handoff.counts();
        if counts.pending() == left {
            assert!(counts.is_balanced(), "{counts:?}");
            return counts;
        }
        time::advance(Duration::from_millis(1)).await;
    }
    panic!("the hand-off did not settle: {:?}", handoff.counts());
}

// ===== settings and runtimes =====

fn capacity() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(MAX_CAPACITY + 1),
        Just(usize::MAX),
        Just(usize::MAX / 2),
        Just(1 << 40),
        0usize..4_096,
    ]
}

fn concurrency() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), Just(1), Just(usize::MAX), 0usize..4_096]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the settings, `spawn` either refuses them with the setting named, or gives a
    /// hand-off that works; it never panics.
    #[test]
    fn any_settings_give_a_config_error_or_a_working_handoff(
        capacity in capacity(),
        concurrency in concurrency(),
        name in ".{0,8}",
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let spawned = Handoff::builder()
                .capacity(capacity)
                .concurrency(concurrency)
                .name(name)
                .spawn(service_fn(|_: u32| async { Ok::<_, BoxError>(()) }));
            match spawned {
                Ok(handoff) => {
                    prop_assert!((1..=MAX_CAPACITY).contains(&capacity) && concurrency >= 1);
                    prop_assert_eq!(handoff.send(1), Sent::Accepted);
                    let report = handoff.close(Duration::from_secs(5)).await;
                    prop_assert!(report.drained);
                    prop_assert_eq!(report.counts.delivered, 1);
                }
                Err(SpawnError::Config(err)) => {
                    let expected = if capacity == 0 || capacity > MAX_CAPACITY {
                        "capacity"
                    } else {
                        "concurrency"
                    };
                    prop_assert_eq!(err.setting(), expected);
                }
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
            Ok(())
        })?;
    }
}

#[test]
fn spawn_on_a_runtime_without_the_time_driver_works() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let handoff = Handoff::builder()
            .spawn(service_fn(|_: u32| async { Ok::<_, BoxError>(()) }))
            .expect("no timers needed");
        for round in 0..3u64 {
            assert_eq!(handoff.send(round as u32), Sent::Accepted);
            // With no tick, the worker is parked between records: the send wakes it.
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
            let counts = handoff.counts();
            assert_eq!(counts.delivered, round + 1, "{counts:?}");
            assert_balanced_and_quiet(&counts);
        }
    });
}

// ===== many senders racing close =====

/// Eight sender threads (more than the cores) race `close`: every record is counted exactly
/// once, the senders' own tally agrees with the counters, and nothing accepted is stranded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_senders_racing_close_are_counted_exactly() {
    const SENDERS: usize = 8;
    for round in 0..40 {
        let handoff = Handoff::builder()
            .capacity(64)
            .concurrency(4)
            .spawn(service_fn(|_: u64| async { Ok::<_, BoxError>(()) }))
            .unwrap();
        let go = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..SENDERS)
            .map(|_| {
                let (handoff, go) = (handoff.clone(), go.clone());
                std::thread::spawn(move || {
                    while !go.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    let (mut offered, mut accepted) = (0u64, 0u64);
                    // Send until the hand-off is closed, and a little after.
                    let mut after_close = 0;
                    while after_close < 100 {
                        offered += 1;
                        if handoff.send(offered) == Sent::Accepted {
                            accepted += 1;
                        }
                        if handoff.is_closed() {
                            after_close += 1;
                        }
                    }
                    (offered, accepted)
                })
            })
            .collect();
        go.store(true, Ordering::Release);
        while handoff.counts().offered < 500 {
            tokio::task::yield_now().await;
        }
        let report = handoff.close(Duration::from_secs(10)).await;
        assert!(report.drained, "round {round}: {report:?}");
        let (mut offered, mut accepted) = (0, 0);
        for sender in senders {
            let (o, a) = sender.join().unwrap();
            offered += o;
            accepted += a;
        }
        let counts = handoff.counts();
        assert_eq!(counts.offered, offered, "round {round}");
        assert_eq!(counts.accepted, accepted, "round {round}");
        assert_eq!(counts.delivered, accepted, "round {round}: {counts:?}");
        assert_eq!(counts.dropped, offered - accepted, "round {round}");
        assert_balanced_and_quiet(&counts);
    }
}
