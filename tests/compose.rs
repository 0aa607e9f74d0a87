//! tanker's layers composed with tower's own, as users write them.

mod support;

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::{pending, ready, Future};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tokio::time;
use tokio_test::assert_pending;
use tower::buffer::error::ServiceError;
use tower::buffer::Buffer;
use tower::load_shed::error::Overloaded;
use tower::timeout::error::Elapsed;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

use tanker::breaker::{BreakerLayer, BreakerOpen, BreakerState, Outcome};
use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
use tanker::ServiceBuilderExt;

/// A request the dependency never answers.
const HANG: u64 = u64::MAX;
/// A request the dependency fails.
const FAIL: u64 = u64::MAX - 1;

use support::DependencyDown;

/// A dependency that echoes its request, hangs on [`HANG`], fails on [`FAIL`], and counts the
/// calls that reach it.
#[derive(Debug, Clone, Default)]
struct Dependency {
    calls: Arc<AtomicU64>,
}

impl Dependency {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<u64> for Dependency {
    type Response = u64;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<u64, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u64) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match x {
            HANG => pending().boxed(),
            FAIL => ready(Err(DependencyDown.into())).boxed(),
            x => ready(Ok(x)).boxed(),
        }
    }
}

/// Finds an error of type `E` anywhere in `err`'s `source()` chain, including `err` itself.
///
/// `err.is::<E>()` looks at the outermost error only. tanker's rejections reach the caller
/// unwrapped through tower's own layers (see the `Buffer` tests), but a wrapper of the user's own
/// (or `Buffer`'s `ServiceError` for a failed `poll_ready`) hides them from `is`; walking the
/// chain finds them wherever they are.
fn find<E: StdError + 'static>(err: &BoxError) -> Option<&E> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(&**err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

fn jitterless_breaker() -> tanker::breaker::BreakerBuilder {
    BreakerLayer::builder().jitter(0.0)
}

// ---------------------------------------------------------------------------------------------
// ServiceBuilder
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn service_builder_stacks_breaker_bulkhead_timeout_and_map_request() -> Result<(), BoxError> {
    let breaker = jitterless_breaker().consecutive_failures(3).build()?;
    let bulkhead = BulkheadLayer::new(2)?;
    let (b, h) = (breaker.handle(), bulkhead.handle());
    let dependency = Dependency::default();
    let mut svc = ServiceBuilder::new()
        .breaker(breaker)
        .bulkhead(bulkhead)
        .timeout(Duration::from_millis(50))
        .map_request(|s: &str| s.len() as u64)
        .service(dependency.clone());

    assert_eq!(svc.ready().await?.call("four").await?, 4);
    assert_eq!(svc.ready().await?.call("").await?, 0);
    assert_eq!(dependency.calls(), 2);
    assert_eq!(h.counts().admitted, 2);
    assert_eq!(h.counts().in_flight, 0);
    let m = b.counts();
    assert_eq!(
        (m.state, m.successes, m.failures),
        (BreakerState::Closed, 2, 0)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Breaker over a timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn hung_calls_time_out_count_as_failures_and_open_the_breaker() -> Result<(), BoxError> {
    let breaker = jitterless_breaker()
        .consecutive_failures(3)
        .open_for(Duration::from_secs(1))
        .build()?;
    let handle = breaker.handle();
    let dependency = Dependency::default();
    let mut svc = ServiceBuilder::new()
        .breaker(breaker)
        .timeout(Duration::from_millis(100))
        .service(dependency.clone());

    for n in 1..=3 {
        let started = time::Instant::now();
        let err = svc.ready().await?.call(HANG).await.unwrap_err();
        assert!(err.is::<Elapsed>(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        let m = handle.counts();
        assert_eq!(m.failures, n);
        assert_eq!(m.consecutive_failures, n as u32);
    }
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.counts().times_opened, 1);

    // Open: rejected at once, without waiting for the timeout or reaching the dependency.
    let started = time::Instant::now();
    let err = svc.ready().await?.call(HANG).await.unwrap_err();
    let open = err
        .downcast_ref::<BreakerOpen>()
        .expect("rejected by the breaker");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(dependency.calls(), 3);

    // After the cool-down a probe goes through; the dependency answers and the breaker closes.
    time::advance(Duration::from_secs(1)).await;
    assert_eq!(svc.ready().await?.call(7).await?, 7);
    assert_eq!(handle.state(), BreakerState::Closed);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_times_out_reopens_the_breaker_for_longer() -> Result<(), BoxError> {
    let breaker = jitterless_breaker()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(1))
        .backoff(2.0, Duration::from_secs(10))
        .build()?;
    let handle = breaker.handle();
    let mut svc = ServiceBuilder::new()
        .breaker(breaker)
        .timeout(Duration::from_millis(100))
        .service(Dependency::default());

    assert!(svc
        .ready()
        .await?
        .call(HANG)
        .await
        .unwrap_err()
        .is::<Elapsed>());
    time::advance(Duration::from_secs(1)).await;
    // The probe hangs too; the timeout turns it into a failed probe.
    assert!(svc
        .ready()
        .await?
        .call(HANG)
        .await
        .unwrap_err()
        .is::<Elapsed>());
    assert_eq!(handle.state(), BreakerState::Open);
    let err = svc.ready().await?.call(1).await.unwrap_err();
    let open = err.downcast_ref::<BreakerOpen>().expect("rejected");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(2)));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Buffer in front
// ---------------------------------------------------------------------------------------------

// What the user must do with a `Buffer` in front: nothing special for tanker's rejections.
// `Buffer`'s response future returns the errors of the wrapped service's response future as they
// are, so `err.is::<BulkheadFull>()` and `err.is::<BreakerOpen>()` work on the error the caller
// gets. `Buffer` wraps only failures of the wrapped service's `poll_ready` (in `ServiceError`,
// whose `source()` is the original error) and its own `Closed`; tanker's layers never fail
// `poll_ready` for a full compartment or an open breaker, so those never get wrapped. Code that
// must also see through such wrappers walks the `source()` chain (`find` above).

/// Lets the buffer's worker task run until `done` holds, failing if it never does.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the buffer's worker never got there");
}

#[tokio::test(start_paused = true)]
async fn behind_a_buffer_a_full_bulkhead_still_sheds_with_bulkhead_full() -> Result<(), BoxError> {
    let bulkhead = BulkheadLayer::new(1)?;
    let handle = bulkhead.handle();
    let dependency = Dependency::default();
    let stack = ServiceBuilder::new()
        .bulkhead(bulkhead)
        .service(dependency.clone());
    let buffer = Buffer::new(stack, 16);

    // One call that never ends takes the only slot.
    let held = tokio::spawn(buffer.clone().oneshot(HANG));
    until(|| handle.counts().in_flight == 1).await;

    let err = buffer.clone().oneshot(1).await.unwrap_err();
    assert!(err.is::<BulkheadFull>(), "not recognisable: {err}");
    assert!(find::<BulkheadFull>(&err).is_some());
    assert!(!err.is::<ServiceError>());
    assert_eq!(handle.counts().shed, 1);
    assert_eq!(dependency.calls(), 1);

    // The buffer keeps working: once the slot is free, calls go through.
    held.abort();
    until(|| handle.counts().in_flight == 0).await;
    assert_eq!(buffer.clone().oneshot(2).await?, 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn behind_a_buffer_an_open_breaker_still_rejects_with_breaker_open() -> Result<(), BoxError> {
    let breaker = jitterless_breaker()
        .consecutive_failures(2)
        .open_for(Duration::from_secs(5))
        .build()?;
    let handle = breaker.handle();
    let dependency = Dependency::default();
    let buffer = ServiceBuilder::new()
        .buffer(16)
        .breaker(breaker)
        .service(dependency.clone());

    for _ in 0..2 {
        let err = buffer.clone().oneshot(FAIL).await.unwrap_err();
        assert!(err.is::<DependencyDown>(), "{err}");
    }
    assert_eq!(handle.state(), BreakerState::Open);

    let err = buffer.clone().oneshot(1).await.unwrap_err();
    assert!(err.is::<BreakerOpen>(), "not recognisable: {err}");
    let open = err.downcast_ref::<BreakerOpen>().unwrap();
    assert_eq!(open.retry_after(), Some(Duration::from_secs(5)));
    assert_eq!(dependency.calls(), 2);
    Ok(())
}

/// A service that is broken for good: its `poll_ready` fails.
#[derive(Clone)]
struct Dead;

impl Service<u64> for Dead {
    type Response = u64;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u64, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err(DependencyDown.into()))
    }

    fn call(&mut self, _: u64) -> Self::Future {
        unreachable!("never ready")
    }
}

#[tokio::test(start_paused = true)]
async fn behind_a_buffer_only_poll_ready_failures_are_wrapped() -> Result<(), BoxError> {
    let buffer = ServiceBuilder::new()
        .buffer(4)
        .breaker(jitterless_breaker().build()?)
        .bulkhead(BulkheadLayer::new(1)?)
        .service(Dead);
    // The breaker and the bulkhead pass the inner `poll_ready` error on; `Buffer` wraps it.
    let err = buffer.oneshot(1).await.unwrap_err();
    assert!(err.is::<ServiceError>(), "{err}");
    assert!(!err.is::<DependencyDown>());
    assert!(
        find::<DependencyDown>(&err).is_some(),
        "the source chain holds it: {err}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bulkhead under the breaker
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shed_calls_never_count_as_breaker_failures_by_default() -> Result<(), BoxError> {
    let breaker = jitterless_breaker()
        .consecutive_failures(3)
        .no_failure_rate()
        .build()?;
    let bulkhead = BulkheadLayer::new(1)?;
    let (b, h) = (breaker.handle(), bulkhead.handle());
    let dependency = Dependency::default();
    let mut svc = ServiceBuilder::new()
        .breaker(breaker)
        .bulkhead(bulkhead)
        .service(dependency.clone());

    let held = svc.ready().await?.call(HANG);
    for n in 1..=5 {
        let err = svc.ready().await?.call(1).await.unwrap_err();
        assert!(err.is::<BulkheadFull>(), "{err}");
        assert_eq!((b.counts().failures, b.counts().ignored), (0, n));
    }
    // Shedding is tanker's own back-pressure: the dependency never failed.
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(h.counts().shed, 5);
    assert_eq!(dependency.calls(), 1);
    drop(held);

    // Real failures still trip it.
    for _ in 0..3 {
        assert!(svc.ready().await?.call(FAIL).await.is_err());
    }
    assert_eq!(b.state(), BreakerState::Open);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_classifier_can_ignore_shedding_so_it_never_trips_the_breaker() -> Result<(), BoxError> {
    // The breaker sees the bulkhead's errors as `BoxError`: downcast to tell shedding (our own
    // load, not the dependency's health) from real failures.
    let breaker = jitterless_breaker()
        .consecutive_failures(3)
        .no_failure_rate()
        .classify(|result: Result<&u64, &BoxError>| match result {
            Ok(_) => Outcome::Success,
            Err(e) if e.is::<BulkheadFull>() => Outcome::Ignore,
            Err(_) => Outcome::Failure,
        })
        .build()?;
    let bulkhead = BulkheadLayer::new(1)?;
    let (b, h) = (breaker.handle(), bulkhead.handle());
    let mut svc = ServiceBuilder::new()
        .breaker(breaker)
        .bulkhead(bulkhead)
        .service(Dependency::default());

    let held = svc.ready().await?.call(HANG);
    for _ in 0..10 {
        let err = svc.ready().await?.call(1).await.unwrap_err();
        assert!(err.is::<BulkheadFull>(), "{err}");
    }
    let m = b.counts();
    assert_eq!(m.state, BreakerState::Closed);
    assert_eq!((m.failures, m.ignored, m.consecutive_failures), (0, 10, 0));
    assert_eq!(h.counts().shed, 10);
    drop(held);

    // Real failures still trip it.
    for _ in 0..3 {
        assert!(svc.ready().await?.call(FAIL).await.is_err());
    }
    assert_eq!(b.state(), BreakerState::Open);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// load_shed outside
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn load_shed_outside_lets_tanker_rejections_through_unchanged() -> Result<(), BoxError> {
    let breaker = jitterless_breaker().consecutive_failures(1).build()?;
    let bulkhead = BulkheadLayer::new(1)?;
    let (b, h) = (breaker.handle(), bulkhead.handle());
    let mut svc = ServiceBuilder::new()
        .load_shed()
        .breaker(breaker)
        .bulkhead(bulkhead)
        .service(Dependency::default());

    // tanker's layers are always ready, so `LoadShed` never sheds on their account: the caller
    // gets `BulkheadFull` or `BreakerOpen`, never `Overloaded`.
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let held = svc.call(HANG);
    let err = svc.ready().await?.call(1).await.unwrap_err();
    assert!(err.is::<BulkheadFull>() && !err.is::<Overloaded>(), "{err}");
    assert_eq!(h.counts().shed, 1);
    // A shed call is not the dependency's failure: the breaker stays closed.
    assert_eq!(b.state(), BreakerState::Closed);
    drop(held);
    // A real failure opens it (one is enough here); then it rejects, still not as `Overloaded`.
    assert!(svc.ready().await?.call(FAIL).await.is_err());
    assert_eq!(b.state(), BreakerState::Open);
    let err = svc.ready().await?.call(1).await.unwrap_err();
    assert!(err.is::<BreakerOpen>() && !err.is::<Overloaded>(), "{err}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn load_shed_outside_a_waiting_room_sheds_instead_of_waiting() -> Result<(), BoxError> {
    // A waiting room makes the bulkhead's `poll_ready` pend while the caller waits; `LoadShed`
    // turns that into `Overloaded` at once. Do not put `load_shed` outside a waiting room.
    let bulkhead = BulkheadLayer::builder()
        .max_in_flight(1)
        .waiting_room(4, Duration::from_secs(1))
        .build()?;
    let handle = bulkhead.handle();
    let dependency = Dependency::default();
    let stack = ServiceBuilder::new()
        .bulkhead(bulkhead)
        .service(dependency.clone());
    let mut waiting = stack.clone();
    let mut shedding = ServiceBuilder::new().load_shed().service(stack);

    let mut first = tokio_test::task::spawn(waiting.ready().await?.call(HANG));
    assert_pending!(first.poll());

    // Without `LoadShed`, a caller waits in the room.
    let mut wait = tokio_test::task::spawn(waiting.ready());
    assert_pending!(wait.poll());
    assert_eq!(handle.counts().waiting, 1);

    // With it, the caller is shed at once.
    let err = shedding.ready().await?.call(1).await.unwrap_err();
    assert!(err.is::<Overloaded>(), "{err}");
    drop(wait);
    drop(first);
    assert_eq!(dependency.calls(), 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// tower's concurrency_limit inside: a caller waiting for it
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_caller_waiting_on_concurrency_limit_is_rejected_when_the_breaker_opens(
) -> Result<(), BoxError> {
    let breaker = jitterless_breaker().build()?;
    let handle = breaker.handle();
    let dependency = Dependency::default();
    let svc = ServiceBuilder::new()
        .breaker(breaker)
        .concurrency_limit(1)
        .service(dependency.clone());

    // One call holds the only permit; the next caller waits in `poll_ready`.
    let mut first = svc.clone();
    let held = first.ready().await?.call(HANG);
    let mut second = svc.clone();
    let mut waiting = tokio_test::task::spawn(second.ready());
    assert_pending!(waiting.poll());

    // The breaker opens (here by hand; a failure seen by any clone does the same): the waiting
    // caller is woken and rejected instead of waiting for a permit on a failing dependency.
    handle.force_open();
    assert!(waiting.is_woken(), "the waiting caller must be woken");
    let ready = match waiting.poll() {
        Poll::Ready(ready) => ready?,
        Poll::Pending => panic!("still waiting on an open breaker"),
    };
    let err = ready.call(1).await.unwrap_err();
    let open = err
        .downcast_ref::<BreakerOpen>()
        .expect("rejected by the breaker");
    assert_eq!(open.retry_after(), None, "forced open");
    assert_eq!(dependency.calls(), 1);
    drop(held);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Send + Sync + 'static
// ---------------------------------------------------------------------------------------------

fn assert_send_sync_static<T: Send + Sync + 'static>(_: &T) {}
fn assert_spawnable<F: Future + Send + 'static>(_: &F)
where
    F::Output: Send + 'static,
{
}

#[tokio::test(start_paused = true)]
async fn a_fully_composed_service_and_its_future_can_be_spawned() -> Result<(), BoxError> {
    let breaker = BreakerLayer::builder()
        .classify(|result: Result<&u64, &BoxError>| match result {
            Err(e) if e.is::<BulkheadFull>() => Outcome::Ignore,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        })
        .build()?;
    let svc = ServiceBuilder::new()
        .load_shed()
        .breaker(breaker)
        .bulkhead(BulkheadLayer::new(8)?)
        .timeout(Duration::from_secs(1))
        .map_request(|x: u32| u64::from(x))
        .service(service_fn(|x: u64| async move {
            time::sleep(Duration::from_millis(10)).await;
            Ok::<_, Infallible>(x + 1)
        }));
    assert_send_sync_static(&svc);

    let mut ready = svc.clone();
    let future = ready.ready().await?.call(41);
    assert_spawnable(&future);
    assert_eq!(tokio::spawn(future).await??, 42);

    // Each clone can be moved into its own task.
    let tasks: Vec<_> = (0..4u32)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await??, i as u64 + 1);
    }

    // So can a buffered and a type-erased one.
    let buffered = Buffer::new(svc.clone(), 8);
    assert_send_sync_static(&buffered);
    assert_eq!(tokio::spawn(buffered.oneshot(1)).await??, 2);
    let erased = BoxCloneSyncService::new(svc);
    assert_send_sync_static(&erased);
    assert_eq!(tokio::spawn(erased.oneshot(2)).await??, 3);
    Ok(())
}

#[test]
fn response_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    type Inner = std::future::Ready<Result<u64, Infallible>>;
    send_sync::<tanker::bulkhead::future::ResponseFuture<Inner>>();
    send_sync::<tanker::breaker::future::ResponseFuture<Inner, tanker::breaker::ErrorsAsFailures>>(
    );
}
