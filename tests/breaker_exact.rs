//! The breaker's promises under legal but unusual use: handles readied before a transition,
//! probes that outlive a reopening, a window ticker whose runtime went idle, refusals of inner
//! tanker layers, and extreme settings.
//!
//! Time is paused tokio time driven by `time::advance`; nothing here sleeps.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tanker::breaker::{BreakerBuilder, BreakerLayer, BreakerOpen, BreakerState};
use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
use tanker::ServiceBuilderExt;
use tokio::sync::oneshot;
use tokio::time;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An inner service whose calls end when the test says so, counting how many run at once.
#[derive(Clone, Default)]
struct Gate {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

/// A request to [`Gate`]: the call ends with what is sent on the other side.
type Answer = oneshot::Receiver<Result<u32, &'static str>>;

/// Decrements the running count when a call ends or is dropped.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service<Answer> for Gate {
    type Response = u32;
    type Error = &'static str;
    type Future = Pin<Box<dyn Future<Output = Result<u32, &'static str>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, answer: Answer) -> Self::Future {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let running = Running(self.running.clone());
        Box::pin(async move {
            let _running = running;
            answer.await.unwrap_or(Err("abandoned"))
        })
    }
}

/// A call through `svc` that stays in the inner service until the returned sender answers it.
async fn start<S>(svc: &mut S) -> (tokio::task::JoinHandle<Result<u32, BoxError>>, Sender)
where
    S: Service<Answer, Response = u32, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let (tx, rx) = oneshot::channel();
    let call = svc.ready().await.unwrap().call(rx);
    let task = tokio::spawn(call);
    // Let the task reach the inner service.
    tokio::task::yield_now().await;
    (task, Sender(tx))
}

struct Sender(oneshot::Sender<Result<u32, &'static str>>);

impl Sender {
    async fn answer(
        self,
        outcome: Result<u32, &'static str>,
        task: tokio::task::JoinHandle<Result<u32, BoxError>>,
    ) {
        let _ = self.0.send(outcome);
        let _ = task.await.unwrap();
    }
}

async fn rejected<S>(svc: &mut S) -> BreakerOpen
where
    S: Service<Answer, Response = u32, Error = BoxError>,
{
    let (_tx, rx) = oneshot::channel();
    let err = svc.ready().await.unwrap().call(rx).await.unwrap_err();
    *err.downcast_ref::<BreakerOpen>()
        .unwrap_or_else(|| panic!("expected BreakerOpen, got {err}"))
}

fn probing(probes: u32) -> BreakerBuilder {
    BreakerLayer::builder()
        .jitter(0.0)
        .consecutive_failures(1)
        .no_failure_rate()
        .open_for(secs(1))
        .backoff(1.0, secs(1))
        .probes(probes)
        .probe_timeout(secs(10))
}

// ===== a decision of poll_ready is checked again in call =====

#[tokio::test(start_paused = true)]
async fn a_handle_readied_while_closed_is_rejected_once_the_breaker_opened() {
    let layer = probing(1).build().unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let mut ready = layer.layer(gate.clone());
    let mut other = ready.clone();

    ready.ready().await.unwrap();
    // Another handle trips the breaker meanwhile.
    let (task, tx) = start(&mut other).await;
    tx.answer(Err("down"), task).await;
    assert_eq!(handle.state(), BreakerState::Open);

    let (_tx, rx) = oneshot::channel();
    let err = ready.call(rx).await.unwrap_err();
    assert!(err.is::<BreakerOpen>(), "{err}");
    assert_eq!(
        gate.most.load(Ordering::SeqCst),
        1,
        "the stale handle never reached the service"
    );
    assert_eq!(handle.metrics().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn a_handle_readied_while_closed_is_rejected_once_forced_open() {
    let layer = probing(1).build().unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let mut svc = layer.layer(gate.clone());

    svc.ready().await.unwrap();
    handle.force_open();
    let (_tx, rx) = oneshot::channel();
    let err = svc.call(rx).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<BreakerOpen>().unwrap().retry_after(),
        None
    );
    assert_eq!(gate.most.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_probe_place_readied_before_a_reopening_is_rejected_in_call() {
    let layer = probing(2).build().unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let mut svc = layer.layer(gate.clone());
    let mut late = svc.clone();

    let (task, tx) = start(&mut svc).await;
    tx.answer(Err("down"), task).await;
    time::advance(secs(1)).await;
    // Two probe places: one readied and kept, one used by a probe that fails.
    late.ready().await.unwrap();
    let (task, tx) = start(&mut svc).await;
    tx.answer(Err("still down"), task).await;
    assert_eq!(handle.state(), BreakerState::Open);

    let (_tx, rx) = oneshot::channel();
    assert!(late.call(rx).await.unwrap_err().is::<BreakerOpen>());
    assert_eq!(
        handle.metrics().probes_in_flight,
        0,
        "the stale place was given back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_handle_readied_before_a_reset_goes_through_in_the_new_closed_period() {
    let layer = probing(1).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Gate::default());

    svc.ready().await.unwrap();
    handle.reset();
    let (tx, rx) = oneshot::channel();
    let call = svc.call(rx);
    tx.send(Ok(7)).unwrap();
    assert_eq!(call.await.unwrap(), 7);
    assert_eq!(handle.metrics().successes, 1, "counted in the new period");
}

// ===== probes across reopenings =====

#[tokio::test(start_paused = true)]
async fn a_reopening_does_not_forget_the_probes_still_running() {
    let layer = probing(2).build().unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let mut svc = layer.layer(gate.clone());

    let (task, tx) = start(&mut svc).await;
    tx.answer(Err("down"), task).await;
    time::advance(secs(1)).await;

    // Two probes: one hangs, the other fails and reopens the breaker.
    let (hung_task, hung) = start(&mut svc).await;
    let (task, tx) = start(&mut svc).await;
    tx.answer(Err("still down"), task).await;
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(
        handle.metrics().probes_in_flight,
        1,
        "the hung probe keeps its place"
    );

    time::advance(secs(1)).await;
    // Half-open again: one place is free, the other still held.
    let (task_a, a) = start(&mut svc).await;
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    rejected(&mut svc).await;
    assert_eq!(
        gate.most.load(Ordering::SeqCst),
        2,
        "never more than 2 probes at once"
    );

    // The hung probe ends (its outcome belongs to an earlier period: not counted) and frees its
    // place; the current probe's success counts.
    hung.answer(Ok(1), hung_task).await;
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    let (task_b, b) = start(&mut svc).await;
    a.answer(Ok(1), task_a).await;
    b.answer(Ok(1), task_b).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(gate.most.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn probes_hung_past_their_timeout_keep_the_breaker_open_not_stuck() {
    let layer = probing(1).build().unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let mut svc = layer.layer(gate.clone());

    let (task, tx) = start(&mut svc).await;
    tx.answer(Err("down"), task).await;
    time::advance(secs(1)).await;
    let (hung_task, hung) = start(&mut svc).await;

    // Past the probe timeout, the next call counts the hung probe as failed: open again.
    time::advance(secs(10)).await;
    rejected(&mut svc).await;
    assert_eq!(handle.state(), BreakerState::Open);
    let opened = handle.metrics().times_opened;

    // Each cool-down that ends with the place still held trips again, rather than letting a
    // second probe into a dependency that has not answered the first.
    for round in 1..=3 {
        time::advance(secs(1)).await;
        let open = rejected(&mut svc).await;
        assert_eq!(open.retry_after(), Some(secs(1)), "round {round}");
        assert_eq!(handle.state(), BreakerState::Open);
        assert_eq!(handle.metrics().times_opened, opened + round);
    }
    assert_eq!(gate.most.load(Ordering::SeqCst), 1);

    // Once the hung call ends, the next cool-down lets a probe through, and it closes.
    hung.answer(Err("late"), hung_task).await;
    time::advance(secs(1)).await;
    let (task, tx) = start(&mut svc).await;
    tx.answer(Ok(1), task).await;
    assert_eq!(handle.state(), BreakerState::Closed);
}

// ===== refusals of inner tanker layers =====

#[tokio::test(start_paused = true)]
async fn the_default_classifier_ignores_the_sheds_of_an_inner_bulkhead() {
    let breaker = BreakerLayer::builder()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let mut svc = ServiceBuilder::new()
        .breaker(breaker)
        .bulkhead(BulkheadLayer::new(1).unwrap())
        .service(Gate::default());

    let (held_task, held) = start(&mut svc).await;
    for _ in 0..10 {
        let (_tx, rx) = oneshot::channel();
        let err = svc.ready().await.unwrap().call(rx).await.unwrap_err();
        assert!(err.is::<BulkheadFull>(), "{err}");
    }
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "sheds are not the dependency's failures"
    );
    let m = handle.metrics();
    assert_eq!((m.failures, m.ignored), (0, 10));
    held.answer(Ok(1), held_task).await;
}

/// An error of another layer that wraps the refusal it met.
#[derive(Debug)]
struct Wrapped(BoxError);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wrapped")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusal_wrapped_by_another_layer_is_ignored_whatever_the_classifier() {
    let open = open_error().await;
    // A classifier that calls every error a failure, over an inner "layer" that wraps an inner
    // breaker's refusal in its own error.
    let breaker = BreakerLayer::builder()
        .consecutive_failures(1)
        .classify(|result: Result<&u32, &Wrapped>| match result {
            Ok(_) => tanker::breaker::Outcome::Success,
            Err(_) => tanker::breaker::Outcome::Failure,
        })
        .build()
        .unwrap();
    let handle = breaker.handle();
    let mut svc = breaker.layer(service_fn(move |_: ()| async move {
        Err::<u32, _>(Wrapped(Box::new(open)))
    }));
    for _ in 0..5 {
        assert!(svc.ready().await.unwrap().call(()).await.is_err());
    }
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.metrics().ignored, 5);
}

/// A `BreakerOpen` as an inner breaker returns it.
async fn open_error() -> BreakerOpen {
    let inner = BreakerLayer::new();
    inner.handle().force_open();
    let mut svc = inner.layer(service_fn(|_: ()| async { Ok::<_, BoxError>(0u32) }));
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    *err.downcast_ref::<BreakerOpen>().unwrap()
}
