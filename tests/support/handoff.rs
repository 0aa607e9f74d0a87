//! Helpers of the hand-off's tests: fake dependencies whose fate each request names, settling on
//! paused time, and the accounting checks.

// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::future::{pending, ready, Ready};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::time;
use tower::timeout::Timeout;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_test::mock;

use tanker::breaker::{Breaker, BreakerLayer, BreakerState};
use tanker::bulkhead::{Bulkhead, BulkheadLayer};
use tanker::handoff::{Handoff, HandoffBuilder, HandoffCounts, Sent};

use crate::support::DependencyDown;

/// The idle tick most tests use (the builder's default).
pub(crate) const TICK: Duration = Duration::from_millis(1);
/// How long a [`Fate::Slow`] call takes.
pub(crate) const SLOW: Duration = Duration::from_millis(20);
/// The timeout that turns a [`Fate::Hang`] call into a failure.
pub(crate) const HANG_TIMEOUT: Duration = Duration::from_millis(50);
/// How many idle ticks `settle` waits at most (20 s of paused time).
pub(crate) const SETTLE_STEPS: usize = 20_000;

/// Lets the worker (and any other ready task) run, without moving paused time.
pub(crate) async fn run_worker() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

/// Yields and advances paused time one idle tick at a time until nothing is pending, and returns
/// the counts then. Panics if the hand-off does not settle within `SETTLE_STEPS` ticks.
pub(crate) async fn settle<Req>(handoff: &Handoff<Req>) -> HandoffCounts {
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
pub(crate) fn assert_quiescent(counts: &HandoffCounts) {
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
pub(crate) fn builder(capacity: usize, concurrency: usize) -> HandoffBuilder {
    Handoff::builder()
        .capacity(capacity)
        .concurrency(concurrency)
        .park(false)
        .retry_failed(false)
        .name("test")
}

/// A dependency that answers at once.
pub(crate) fn instant_ok<Req: Send + 'static>(
) -> impl Service<Req, Response = (), Error = BoxError, Future = impl Send> + Send + 'static {
    service_fn(|_: Req| async { Ok::<_, BoxError>(()) })
}

/// What the test dependency does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
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

/// A dependency that acts out each request's [`Fate`] and records how many calls it has at once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dependency {
    pub(crate) calls: Arc<AtomicU64>,
    pub(crate) now: Arc<AtomicUsize>,
    pub(crate) peak: Arc<AtomicUsize>,
}

impl Dependency {
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
}

/// Leaves the dependency's in-flight count when the call ends or is dropped.
pub(crate) struct InFlight(pub(crate) Arc<AtomicUsize>);

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
pub(crate) struct Router {
    pub(crate) direct: Timeout<Dependency>,
    pub(crate) shedding: Bulkhead<Dependency>,
    pub(crate) rejecting: Breaker<Dependency>,
    /// Holds the shedding bulkhead's only slot for as long as the router lives.
    pub(crate) _slot_holder: BoxFuture<'static, Result<Fate, BoxError>>,
}

impl Router {
    /// Must run inside a runtime (the breaker starts its ticker there).
    pub(crate) async fn new(dependency: &Dependency) -> Self {
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
pub(crate) struct Expected {
    pub(crate) delivered: u64,
    pub(crate) shed: u64,
    pub(crate) rejected: u64,
    pub(crate) failed: u64,
}

impl Expected {
    pub(crate) fn add(&mut self, fate: Fate) {
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
pub(crate) struct Breakable {
    pub(crate) broken: Arc<AtomicBool>,
    pub(crate) polls: Arc<AtomicU64>,
    pub(crate) calls: Arc<AtomicU64>,
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
pub(crate) fn take_requests<T, U>(
    handle: &mut mock::Handle<T, U>,
) -> Vec<(T, mock::SendResponse<U>)> {
    let mut requests = Vec::new();
    while let Some(Some(request)) = handle.next_request().now_or_never() {
        requests.push(request);
    }
    requests
}

/// Sends every request and returns how many were accepted.
pub(crate) fn send_many<Req>(
    handoff: &Handoff<Req>,
    requests: impl IntoIterator<Item = Req>,
) -> u64 {
    requests
        .into_iter()
        .map(|request| handoff.send(request))
        .filter(|sent| *sent == Sent::Accepted)
        .count() as u64
}
