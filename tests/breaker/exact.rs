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

use proptest::prelude::*;
use tanker::breaker::{BreakerBuilder, BreakerLayer, BreakerOpen, BreakerState};
use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
use tanker::ServiceBuilderExt;
use tokio::sync::oneshot;
use tokio::time;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

use crate::support::breaker::secs;
use crate::support::Wrapped;

/// An inner service whose calls end when the test says so, counting how many run at once.
#[derive(Clone, Default)]
struct Gate {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

/// A request to [`Gate`]: the call ends with what is sent on the other side.
type Answer = oneshot::Receiver<Result<u32, &'static str>>;

/// A request for a call that must not reach the inner service: if it does, it ends at once with
/// an error ("abandoned") rather than hang the test.
fn unanswered() -> Answer {
    oneshot::channel().1
}

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
    let rx = unanswered();
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

    let rx = unanswered();
    let err = ready.call(rx).await.unwrap_err();
    assert!(err.is::<BreakerOpen>(), "{err}");
    assert_eq!(
        gate.most.load(Ordering::SeqCst),
        1,
        "the stale handle never reached the service"
    );
    assert_eq!(handle.counts().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn a_handle_readied_while_closed_is_rejected_once_forced_open() {
    let layer = probing(1).build().unwrap();
    let handle = layer.handle();
    let gate = Gate::default();
    let mut svc = layer.layer(gate.clone());

    svc.ready().await.unwrap();
    handle.force_open();
    let rx = unanswered();
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

    let rx = unanswered();
    assert!(late.call(rx).await.unwrap_err().is::<BreakerOpen>());
    assert_eq!(
        handle.counts().probes_in_flight,
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
    assert_eq!(handle.counts().successes, 1, "counted in the new period");
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
        handle.counts().probes_in_flight,
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
    let opened = handle.counts().times_opened;

    // Each cool-down that ends with the place still held trips again, rather than letting a
    // second probe into a dependency that has not answered the first.
    for round in 1..=3 {
        time::advance(secs(1)).await;
        let open = rejected(&mut svc).await;
        assert_eq!(open.retry_after(), Some(secs(1)), "round {round}");
        assert_eq!(handle.state(), BreakerState::Open);
        assert_eq!(handle.counts().times_opened, opened + round);
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
        let rx = unanswered();
        let err = svc.ready().await.unwrap().call(rx).await.unwrap_err();
        assert!(err.is::<BulkheadFull>(), "{err}");
    }
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "sheds are not the dependency's failures"
    );
    let m = handle.counts();
    assert_eq!((m.failures, m.ignored), (0, 10));
    held.answer(Ok(1), held_task).await;
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
    assert_eq!(handle.counts().ignored, 5);
}

/// A `BreakerOpen` as an inner breaker returns it.
async fn open_error() -> BreakerOpen {
    let inner = BreakerLayer::new();
    inner.handle().force_open();
    let mut svc = inner.layer(service_fn(|_: ()| async { Ok::<_, BoxError>(0u32) }));
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    *err.downcast_ref::<BreakerOpen>().unwrap()
}

// ===== extreme settings: refused when built, or working; never a panic later =====

fn durations() -> impl Strategy<Value = Duration> {
    prop::sample::select(vec![
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_millis(1),
        Duration::from_secs(1),
        Duration::from_secs(3_600),
        Duration::from_secs(200 * 365 * 24 * 3_600),
        Duration::MAX,
    ])
}

fn rates() -> impl Strategy<Value = f64> {
    prop::sample::select(vec![
        0.0,
        -1.0,
        f64::MIN_POSITIVE,
        0.5,
        1.0,
        1.5,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
    ])
}

fn counts() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0, 1, 2, 1_000, 1_001, u32::MAX])
}

/// Each setting either left at its default (`None`) or set to an extreme or ordinary value.
#[derive(Debug, Clone)]
struct Extremes {
    consecutive: Option<Option<u32>>,
    failure_rate: Option<Option<f64>>,
    window: Option<(Duration, u32)>,
    minimum_calls: Option<u32>,
    slow: Option<(Duration, f64)>,
    open_for: Option<Duration>,
    backoff: Option<(f64, Duration)>,
    jitter: Option<f64>,
    probes: Option<u32>,
    probe_timeout: Option<Duration>,
}

/// A setting left at its default twice as often as it is set, so that most cases build.
fn sometimes<T: std::fmt::Debug + Clone>(
    value: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    prop_oneof![2 => Just(None), 1 => value.prop_map(Some)]
}

fn extremes() -> impl Strategy<Value = Extremes> {
    (
        sometimes(prop::option::of(counts())),
        sometimes(prop::option::of(rates())),
        sometimes((durations(), counts())),
        sometimes(counts()),
        sometimes((durations(), rates())),
        sometimes(durations()),
        sometimes((rates().prop_map(|r| r * 4.0), durations())),
        sometimes(rates()),
        sometimes(counts()),
        sometimes(durations()),
    )
        .prop_map(
            |(
                consecutive,
                failure_rate,
                window,
                minimum_calls,
                slow,
                open_for,
                backoff,
                jitter,
                probes,
                probe_timeout,
            )| Extremes {
                consecutive,
                failure_rate,
                window,
                minimum_calls,
                slow,
                open_for,
                backoff,
                jitter,
                probes,
                probe_timeout,
            },
        )
}

impl Extremes {
    fn builder(&self) -> BreakerBuilder {
        let mut b = BreakerLayer::builder().jitter_seed(7);
        if let Some(consecutive) = self.consecutive {
            b = match consecutive {
                Some(n) => b.consecutive_failures(n),
                None => b.no_consecutive_failures(),
            };
        }
        if let Some(rate) = self.failure_rate {
            b = match rate {
                Some(rate) => b.failure_rate(rate),
                None => b.no_failure_rate(),
            };
        }
        if let Some((length, buckets)) = self.window {
            b = b.window(length, buckets);
        }
        if let Some(n) = self.minimum_calls {
            b = b.minimum_calls(n);
        }
        if let Some((threshold, rate)) = self.slow {
            b = b.slow_calls(threshold, rate);
        }
        if let Some(base) = self.open_for {
            b = b.open_for(base);
        }
        if let Some((multiplier, max)) = self.backoff {
            b = b.backoff(multiplier, max);
        }
        if let Some(fraction) = self.jitter {
            b = b.jitter(fraction);
        }
        if let Some(n) = self.probes {
            b = b.probes(n);
        }
        if let Some(timeout) = self.probe_timeout {
            b = b.probe_timeout(timeout);
        }
        b
    }
}

/// Failures until the breaker opens (or 64 calls), then a wait past the cool-down; twice, so
/// that the back-off grows; then a successful probe.
async fn drive_trips(layer: BreakerLayer) {
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|ok: bool| async move {
        if ok {
            Ok(1u32)
        } else {
            Err("down")
        }
    }));
    for _ in 0..3 {
        for _ in 0..64 {
            let result = svc.ready().await.unwrap().call(false).await;
            if let Err(err) = result {
                if let Some(open) = err.downcast_ref::<BreakerOpen>() {
                    let wait = open.retry_after().unwrap_or(secs(1));
                    time::advance(wait.min(Duration::from_secs(150 * 365 * 24 * 3_600))).await;
                    break;
                }
            }
        }
        let m = handle.counts();
        assert!(m.window_failures <= m.window_calls, "{m:?}");
    }
    let _ = svc.ready().await.unwrap().call(true).await;
    let m = handle.counts();
    assert!(m.failures <= m.successes + m.failures, "{m:?}");
}

#[test]
fn every_setting_is_refused_when_built_or_works() {
    let built = std::cell::Cell::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 2048,
        ..ProptestConfig::default()
    });
    runner
        .run(&extremes(), |settings| {
            match settings.builder().build() {
                Err(err) => prop_assert!(!err.setting().is_empty()),
                Ok(layer) => {
                    built.set(built.get() + 1);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .start_paused(true)
                        .build()
                        .unwrap();
                    rt.block_on(drive_trips(layer));
                }
            }
            Ok(())
        })
        .unwrap();
    // A setting is left alone 2 times in 3, so well over a tenth of the cases build and run.
    assert!(built.get() > 200, "only {} cases built", built.get());
}
