//! Heap allocations per call, counted by a global allocator: none on the admit paths, and none
//! per record in the hand-off's worker.
//!
//! The allocator counts only on the current thread and only between [`count`]'s markers, so the
//! test harness, other tests running in parallel, the warm-up and any runtime work outside the
//! markers are excluded. Each call is driven by hand with a no-op waker (`poll_ready`, `call`,
//! one poll of the response future) and the inner service answers with a ready future, so no
//! executor runs while counting. The breaker is measured both outside a runtime (successes read
//! the clock) and inside a current-thread runtime, where its window ticker runs (successes do
//! not read the clock).
// A global allocator cannot be written without `unsafe`; the library itself forbids it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{pending, Either, Pending};
use futures::task::noop_waker_ref;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder};

use tanker::breaker::{BreakerBuilder, BreakerLayer, BreakerOpen, BreakerState};
use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
use tanker::handoff::{Handoff, Sent};
use tanker::keyed::KeyedLayer;
use tanker::ServiceBuilderExt;

// ---------------------------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    // `const` thread-locals without destructors need no lazy initialisation, so reading them
    // from inside the allocator cannot allocate or recurse.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator may run while this thread's locals are being torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the only
// addition is a thread-local counter update, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: as above; `ptr` came from this allocator, which is `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f`, returning its result and the allocations (and reallocations) it made on this
/// thread.
fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let result = f();
    COUNTING.with(|on| on.set(false));
    (result, ALLOCATIONS.with(Cell::get))
}

#[test]
fn the_allocator_counts() {
    let (v, n) = count(|| std::hint::black_box(vec![1u8; 16]));
    assert_eq!(v.len(), 16);
    assert_eq!(n, 1, "the counting allocator must see a Vec allocation");
    let (e, n) = count(|| std::hint::black_box(BoxError::from(Failed)));
    assert!(e.is::<Failed>());
    assert_eq!(n, 0, "boxing a zero-sized error allocates nothing");
    // A refusal names its domain (a u64): boxing it is one small allocation.
    assert_eq!(std::mem::size_of::<BulkheadFull>(), 8);
}

// ---------------------------------------------------------------------------------------------
// Driving calls by hand
// ---------------------------------------------------------------------------------------------

const WARM_UP: u64 = 100;
const CALLS: u64 = 1_000;

/// `poll_ready`, `call`, and one poll of the response future, which must be ready.
fn call_once<S, R>(svc: &mut S, request: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(_)) => panic!("poll_ready failed"),
        Poll::Pending => panic!("poll_ready is pending"),
    }
    let future = pin!(svc.call(request));
    match future.poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the response future is pending"),
    }
}

/// Warms up with [`WARM_UP`] calls, then counts the allocations of [`CALLS`] calls. `request`
/// maps the call's number to its request; `check` sees every result (outside the count).
fn allocations_per_run<S, R>(
    svc: &mut S,
    request: impl Fn(u64) -> R,
    check: impl Fn(u64, Result<S::Response, S::Error>),
) -> u64
where
    S: Service<R>,
{
    for i in 0..WARM_UP {
        check(i, call_once(svc, request(i)));
    }
    let mut results = Vec::with_capacity(CALLS as usize);
    let ((), allocations) = count(|| {
        for i in 0..CALLS {
            let result = call_once(svc, request(i));
            // Results of errors are boxed errors; keep them (dropping frees, never allocates)
            // and check them after counting.
            results.push(result);
        }
    });
    for (i, result) in results.into_iter().enumerate() {
        check(i as u64, result);
    }
    allocations
}

/// A zero-sized inner error, so that `Into<BoxError>` (which boxes the error, as every tower
/// middleware returning `BoxError` does) allocates nothing and only the layers' own allocations
/// are counted.
#[derive(Debug, Clone, Copy)]
struct Failed;

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Failed {}

/// Answers at once: `Err(Failed)` for odd requests when `fail_odd`, `Ok(x)` otherwise.
fn echo(
    fail_odd: bool,
) -> impl Service<u64, Response = u64, Error = Failed, Future = Ready<Result<u64, Failed>>> + Clone
{
    service_fn(move |x: u64| {
        ready(if fail_odd && x % 2 == 1 {
            Err(Failed)
        } else {
            Ok(x)
        })
    })
}

fn expect_echo(fail_odd: bool) -> impl Fn(u64, Result<u64, BoxError>) {
    move |i, result| match result {
        Ok(x) => assert!(!(fail_odd && i % 2 == 1) && x == i, "call {i}: Ok({x})"),
        Err(e) => assert!(fail_odd && i % 2 == 1 && e.is::<Failed>(), "call {i}: {e}"),
    }
}

/// A breaker that nothing in this file trips: failures here alternate with successes.
fn breaker() -> BreakerLayer {
    breaker_settings().build().unwrap()
}

fn breaker_settings() -> BreakerBuilder {
    BreakerLayer::builder()
        .consecutive_failures(3)
        .failure_rate(0.9)
        .minimum_calls(10)
        .jitter(0.0)
}

// ---------------------------------------------------------------------------------------------
// Admit paths: zero allocations
// ---------------------------------------------------------------------------------------------

#[test]
fn bulkhead_admit_path_allocates_nothing() {
    let layer = BulkheadLayer::new(4).unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(echo(false));
    let n = allocations_per_run(&mut svc, |i| i, expect_echo(false));
    eprintln!("bulkhead, admitted: {n} allocations in {CALLS} calls");
    assert_eq!(n, 0);
    assert_eq!(handle.counts().admitted, WARM_UP + CALLS);
    assert_eq!(handle.counts().in_flight, 0);
}

#[test]
fn bulkhead_admit_path_with_a_waiting_room_allocates_nothing_when_not_full() {
    // The waiting room costs an allocation only when a caller has to wait.
    let layer = BulkheadLayer::builder()
        .max_in_flight(4)
        .waiting_room(8, Duration::from_secs(1))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo(false));
    let n = allocations_per_run(&mut svc, |i| i, expect_echo(false));
    eprintln!("bulkhead with a waiting room, admitted: {n} allocations in {CALLS} calls");
    assert_eq!(n, 0);
}

#[test]
fn breaker_closed_path_allocates_nothing_on_success() {
    let layer = breaker();
    let handle = layer.handle();
    let mut svc = layer.layer(echo(false));
    let n = allocations_per_run(&mut svc, |i| i, expect_echo(false));
    eprintln!("breaker, closed, successes: {n} allocations in {CALLS} calls");
    assert_eq!(n, 0);
    assert_eq!(handle.counts().successes, WARM_UP + CALLS);
}

#[test]
fn breaker_closed_path_allocates_nothing_on_failure() {
    let layer = breaker();
    let handle = layer.handle();
    let mut svc = layer.layer(echo(true));
    let n = allocations_per_run(&mut svc, |i| i, expect_echo(true));
    eprintln!("breaker, closed, successes and failures: {n} allocations in {CALLS} calls");
    assert_eq!(n, 0);
    let m = handle.counts();
    assert_eq!(
        m.state,
        BreakerState::Closed,
        "the breaker must not trip here"
    );
    assert_eq!(m.failures, (WARM_UP + CALLS) / 2);
}

#[test]
fn breaker_closed_path_allocates_nothing_with_slow_call_detection() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(3)
        .no_failure_rate()
        .slow_calls(Duration::from_secs(1), 0.5)
        .jitter(0.0)
        .build()
        .unwrap();
    let mut svc = layer.layer(echo(true));
    let n = allocations_per_run(&mut svc, |i| i, expect_echo(true));
    eprintln!("breaker, closed, slow-call detection on: {n} allocations in {CALLS} calls");
    assert_eq!(n, 0);
}

#[test]
fn breaker_over_bulkhead_allocates_nothing_per_call() {
    let breaker = breaker();
    let bulkhead = BulkheadLayer::new(4).unwrap();
    let (b, h) = (breaker.handle(), bulkhead.handle());
    let mut svc = ServiceBuilder::new()
        .breaker(breaker)
        .bulkhead(bulkhead)
        .service(echo(true));
    let n = allocations_per_run(&mut svc, |i| i, expect_echo(true));
    eprintln!("breaker over bulkhead, successes and failures: {n} allocations in {CALLS} calls");
    assert_eq!(n, 0);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(h.counts().admitted, WARM_UP + CALLS);
}

#[test]
fn a_sized_inner_error_costs_one_box_per_failure() {
    // What users see when their error is not zero-sized: `Into<BoxError>` boxes it, once.
    #[derive(Debug)]
    struct Code(#[allow(dead_code)] u32);
    impl fmt::Display for Code {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "code {}", self.0)
        }
    }
    impl std::error::Error for Code {}

    let mut svc = breaker().layer(service_fn(|x: u64| {
        ready(if x % 2 == 1 { Err(Code(7)) } else { Ok(x) })
    }));
    let n = allocations_per_run(&mut svc, |i| i, |i, r| assert_eq!(r.is_err(), i % 2 == 1));
    eprintln!("breaker, closed, failures with a sized error: {n} allocations in {CALLS} calls");
    assert_eq!(n, CALLS / 2, "one box per failure, nothing else");
}

/// Runs `f` inside a current-thread runtime. `f` builds its layers there, so the breaker's
/// window ticker is started on this runtime (and successes stop reading the clock); `f` never
/// yields, so no task runs while it counts.
fn on_a_runtime<R>(f: impl FnOnce() -> R) -> R {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async { f() })
}

#[test]
fn breaker_closed_path_on_a_runtime_allocates_nothing() {
    // On a runtime, the window's ticker keeps the bucket current and successes do not read the
    // clock: a different success path from the one outside a runtime.
    let (n, handle) = on_a_runtime(|| {
        let layer = breaker();
        let mut svc = layer.layer(echo(true));
        let n = allocations_per_run(&mut svc, |i| i, expect_echo(true));
        (n, layer.handle())
    });
    eprintln!("breaker on a runtime, successes and failures: {n} allocations in {CALLS} calls");
    assert_eq!(n, 0);
    assert_eq!(handle.state(), BreakerState::Closed);
}

#[test]
fn breaker_over_bulkhead_on_a_runtime_allocates_nothing_per_call() {
    let n = on_a_runtime(|| {
        let mut svc = ServiceBuilder::new()
            .breaker(breaker())
            .bulkhead(BulkheadLayer::new(4).unwrap())
            .service(echo(true));
        // The ticker starts on the runtime at build time; warm-up runs before counting.
        allocations_per_run(&mut svc, |i| i, expect_echo(true))
    });
    eprintln!("breaker over bulkhead on a runtime: {n} allocations in {CALLS} calls");
    assert_eq!(n, 0);
}

/// The keyed layer on keys that exist (the warm-up makes all eight): a call costs no
/// allocation, outside a runtime and on one, for successes and failures alike.
#[test]
fn keyed_layer_on_an_existing_key_allocates_nothing_per_call() {
    const KEYS: u64 = 8;
    let keyed = || {
        // Consecutive numbers share a key, so each key sees successes and failures in turn.
        KeyedLayer::builder(|x: &u64| (x / 2) % KEYS)
            .bulkhead(BulkheadLayer::builder().max_in_flight(4))
            .breaker(breaker_settings())
            .build()
            .unwrap()
    };
    let layer = keyed();
    let mut svc = layer.layer(echo(true));
    let n = allocations_per_run(&mut svc, |i| i, expect_echo(true));
    eprintln!("keyed, {KEYS} keys, successes and failures: {n} allocations in {CALLS} calls");
    assert_eq!(n, 0);
    let handle = layer.handle();
    assert_eq!(handle.counts().keys, KEYS as usize);
    let mut admitted = 0;
    for key in handle.keys() {
        assert_eq!(key.breaker().state(), BreakerState::Closed);
        admitted += key.bulkhead().counts().admitted;
    }
    assert_eq!(admitted, WARM_UP + CALLS);
    let n = on_a_runtime(|| {
        let mut svc = keyed().layer(echo(true));
        allocations_per_run(&mut svc, |i| i, expect_echo(true))
    });
    eprintln!("keyed on a runtime: {n} allocations in {CALLS} calls");
    assert_eq!(n, 0);
}

// ---------------------------------------------------------------------------------------------
// Rejections: a bounded number of allocations
// ---------------------------------------------------------------------------------------------

const HOLD: u64 = u64::MAX;

type Answer = Result<u64, Infallible>;

/// Answers at once, except `HOLD`, which never answers.
fn echo_or_hold() -> impl Service<
    u64,
    Response = u64,
    Error = Infallible,
    Future = Either<Ready<Answer>, Pending<Answer>>,
> + Clone {
    service_fn(|x: u64| {
        if x == HOLD {
            Either::Right(pending())
        } else {
            Either::Left(ready(Ok(x)))
        }
    })
}

#[test]
fn shedding_allocates_at_most_the_boxed_error() {
    let layer = BulkheadLayer::new(1).unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(echo_or_hold());
    // Take the only slot with a call that never ends.
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut held = Box::pin(svc.call(HOLD));
    assert!(held.as_mut().poll(&mut cx).is_pending());

    let n = allocations_per_run(
        &mut svc,
        |i| i,
        |i, result| {
            let err = result.expect_err("shed");
            assert!(err.is::<BulkheadFull>(), "call {i}: {err}");
        },
    );
    eprintln!("bulkhead, shed: {n} allocations in {CALLS} calls");
    assert!(
        n <= CALLS,
        "{n} allocations: more than one per shed call (BulkheadFull names its domain, 8 bytes)"
    );
    assert_eq!(handle.counts().shed, WARM_UP + CALLS);
    drop(held);
    assert_eq!(handle.counts().in_flight, 0);
}

#[test]
fn an_open_breaker_allocates_at_most_the_boxed_error() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(3600))
        .backoff(1.0, Duration::from_secs(3600))
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(echo(true));
    assert!(call_once(&mut svc, 1).is_err());
    assert_eq!(handle.state(), BreakerState::Open);

    let n = allocations_per_run(
        &mut svc,
        |i| i,
        |i, result| {
            let err = result.expect_err("rejected");
            let open = err.downcast_ref::<BreakerOpen>();
            assert!(
                open.is_some_and(|o| o.retry_after().is_some()),
                "call {i}: {err}"
            );
        },
    );
    eprintln!("breaker, open: {n} allocations in {CALLS} calls");
    assert!(
        n <= CALLS,
        "{n} allocations: more than one per rejected call"
    );
    assert_eq!(handle.counts().rejected, WARM_UP + CALLS);
}

#[test]
fn a_forced_open_breaker_allocates_at_most_the_boxed_error() {
    let layer = breaker();
    let handle = layer.handle();
    handle.force_open();
    let mut svc = layer.layer(echo(false));
    let n = allocations_per_run(
        &mut svc,
        |i| i,
        |i, result| {
            let err = result.expect_err("rejected");
            let open = err.downcast_ref::<BreakerOpen>();
            assert!(
                open.is_some_and(|o| o.retry_after().is_none()),
                "call {i}: {err}"
            );
        },
    );
    eprintln!("breaker, forced open: {n} allocations in {CALLS} calls");
    assert!(
        n <= CALLS,
        "{n} allocations: more than one per rejected call"
    );
}

// ---------------------------------------------------------------------------------------------
// The hand-off's worker
// ---------------------------------------------------------------------------------------------

/// Pending at its first poll, after waking its task; ready at the next. (tokio's `yield_now`
/// would do, but it allocates in the runtime's list of deferred wakes.)
struct WaitOnce(bool);

impl Future for WaitOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The hand-off's worker takes each record, calls the stack and counts the outcome with no
/// allocation per record once its places for calls exist. Each call here waits once (its end
/// comes through a wake), with up to 64 in flight; the worker runs on this thread's
/// current-thread runtime, counted with the sender.
#[test]
fn the_handoff_worker_allocates_nothing_per_record() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let handoff = runtime.block_on(async {
        Handoff::builder()
            .capacity(4096)
            .concurrency(64)
            .name("alloc")
            .spawn(service_fn(|n: u64| async move {
                WaitOnce(false).await;
                Ok::<_, Infallible>(n)
            }))
            .unwrap()
    });
    let run = |batch: u64| {
        runtime.block_on(async {
            let delivered = handoff.counts().delivered + CALLS;
            for i in 0..CALLS {
                assert_eq!(handoff.send(batch * CALLS + i), Sent::Accepted);
            }
            while handoff.counts().delivered < delivered {
                WaitOnce(false).await;
            }
        });
    };
    run(0);
    let ((), n) = count(|| run(1));
    eprintln!("hand-off worker: {n} allocations for {CALLS} records");
    assert_eq!(n, 0, "no allocation per record once warmed up");
    let counts = handoff.counts();
    assert_eq!(counts.delivered, 2 * CALLS);
    assert!(counts.is_balanced(), "{counts:?}");
}
