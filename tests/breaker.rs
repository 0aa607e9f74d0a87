//! Integration tests for the circuit breaker: tripping, rejecting, cooling down, probing,
//! classifying, the handle, shared state, logging and configuration.
//!
//! Time is always paused tokio time driven by `time::advance`; nothing here sleeps. The inner
//! service is tower-test's mock where a test needs to see or hold individual requests, and an
//! echo service (the request is the outcome) where a test only needs many calls.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tanker::breaker::{
    Breaker, BreakerBuilder, BreakerHandle, BreakerLayer, BreakerMetrics, BreakerOpen,
    BreakerState, Classify, ErrorsAsFailures, Outcome,
};
use tanker::{ConfigError, ServiceBuilderExt};
use tokio::time::{self, Instant};
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok, task};
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::{assert_request_eq, mock};
use tracing::field::{Field, Visit};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;

// ===== helpers =====

type Mock = mock::Mock<u32, u32>;
type MockHandle = mock::Handle<u32, u32>;
type Svc<C = ErrorsAsFailures> = mock::Spawn<Breaker<Mock, C>>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Test settings: exact cool-downs (no jitter).
fn builder() -> BreakerBuilder {
    BreakerLayer::builder().jitter(0.0)
}

/// Trips after `n` failures in a row, and on nothing else.
fn consecutive(n: u32) -> BreakerBuilder {
    builder().consecutive_failures(n).no_failure_rate()
}

/// Trips on the failure rate only.
fn rate(rate: f64, minimum_calls: u32, window: Duration, buckets: u32) -> BreakerBuilder {
    builder()
        .no_consecutive_failures()
        .failure_rate(rate)
        .minimum_calls(minimum_calls)
        .window(window, buckets)
}

/// A breaker over a mock, the mock's handle, and the breaker's handle.
fn spawn<C: Clone>(layer: BreakerLayer<C>) -> (Svc<C>, MockHandle, BreakerHandle) {
    let handle = layer.handle();
    let (svc, mock) = mock::spawn_layer(layer);
    (svc, mock, handle)
}

/// A call the inner service answers with `Ok`.
async fn succeed<C>(svc: &mut Svc<C>, mock: &mut MockHandle)
where
    C: Classify<u32, BoxError> + Clone,
{
    assert_ready_ok!(svc.poll_ready(), "the breaker lets this call through");
    let response = svc.call(1);
    assert_request_eq!(mock, 1).send_response(2);
    assert_eq!(response.await.expect("the inner service answered"), 2);
}

/// A call the inner service answers with an error.
async fn fail<C>(svc: &mut Svc<C>, mock: &mut MockHandle)
where
    C: Classify<u32, BoxError> + Clone,
{
    fail_with(svc, mock, "connection refused").await;
}

async fn fail_with<C>(svc: &mut Svc<C>, mock: &mut MockHandle, message: &'static str)
where
    C: Classify<u32, BoxError> + Clone,
{
    assert_ready_ok!(svc.poll_ready(), "the breaker lets this call through");
    let response = svc.call(1);
    assert_request_eq!(mock, 1).send_error(message);
    let err = response.await.expect_err("the inner service failed");
    assert!(
        !err.is::<BreakerOpen>(),
        "the call reached the inner service"
    );
    assert_eq!(err.to_string(), message);
}

/// A call the inner service answers with `Ok` after `took`.
async fn call_taking<C>(svc: &mut Svc<C>, mock: &mut MockHandle, took: Duration)
where
    C: Classify<u32, BoxError> + Clone,
{
    assert_ready_ok!(svc.poll_ready());
    let response = svc.call(1);
    let send = assert_request_eq!(mock, 1);
    time::advance(took).await;
    send.send_response(2);
    assert_eq!(response.await.expect("the inner service answered"), 2);
}

/// A call the breaker rejects: ready at once, refused at once, never reaching the inner service.
fn reject<C>(svc: &mut Svc<C>, mock: &mut MockHandle) -> BreakerOpen
where
    C: Classify<u32, BoxError> + Clone,
{
    assert_ready_ok!(svc.poll_ready(), "a breaker that rejects is ready at once");
    let mut response = task::spawn(svc.call(1));
    let err = assert_ready_err!(response.poll(), "a rejection resolves at once");
    assert_pending!(
        mock.poll_request(),
        "a rejected call never reaches the inner service"
    );
    assert!(err.is::<BreakerOpen>(), "expected BreakerOpen, got {err}");
    *err.downcast_ref::<BreakerOpen>().expect("BreakerOpen")
}

/// The request of the echo service is its outcome.
type Echo = Result<u32, &'static str>;

fn echo(request: Echo) -> Ready<Echo> {
    ready(request)
}

/// `times` calls with the same outcome, each of which must reach the inner service.
async fn drive<S>(svc: &mut S, outcome: Echo, times: usize)
where
    S: Service<Echo, Response = u32, Error = BoxError>,
{
    for _ in 0..times {
        let result = svc.ready().await.expect("ready").call(outcome).await;
        assert_eq!(
            result.map_err(|err| err.to_string()),
            outcome.map_err(String::from),
            "the call reached the inner service"
        );
    }
}

/// One call through the echo service that the breaker must reject.
async fn echo_rejected<S>(svc: &mut S) -> BreakerOpen
where
    S: Service<Echo, Response = u32, Error = BoxError>,
{
    let err = svc
        .ready()
        .await
        .expect("ready")
        .call(Ok(1))
        .await
        .expect_err("rejected");
    *err.downcast_ref::<BreakerOpen>()
        .unwrap_or_else(|| panic!("expected BreakerOpen, got {err}"))
}

// ===== tripping on consecutive failures =====

#[tokio::test(start_paused = true)]
async fn trips_after_n_consecutive_failures() {
    let (mut svc, mut mock, handle) = spawn(consecutive(3).build().unwrap());

    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.metrics().consecutive_failures, 2);

    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.metrics().times_opened, 1);
    reject(&mut svc, &mut mock);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_consecutive_failure_count() {
    let (mut svc, mut mock, handle) = spawn(consecutive(3).build().unwrap());

    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    succeed(&mut svc, &mut mock).await;
    assert_eq!(handle.metrics().consecutive_failures, 0);

    // Four failures out of five calls, but never three in a row.
    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);

    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

// ===== tripping on the failure rate =====

#[tokio::test(start_paused = true)]
async fn failure_rate_does_not_trip_before_minimum_calls() {
    let layer = rate(0.5, 10, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    // A 100% failure rate, over too few calls to mean anything.
    drive(&mut svc, Err("down"), 9).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.metrics().window_failures, 9);

    drive(&mut svc, Err("down"), 1).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_trips_exactly_when_the_share_of_failures_reaches_the_threshold() {
    let layer = rate(0.5, 10, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Ok(1), 6).await;
    drive(&mut svc, Err("down"), 4).await; // 4 of 10
    drive(&mut svc, Err("down"), 1).await; // 5 of 11
    assert_eq!(handle.state(), BreakerState::Closed);
    let m = handle.metrics();
    assert_eq!((m.window_calls, m.window_failures), (11, 5));

    drive(&mut svc, Err("down"), 1).await; // 6 of 12: 50%
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn failures_after_successes_that_slid_out_of_the_window_trip_it() {
    let layer = rate(0.5, 10, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Ok(1), 1000).await;
    time::advance(secs(11)).await;

    // The 1000 successes are history: the window holds only the new failures.
    drive(&mut svc, Err("down"), 9).await;
    assert_eq!(handle.state(), BreakerState::Closed, "below minimum_calls");
    let m = handle.metrics();
    assert_eq!((m.window_calls, m.window_failures), (9, 9));
    assert_eq!(m.successes, 1000, "all-time counters keep them");

    drive(&mut svc, Err("down"), 1).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn successes_still_inside_the_window_hold_the_failure_rate_down() {
    let layer = rate(0.5, 10, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Ok(1), 1000).await;
    time::advance(secs(5)).await;

    drive(&mut svc, Err("down"), 999).await;
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "999 of 1999 is below 50%"
    );
    let m = handle.metrics();
    assert_eq!((m.window_calls, m.window_failures), (1999, 999));

    drive(&mut svc, Err("down"), 1).await;
    assert_eq!(handle.state(), BreakerState::Open, "1000 of 2000 is 50%");
}

#[tokio::test(start_paused = true)]
async fn successes_after_a_quiet_spell_count_in_the_window() {
    let layer = rate(0.5, 20, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    // Busy, then a quiet minute, then traffic again.
    drive(&mut svc, Ok(1), 1000).await;
    time::advance(secs(60)).await;
    drive(&mut svc, Ok(1), 30).await;
    let m = handle.metrics();
    assert_eq!(
        (m.window_calls, m.window_failures),
        (30, 0),
        "every success since the quiet spell is in the window"
    );
    drive(&mut svc, Err("down"), 29).await;

    let m = handle.metrics();
    assert_eq!(
        (m.window_calls, m.window_failures),
        (59, 29),
        "every call since the quiet spell is in the window"
    );
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "29 of 59 is below 50%"
    );

    drive(&mut svc, Err("down"), 1).await;
    assert_eq!(handle.state(), BreakerState::Open, "30 of 60 is 50%");
}

#[tokio::test(start_paused = true)]
async fn calls_from_long_ago_never_come_back_into_the_window() {
    // The narrowest buckets allowed: 1 ms.
    let layer = rate(0.5, 10, secs(1), 1000).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Err("down"), 9).await;
    // 2^32 buckets later (about 50 days).
    time::advance(ms(1 << 32)).await;
    drive(&mut svc, Err("down"), 1).await;

    assert_eq!(
        handle.metrics().window_calls,
        1,
        "only the new call is in the window"
    );
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "1 call is below minimum_calls"
    );
}

// ===== tripping on slow calls =====

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_breaker() {
    let layer = builder()
        .no_consecutive_failures()
        .no_failure_rate()
        .slow_calls(ms(100), 0.5)
        .minimum_calls(4)
        .window(secs(10), 10)
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    call_taking(&mut svc, &mut mock, ms(150)).await;
    call_taking(&mut svc, &mut mock, ms(100)).await; // the threshold itself is slow
    call_taking(&mut svc, &mut mock, ms(500)).await;
    assert_eq!(handle.state(), BreakerState::Closed, "below minimum_calls");
    let m = handle.metrics();
    assert_eq!((m.window_calls, m.window_slow_calls), (3, 3));
    assert_eq!(m.failures, 0, "a slow success is not a failure");

    call_taking(&mut svc, &mut mock, ms(150)).await;
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.metrics().slow_calls, 4);
    reject(&mut svc, &mut mock);
}

#[tokio::test(start_paused = true)]
async fn fast_calls_do_not_trip_the_slow_call_rate() {
    let layer = builder()
        .no_consecutive_failures()
        .no_failure_rate()
        .slow_calls(ms(100), 0.5)
        .minimum_calls(4)
        .window(secs(10), 10)
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    for _ in 0..50 {
        call_taking(&mut svc, &mut mock, ms(99)).await;
    }
    assert_eq!(handle.state(), BreakerState::Closed);
    let m = handle.metrics();
    assert_eq!((m.window_calls, m.window_slow_calls), (50, 0));
    assert_eq!(m.slow_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_below_the_rate_do_not_trip() {
    let layer = builder()
        .no_consecutive_failures()
        .no_failure_rate()
        .slow_calls(ms(100), 0.5)
        .minimum_calls(4)
        .window(secs(60), 6)
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    for _ in 0..3 {
        call_taking(&mut svc, &mut mock, ms(10)).await;
        call_taking(&mut svc, &mut mock, ms(10)).await;
        call_taking(&mut svc, &mut mock, ms(200)).await;
    }
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "a third of the calls are slow"
    );
    assert_eq!(handle.metrics().window_slow_calls, 3);
}

#[tokio::test(start_paused = true)]
async fn a_slow_probe_counts_as_a_failed_probe() {
    let layer = consecutive(1)
        .slow_calls(ms(100), 1.0)
        .open_for(secs(1))
        .backoff(2.0, secs(60))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;
    call_taking(&mut svc, &mut mock, ms(150)).await;

    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(2)));
}

// ===== open: rejecting =====

#[tokio::test(start_paused = true)]
async fn open_breaker_rejects_at_once_with_the_rest_of_the_cool_down() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(5)).build().unwrap());
    fail(&mut svc, &mut mock).await;

    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(5)));
    time::advance(secs(2)).await;
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(3)));
    time::advance(ms(2500)).await;
    let open = reject(&mut svc, &mut mock);
    assert_eq!(open.retry_after(), Some(ms(500)));
    assert!(open.to_string().contains("open"), "{open}");

    assert_eq!(handle.metrics().rejected, 3);
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_never_polls_inner() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(5)).build().unwrap());
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);

    // From now on the inner service would keep anyone who polls it waiting.
    mock.allow(0);
    for _ in 0..10 {
        reject(&mut svc, &mut mock);
    }
    assert_eq!(handle.metrics().rejected, 10);
}

#[tokio::test(start_paused = true)]
async fn a_hung_inner_service_cannot_hold_back_rejection() {
    let layer = consecutive(2).open_for(secs(5)).build().unwrap();
    let handle = layer.handle();

    // One caller waits on a dependency connection that hangs...
    let (hung, mut hung_mock) = mock::pair::<u32, u32>();
    hung_mock.allow(0);
    let mut waiting = mock::Spawn::new(layer.layer(hung));
    assert_pending!(waiting.poll_ready());

    // ...while calls on another connection to the same dependency fail and trip the breaker.
    let (mut other, mut other_mock) = mock::spawn_layer(layer.clone());
    fail(&mut other, &mut other_mock).await;
    fail(&mut other, &mut other_mock).await;
    assert_eq!(handle.state(), BreakerState::Open);

    // Polled again, the waiting caller is rejected at once, the hung service notwithstanding.
    let open = reject(&mut waiting, &mut hung_mock);
    assert_eq!(open.retry_after(), Some(secs(5)));
    // And so is every new caller on the hung connection.
    let mut fresh = waiting.clone();
    reject(&mut fresh, &mut hung_mock);
}

#[tokio::test(start_paused = true)]
async fn a_caller_parked_on_a_hung_inner_service_is_released_when_the_breaker_opens() {
    let layer = consecutive(2).open_for(secs(5)).build().unwrap();

    // A caller awaits readiness (`ServiceExt::ready`) of a connection that hangs...
    let (hung, mut hung_mock) = mock::pair::<u32, u32>();
    hung_mock.allow(0);
    let mut parked_svc = layer.layer(hung);
    let mut parked = task::spawn(parked_svc.ready());
    assert_pending!(parked.poll());

    // ...when failures on another connection to the same dependency trip the breaker.
    let (mut other, mut other_mock) = mock::spawn_layer(layer.clone());
    fail(&mut other, &mut other_mock).await;
    fail(&mut other, &mut other_mock).await;

    // Nothing but the breaker can release it: the hung service never will.
    assert!(
        parked.is_woken(),
        "the parked caller is woken when the breaker opens"
    );
    let svc = assert_ready_ok!(parked.poll());
    let err = svc.call(1).await.unwrap_err();
    assert!(err.is::<BreakerOpen>(), "{err}");
}

// ===== cool-down =====

#[tokio::test(start_paused = true)]
async fn cool_down_grows_with_each_failed_probe_up_to_the_cap_and_resets_after_closing() {
    let layer = consecutive(1)
        .open_for(secs(1))
        .backoff(2.0, secs(5))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    fail(&mut svc, &mut mock).await;
    let mut cool_down = reject(&mut svc, &mut mock).retry_after().unwrap();
    assert_eq!(cool_down, secs(1));
    let mut seen = vec![cool_down];
    for _ in 0..4 {
        time::advance(cool_down).await;
        fail(&mut svc, &mut mock).await; // the probe fails
        assert_eq!(handle.state(), BreakerState::Open);
        cool_down = reject(&mut svc, &mut mock).retry_after().unwrap();
        seen.push(cool_down);
    }
    assert_eq!(seen, [secs(1), secs(2), secs(4), secs(5), secs(5)]);

    time::advance(cool_down).await;
    succeed(&mut svc, &mut mock).await; // the probe succeeds
    assert_eq!(handle.state(), BreakerState::Closed);

    fail(&mut svc, &mut mock).await;
    assert_eq!(
        reject(&mut svc, &mut mock).retry_after(),
        Some(secs(1)),
        "back to the base cool-down after closing"
    );
    assert_eq!(handle.metrics().times_opened, 6);
}

#[tokio::test(start_paused = true)]
async fn jittered_cool_down_stays_between_base_less_jitter_and_base() {
    let mut seen = HashSet::new();
    for seed in 0..32 {
        let layer = BreakerLayer::builder()
            .consecutive_failures(1)
            .open_for(secs(10))
            .jitter(0.25)
            .jitter_seed(seed)
            .build()
            .unwrap();
        let mut svc = layer.layer(service_fn(echo));
        drive(&mut svc, Err("down"), 1).await;
        let cool_down = echo_rejected(&mut svc).await.retry_after().unwrap();
        assert!(
            (ms(7500)..=secs(10)).contains(&cool_down),
            "seed {seed}: {cool_down:?}"
        );
        seen.insert(cool_down);
    }
    assert!(seen.len() > 1, "jitter varies the cool-down: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn jitter_applies_to_every_grown_cool_down() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .open_for(secs(1))
        .backoff(2.0, secs(8))
        .jitter(0.5)
        .jitter_seed(7)
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Err("down"), 1).await;
    for grown in [1, 2, 4, 8, 8] {
        let cool_down = echo_rejected(&mut svc).await.retry_after().unwrap();
        let grown = secs(grown);
        assert!(
            (grown / 2..=grown).contains(&cool_down),
            "{cool_down:?} outside [{:?}, {grown:?}]",
            grown / 2
        );
        time::advance(cool_down).await;
        drive(&mut svc, Err("down"), 1).await; // a failed probe
    }
}

#[tokio::test(start_paused = true)]
async fn the_same_jitter_seed_gives_the_same_cool_down() {
    let mut cool_downs = Vec::new();
    for _ in 0..2 {
        let layer = BreakerLayer::builder()
            .consecutive_failures(1)
            .open_for(secs(10))
            .jitter(0.5)
            .jitter_seed(1234)
            .build()
            .unwrap();
        let mut svc = layer.layer(service_fn(echo));
        drive(&mut svc, Err("down"), 1).await;
        cool_downs.push(echo_rejected(&mut svc).await.retry_after().unwrap());
    }
    assert_eq!(cool_downs[0], cool_downs[1]);
}

// ===== half-open: probing =====

#[tokio::test(start_paused = true)]
async fn half_open_lets_only_p_probes_through_a_crowd() {
    let layer = consecutive(1)
        .open_for(secs(1))
        .probes(3)
        .probe_timeout(secs(10))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;

    // Fifty callers arrive at once after the cool-down, each on its own clone.
    let mut crowd: Vec<_> = (0..50)
        .map(|i| task::spawn(svc.get_ref().clone().oneshot(i)))
        .collect();
    let mut waiting = Vec::new();
    let mut rejected = 0;
    for (i, call) in crowd.iter_mut().enumerate() {
        match call.poll() {
            Poll::Pending => waiting.push(i),
            Poll::Ready(Err(err)) => {
                let open = err.downcast_ref::<BreakerOpen>().expect("BreakerOpen");
                assert_eq!(
                    open.retry_after(),
                    Some(secs(10)),
                    "until the probe timeout"
                );
                rejected += 1;
            }
            Poll::Ready(Ok(_)) => panic!("no request was answered yet"),
        }
    }
    assert_eq!((waiting.len(), rejected), (3, 47));
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    assert_eq!(handle.metrics().probes_in_flight, 3);

    // Exactly three requests reached the dependency.
    let mut probes = Vec::new();
    for _ in 0..3 {
        let (_, send) = assert_ready!(mock.poll_request()).expect("a probe");
        probes.push(send);
    }
    assert_pending!(mock.poll_request());

    // Two successes are not enough...
    probes.pop().unwrap().send_response(0);
    probes.pop().unwrap().send_response(0);
    assert_ready_ok!(crowd[waiting[2]].poll());
    assert_ready_ok!(crowd[waiting[1]].poll());
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    // ...the third closes the breaker.
    probes.pop().unwrap().send_response(0);
    assert_ready_ok!(crowd[waiting[0]].poll());
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.metrics().probes_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn closing_after_probes_forgets_the_old_window() {
    let layer = rate(0.5, 4, secs(60), 6).open_for(secs(1)).build().unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    for _ in 0..4 {
        fail(&mut svc, &mut mock).await;
    }
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.metrics().window_failures, 4);

    time::advance(secs(1)).await;
    succeed(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    let m = handle.metrics();
    assert_eq!((m.window_calls, m.window_failures), (0, 0));

    // The old failures are still inside the 60 s window but no longer count.
    for _ in 0..3 {
        fail(&mut svc, &mut mock).await;
    }
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "3 calls are below minimum_calls"
    );
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_with_a_longer_cool_down() {
    let layer = consecutive(1)
        .open_for(secs(2))
        .backoff(3.0, secs(60))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    fail(&mut svc, &mut mock).await;
    time::advance(secs(2)).await;
    fail(&mut svc, &mut mock).await;

    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.metrics().times_opened, 2);
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(6)));
}

#[tokio::test(start_paused = true)]
async fn one_failed_probe_reopens_even_if_the_other_probes_then_succeed() {
    let layer = consecutive(1).open_for(secs(1)).probes(2).build().unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;

    let mut a = svc.clone();
    let mut b = svc.clone();
    assert_ready_ok!(a.poll_ready());
    assert_ready_ok!(b.poll_ready());
    let mut a_response = task::spawn(a.call(1));
    let mut b_response = task::spawn(b.call(2));
    let a_send = assert_request_eq!(mock, 1);
    let b_send = assert_request_eq!(mock, 2);

    a_send.send_error("still down");
    assert_ready_err!(a_response.poll());
    assert_eq!(handle.state(), BreakerState::Open);

    b_send.send_response(0);
    assert_ready_ok!(b_response.poll());
    assert_eq!(
        handle.state(),
        BreakerState::Open,
        "a late success does not close it"
    );
    assert_eq!(handle.metrics().probes_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn half_open_rejections_wait_for_the_probe_timeout() {
    let layer = consecutive(1)
        .open_for(secs(1))
        .probe_timeout(secs(10))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;

    let mut prober = svc.clone();
    assert_ready_ok!(prober.poll_ready());
    let _probe = prober.call(1);
    let _send = assert_request_eq!(mock, 1);

    time::advance(secs(4)).await;
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(6)));
    assert_eq!(handle.state(), BreakerState::HalfOpen);
}

// ===== cancelled and hung probes =====

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_response_frees_its_place_without_an_outcome() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(1)).build().unwrap());
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;

    let mut prober = svc.clone();
    assert_ready_ok!(prober.poll_ready());
    let probe = prober.call(1);
    let _send = assert_request_eq!(mock, 1);
    reject(&mut svc, &mut mock); // the only place is taken
    assert_eq!(handle.metrics().probes_in_flight, 1);

    drop(probe);
    let m = handle.metrics();
    assert_eq!(m.state, BreakerState::HalfOpen, "no outcome was recorded");
    assert_eq!(m.probes_in_flight, 0);
    assert_eq!(m.times_opened, 1);

    // The freed place goes to the next caller.
    succeed(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_place_is_freed_when_its_service_is_dropped_before_calling() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(1)).build().unwrap());
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;

    let mut holder = svc.clone();
    assert_ready_ok!(holder.poll_ready());
    assert_eq!(handle.metrics().probes_in_flight, 1);
    // A clone of the holder does not inherit its place.
    let mut holder_clone = holder.clone();
    reject(&mut holder_clone, &mut mock);
    reject(&mut svc, &mut mock);

    drop(holder);
    let m = handle.metrics();
    assert_eq!(m.state, BreakerState::HalfOpen);
    assert_eq!(m.probes_in_flight, 0);

    succeed(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn into_inner_gives_back_a_probe_place() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(1)).build().unwrap());
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;

    let mut holder = svc.clone();
    assert_ready_ok!(holder.poll_ready());
    assert_eq!(handle.metrics().probes_in_flight, 1);
    let _inner: Mock = holder.into_inner().into_inner();
    assert_eq!(handle.metrics().probes_in_flight, 0);
    assert_eq!(handle.state(), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn an_inner_readiness_error_frees_the_probe_place() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(1)).build().unwrap());
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;

    let mut broken = svc.clone();
    mock.send_error("connection lost");
    assert_ready_err!(broken.poll_ready());
    let m = handle.metrics();
    assert_eq!((m.state, m.probes_in_flight), (BreakerState::HalfOpen, 0));

    succeed(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_finishes_reopens_the_breaker_after_the_probe_timeout() {
    let layer = consecutive(1)
        .open_for(secs(1))
        .backoff(2.0, secs(60))
        .probe_timeout(secs(10))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;

    let mut prober = svc.clone();
    assert_ready_ok!(prober.poll_ready());
    let mut hung = task::spawn(prober.call(1));
    let send = assert_request_eq!(mock, 1);
    assert_pending!(hung.poll());

    time::advance(secs(9)).await;
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(1)));
    assert_eq!(handle.state(), BreakerState::HalfOpen);

    time::advance(secs(1)).await;
    // The next call finds the probe timed out: the breaker opens again, as for a failed probe.
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(2)));
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.metrics().times_opened, 2);

    // The hung probe finally answers: its caller gets the answer, the breaker ignores it.
    send.send_response(5);
    assert_eq!(assert_ready_ok!(hung.poll()), 5);
    assert_eq!(handle.state(), BreakerState::Open);

    time::advance(secs(2)).await;
    succeed(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_place_that_outlived_its_half_open_period_does_not_pass_a_call_while_open() {
    let layer = consecutive(1)
        .open_for(secs(1))
        .backoff(2.0, secs(60))
        .probe_timeout(secs(5))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;

    // A caller takes the probe place and does not call (yet).
    let mut late = svc.clone();
    assert_ready_ok!(late.poll_ready());
    time::advance(secs(5)).await;
    // Meanwhile the probe timed out and the breaker opened again.
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(2)));
    assert_eq!(handle.state(), BreakerState::Open);

    // The late caller must not reach the dependency while the breaker is open.
    assert_ready_ok!(late.poll_ready());
    let mut response = task::spawn(late.call(1));
    assert_pending!(
        mock.poll_request(),
        "a call reached the dependency while the breaker was open"
    );
    let err = assert_ready_err!(response.poll());
    let open = err.downcast_ref::<BreakerOpen>().expect("BreakerOpen");
    assert_eq!(open.retry_after(), Some(secs(2)));
    assert_eq!(handle.metrics().probes_in_flight, 0);
}

// ===== classifying outcomes =====

#[tokio::test(start_paused = true)]
async fn every_error_is_a_failure_by_default() {
    let (mut svc, mut mock, handle) = spawn(consecutive(3).build().unwrap());

    fail_with(&mut svc, &mut mock, "bad request").await;
    fail_with(&mut svc, &mut mock, "timeout").await;
    fail_with(&mut svc, &mut mock, "whatever").await;

    let m = handle.metrics();
    assert_eq!((m.state, m.failures, m.ignored), (BreakerState::Open, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn timeouts_inside_the_breaker_count_as_failures() {
    let layer = consecutive(2).build().unwrap();
    let handle = layer.handle();
    let (inner, mut mock) = mock::pair::<u32, u32>();
    let mut svc = mock::Spawn::new(
        ServiceBuilder::new()
            .breaker(layer)
            .timeout(ms(100))
            .service(inner),
    );

    for _ in 0..2 {
        assert_ready_ok!(svc.poll_ready());
        let mut response = task::spawn(svc.call(1));
        let _unanswered = assert_request_eq!(mock, 1);
        assert_pending!(response.poll());
        time::advance(ms(100)).await;
        let err = assert_ready_err!(response.poll());
        assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    }
    assert_eq!(handle.state(), BreakerState::Open);

    assert_ready_ok!(svc.poll_ready());
    let err = svc.call(1).await.unwrap_err();
    assert!(err.is::<BreakerOpen>(), "{err}");
}

fn callers_mistakes_are_ignored(result: Result<&u32, &BoxError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(err) if err.to_string() == "bad request" => Outcome::Ignore,
        Err(_) => Outcome::Failure,
    }
}

#[tokio::test(start_paused = true)]
async fn ignored_errors_never_trip_the_breaker() {
    let layer = consecutive(3)
        .failure_rate(0.5)
        .minimum_calls(5)
        .classify(callers_mistakes_are_ignored)
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    for _ in 0..100 {
        fail_with(&mut svc, &mut mock, "bad request").await;
    }
    let m = handle.metrics();
    assert_eq!(m.state, BreakerState::Closed);
    assert_eq!((m.ignored, m.failures, m.window_calls), (100, 0, 0));
    assert_eq!(m.consecutive_failures, 0);

    // Ignored calls do not count at all: they neither add to a run of failures nor break it.
    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    fail_with(&mut svc, &mut mock, "bad request").await;
    assert_eq!(handle.state(), BreakerState::Closed);
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn an_ignored_probe_frees_its_place() {
    let layer = consecutive(1)
        .open_for(secs(1))
        .classify(callers_mistakes_are_ignored)
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;

    fail_with(&mut svc, &mut mock, "bad request").await; // the probe
    let m = handle.metrics();
    assert_eq!(m.state, BreakerState::HalfOpen, "neither closed nor opened");
    assert_eq!((m.probes_in_flight, m.ignored, m.times_opened), (0, 1, 1));

    succeed(&mut svc, &mut mock).await; // the next probe
    assert_eq!(handle.state(), BreakerState::Closed);
}

// ===== outcomes of an earlier period =====

#[tokio::test(start_paused = true)]
async fn calls_admitted_while_closed_that_finish_after_the_breaker_opened_are_not_counted() {
    let (mut svc, mut mock, handle) = spawn(consecutive(2).open_for(secs(1)).build().unwrap());

    // Two slow calls start while the breaker is closed.
    let mut early = svc.clone();
    assert_ready_ok!(early.poll_ready());
    let mut first = task::spawn(early.call(8));
    assert_ready_ok!(early.poll_ready());
    let mut second = task::spawn(early.call(9));
    let first_send = assert_request_eq!(mock, 8);
    let second_send = assert_request_eq!(mock, 9);

    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);

    // One fails while the breaker is open: not counted.
    first_send.send_error("timeout");
    assert_ready_err!(first.poll());
    let m = handle.metrics();
    assert_eq!((m.failures, m.times_opened), (2, 1));

    // The other fails while a probe is out: it is not the probe, so the breaker stays half-open.
    time::advance(secs(1)).await;
    assert_ready_ok!(svc.poll_ready());
    let probe = svc.call(1);
    let probe_send = assert_request_eq!(mock, 1);
    second_send.send_error("timeout");
    assert_ready_err!(second.poll());
    let m = handle.metrics();
    assert_eq!((m.state, m.probes_in_flight), (BreakerState::HalfOpen, 1));

    probe_send.send_response(0);
    probe.await.unwrap();
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.metrics().times_opened, 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_from_an_old_closed_period_does_not_count_in_the_next_one() {
    let (mut svc, mut mock, handle) = spawn(consecutive(2).open_for(secs(1)).build().unwrap());

    let mut early = svc.clone();
    assert_ready_ok!(early.poll_ready());
    let mut early_response = task::spawn(early.call(9));
    let early_send = assert_request_eq!(mock, 9);

    // The breaker opens, probes, and closes again while that call is in flight.
    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;
    succeed(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);

    early_send.send_error("timeout");
    assert_ready_err!(early_response.poll());
    let m = handle.metrics();
    assert_eq!((m.consecutive_failures, m.window_calls), (0, 0));

    // Had the old failure counted, this would be the second in a row.
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

// ===== the handle =====

#[tokio::test(start_paused = true)]
async fn metrics_track_calls_rejections_probes_and_transitions() {
    let t0 = Instant::now();
    let layer = consecutive(3).open_for(secs(5)).build().unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    let m = handle.metrics();
    assert_eq!(m.state, BreakerState::Closed);
    assert_eq!(
        (m.window_calls, m.window_failures, m.window_slow_calls),
        (0, 0, 0)
    );
    assert_eq!(
        (m.successes, m.failures, m.slow_calls, m.ignored, m.rejected),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(
        (m.consecutive_failures, m.times_opened, m.probes_in_flight),
        (0, 0, 0)
    );
    assert_eq!((m.last_transition, m.open_until), (t0, None));

    succeed(&mut svc, &mut mock).await;
    succeed(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    let m = handle.metrics();
    assert_eq!((m.window_calls, m.window_failures), (3, 1));
    assert_eq!((m.successes, m.failures, m.consecutive_failures), (2, 1, 1));

    time::advance(secs(1)).await;
    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    let tripped = Instant::now();
    reject(&mut svc, &mut mock);
    reject(&mut svc, &mut mock);
    let m = handle.metrics();
    assert_eq!(m.state, BreakerState::Open);
    assert_eq!((m.failures, m.consecutive_failures), (3, 3));
    assert_eq!((m.rejected, m.times_opened), (2, 1));
    assert_eq!(m.last_transition, tripped);
    assert_eq!(m.open_until, Some(tripped + secs(5)));

    time::advance(secs(5)).await;
    assert_ready_ok!(svc.poll_ready());
    let probe = svc.call(1);
    let send = assert_request_eq!(mock, 1);
    let m = handle.metrics();
    assert_eq!(m.state, BreakerState::HalfOpen);
    assert_eq!((m.probes_in_flight, m.open_until), (1, None));

    send.send_response(0);
    probe.await.unwrap();
    let m = handle.metrics();
    assert_eq!(m.state, BreakerState::Closed);
    assert_eq!(
        (m.window_calls, m.window_failures, m.consecutive_failures),
        (0, 0, 0)
    );
    assert_eq!(
        (m.successes, m.failures),
        (2, 3),
        "probes are not in the all-time counters"
    );
    assert_eq!((m.probes_in_flight, m.rejected, m.times_opened), (0, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn window_metrics_drop_calls_that_slid_out_of_the_window() {
    let layer = rate(0.5, 100, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Ok(1), 5).await;
    drive(&mut svc, Err("down"), 5).await;
    assert_eq!(handle.metrics().window_calls, 10);

    time::advance(secs(11)).await;
    let m = handle.metrics();
    assert_eq!(
        (m.window_calls, m.window_failures),
        (0, 0),
        "eleven seconds later a ten-second window is empty"
    );
    assert_eq!((m.successes, m.failures), (5, 5));
}

#[tokio::test(start_paused = true)]
async fn last_transition_is_the_instant_of_each_change() {
    let built = Instant::now();
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(5)).build().unwrap());
    assert_eq!(handle.last_transition(), built);

    time::advance(secs(3)).await;
    succeed(&mut svc, &mut mock).await;
    assert_eq!(
        handle.last_transition(),
        built,
        "a call is not a transition"
    );
    fail(&mut svc, &mut mock).await;
    let opened = built + secs(3);
    assert_eq!(handle.last_transition(), opened);

    time::advance(secs(2)).await;
    reject(&mut svc, &mut mock);
    assert_eq!(
        handle.last_transition(),
        opened,
        "a rejection is not a transition"
    );

    time::advance(secs(3)).await;
    // The cool-down ended at +8 s, but the change happens when the next call arrives.
    assert_eq!(handle.state(), BreakerState::Open);
    time::advance(secs(1)).await;
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    assert_eq!(handle.last_transition(), built + secs(9));

    time::advance(secs(1)).await;
    let probe = svc.call(1);
    assert_request_eq!(mock, 1).send_response(0);
    probe.await.unwrap();
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.last_transition(), built + secs(10));

    time::advance(secs(1)).await;
    handle.force_open();
    assert_eq!(handle.last_transition(), built + secs(11));
}

#[tokio::test(start_paused = true)]
async fn force_open_rejects_every_call_without_a_retry_time() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(1)).build().unwrap());
    handle.force_open();
    assert_eq!(handle.state(), BreakerState::ForcedOpen);

    mock.allow(0);
    let open = reject(&mut svc, &mut mock);
    assert_eq!(open.retry_after(), None);
    assert!(open.to_string().contains("forced open"), "{open}");

    // No cool-down ends a forced opening.
    time::advance(secs(3600)).await;
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), None);
    let m = handle.metrics();
    assert_eq!(m.state, BreakerState::ForcedOpen);
    assert_eq!((m.rejected, m.times_opened, m.open_until), (2, 0, None));

    mock.allow(u64::MAX);
    handle.reset();
    assert_eq!(handle.state(), BreakerState::Closed);
    succeed(&mut svc, &mut mock).await;
}

#[tokio::test(start_paused = true)]
async fn force_closed_lets_every_call_through_and_never_trips() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(60)).build().unwrap());
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);

    handle.force_closed();
    assert_eq!(handle.state(), BreakerState::ForcedClosed);
    for _ in 0..50 {
        fail(&mut svc, &mut mock).await;
    }
    succeed(&mut svc, &mut mock).await;
    let m = handle.metrics();
    assert_eq!(m.state, BreakerState::ForcedClosed);
    assert_eq!(
        (m.failures, m.successes, m.times_opened),
        (1, 0, 1),
        "nothing counted"
    );

    handle.reset();
    assert_eq!(handle.state(), BreakerState::Closed);
    fail(&mut svc, &mut mock).await;
    assert_eq!(
        handle.state(),
        BreakerState::Open,
        "counting again after the reset"
    );
}

#[tokio::test(start_paused = true)]
async fn reset_closes_with_an_empty_window_and_the_base_cool_down() {
    let layer = consecutive(2)
        .open_for(secs(1))
        .backoff(2.0, secs(60))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;
    fail(&mut svc, &mut mock).await; // failed probe: cool-down 2 s
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(2)));

    handle.reset();
    let m = handle.metrics();
    assert_eq!(m.state, BreakerState::Closed);
    assert_eq!((m.window_calls, m.consecutive_failures), (0, 0));
    assert_eq!(m.open_until, None);

    fail(&mut svc, &mut mock).await;
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "the old run was forgotten"
    );
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(
        reject(&mut svc, &mut mock).retry_after(),
        Some(secs(1)),
        "back to the base cool-down"
    );
}

#[tokio::test(start_paused = true)]
async fn the_handle_carries_the_breakers_name() {
    let layer = consecutive(1).name("kafka").build().unwrap();
    let svc = layer.layer(service_fn(echo));
    assert_eq!(layer.handle().name(), "kafka");
    assert_eq!(svc.handle().name(), "kafka");
    assert_eq!(BreakerLayer::new().handle().name(), "breaker");
}

// ===== shared state =====

#[tokio::test(start_paused = true)]
async fn clones_and_every_service_from_one_layer_share_one_breaker() {
    let layer = consecutive(3).open_for(secs(5)).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(echo));

    // axum-style: each request runs on its own clone, in its own task.
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(Err("down"))))
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "down");
    }
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(svc.handle().state(), BreakerState::Open);
    assert_eq!(svc.handle().metrics(), handle.metrics());

    // A new clone, another service from the same layer, and one from a clone of the layer:
    // all see the same open breaker.
    let mut fresh_clone = svc.clone();
    let mut another = layer.layer(service_fn(echo));
    let mut from_layer_clone = layer.clone().layer(service_fn(echo));
    for svc in [&mut fresh_clone, &mut another, &mut from_layer_clone] {
        assert_eq!(echo_rejected(svc).await.retry_after(), Some(secs(5)));
    }
    assert_eq!(handle.metrics().rejected, 3);
}

#[tokio::test(start_paused = true)]
async fn layers_built_separately_do_not_share_state() {
    let settings = consecutive(1);
    let a = settings.clone().build().unwrap();
    let b = settings.build().unwrap();
    let mut svc_a = a.layer(service_fn(echo));
    let mut svc_b = b.layer(service_fn(echo));

    drive(&mut svc_a, Err("down"), 1).await;
    assert_eq!(a.handle().state(), BreakerState::Open);
    assert_eq!(b.handle().state(), BreakerState::Closed);
    drive(&mut svc_b, Ok(1), 1).await;
}

#[tokio::test(start_paused = true)]
async fn rejections_pass_through_a_buffer_recognisably() {
    let layer = consecutive(2).open_for(secs(5)).build().unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .buffer(8)
        .breaker(layer)
        .service(service_fn(echo));

    for _ in 0..2 {
        let err = svc.clone().oneshot(Err("down")).await.unwrap_err();
        assert_eq!(err.to_string(), "down");
    }
    assert_eq!(handle.state(), BreakerState::Open);
    let err = svc.clone().oneshot(Ok(1)).await.unwrap_err();
    let open = err
        .downcast_ref::<BreakerOpen>()
        .expect("BreakerOpen through the buffer");
    assert_eq!(open.retry_after(), Some(secs(5)));
}

// ===== defaults =====

#[tokio::test(start_paused = true)]
async fn defaults_trip_after_five_failures_and_cool_down_about_a_second() {
    let layer = BreakerLayer::new();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Err("down"), 4).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    drive(&mut svc, Err("down"), 1).await;
    assert_eq!(handle.state(), BreakerState::Open);

    let cool_down = echo_rejected(&mut svc).await.retry_after().unwrap();
    // 1 s, less up to 10 % of jitter.
    assert!((ms(900)..=secs(1)).contains(&cool_down), "{cool_down:?}");
}

// ===== tracing =====

#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    message: String,
    fields: BTreeMap<&'static str, String>,
}

/// Collects every event into a shared list.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()));
        // Tests on other threads without a subscriber may have cached "nobody listens" for a
        // callsite in the meantime; ask every callsite again.
        tracing::callsite::rebuild_interest_cache();
        guard
    }

    /// Takes the events at INFO, WARN or ERROR captured so far.
    fn take_loud(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.0.lock().unwrap())
            .into_iter()
            .filter(|e| matches!(e.level, Level::INFO | Level::WARN | Level::ERROR))
            .collect()
    }
}

#[derive(Default)]
struct Fields(BTreeMap<&'static str, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or_default();
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            message,
            fields: fields.0,
        });
    }
}

fn summary(events: &[Captured]) -> Vec<(Level, &str)> {
    events
        .iter()
        .map(|e| (e.level, e.message.as_str()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn transitions_are_logged_warn_on_open_and_info_on_half_open_and_close() {
    let capture = Capture::default();
    let _guard = capture.install();
    let layer = consecutive(2)
        .name("stats")
        .open_for(secs(1))
        .build()
        .unwrap();
    let (mut svc, mut mock, _handle) = spawn(layer);

    for _ in 0..100 {
        succeed(&mut svc, &mut mock).await;
    }
    fail(&mut svc, &mut mock).await;
    assert!(
        capture.take_loud().is_empty(),
        "nothing at info or above for ordinary calls"
    );

    fail(&mut svc, &mut mock).await;
    let events = capture.take_loud();
    assert_eq!(summary(&events), [(Level::WARN, "circuit breaker opened")]);
    let fields = &events[0].fields;
    assert_eq!(fields["breaker"], "stats");
    assert_eq!(fields["from"], "closed");
    assert_eq!(fields["to"], "open");
    assert_eq!(fields["reason"], "consecutive failures");
    assert_eq!(fields["open_for_ms"], "1000");

    for _ in 0..20 {
        reject(&mut svc, &mut mock);
    }
    assert!(
        capture.take_loud().is_empty(),
        "nothing at info or above per rejection"
    );

    time::advance(secs(1)).await;
    succeed(&mut svc, &mut mock).await;
    let events = capture.take_loud();
    assert_eq!(
        summary(&events),
        [
            (Level::INFO, "circuit breaker half-open"),
            (Level::INFO, "circuit breaker closed")
        ]
    );
    assert_eq!(events[1].fields["breaker"], "stats");
    assert_eq!(events[1].fields["from"], "half-open");
    assert_eq!(events[1].fields["to"], "closed");

    for _ in 0..100 {
        succeed(&mut svc, &mut mock).await;
    }
    assert!(capture.take_loud().is_empty());
}

#[tokio::test(start_paused = true)]
async fn failed_probes_and_operator_overrides_are_logged() {
    let capture = Capture::default();
    let _guard = capture.install();
    let layer = consecutive(1)
        .name("redis")
        .open_for(secs(1))
        .backoff(2.0, secs(60))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;
    fail(&mut svc, &mut mock).await;
    let events = capture.take_loud();
    assert_eq!(
        summary(&events),
        [
            (Level::WARN, "circuit breaker opened"),
            (Level::INFO, "circuit breaker half-open"),
            (Level::WARN, "circuit breaker opened"),
        ]
    );
    assert_eq!(events[2].fields["reason"], "probe failed");
    assert_eq!(events[2].fields["open_for_ms"], "2000");

    handle.force_open();
    handle.force_closed();
    handle.reset();
    let events = capture.take_loud();
    assert_eq!(
        summary(&events),
        [
            (Level::WARN, "circuit breaker forced open"),
            (Level::INFO, "circuit breaker forced closed"),
            (Level::INFO, "circuit breaker closed"),
        ]
    );
    assert!(events.iter().all(|e| e.fields["breaker"] == "redis"));
}

// ===== configuration =====

#[test]
fn bad_settings_are_refused_with_the_setting_named() {
    type Spoil = fn(BreakerBuilder) -> BreakerBuilder;
    let cases: &[(&str, Spoil)] = &[
        ("failure_rate", |b| b.failure_rate(0.0)),
        ("failure_rate", |b| b.failure_rate(-0.5)),
        ("failure_rate", |b| b.failure_rate(1.01)),
        ("failure_rate", |b| b.failure_rate(f64::NAN)),
        ("consecutive_failures", |b| b.consecutive_failures(0)),
        ("slow_calls", |b| b.slow_calls(secs(1), 0.0)),
        ("slow_calls", |b| b.slow_calls(secs(1), 2.0)),
        ("slow_calls", |b| b.slow_calls(Duration::ZERO, 0.5)),
        ("window", |b| b.window(Duration::ZERO, 10)),
        ("window", |b| b.window(secs(10), 0)),
        ("window", |b| b.window(secs(10), 1001)),
        ("window", |b| b.window(ms(5), 10)),
        ("minimum_calls", |b| b.minimum_calls(0)),
        ("open_for", |b| b.open_for(Duration::ZERO)),
        ("backoff", |b| b.open_for(secs(10)).backoff(2.0, secs(5))),
        ("backoff", |b| b.backoff(0.5, secs(60))),
        ("backoff", |b| b.backoff(f64::INFINITY, secs(60))),
        ("jitter", |b| b.jitter(1.0)),
        ("jitter", |b| b.jitter(-0.1)),
        ("probes", |b| b.probes(0)),
        ("probe_timeout", |b| b.probe_timeout(Duration::ZERO)),
        ("failure_rate", |b| {
            b.no_consecutive_failures().no_failure_rate()
        }),
    ];
    for (setting, spoil) in cases {
        let err: ConfigError = spoil(BreakerLayer::builder()).build().expect_err(setting);
        assert_eq!(err.setting(), *setting, "{err}");
        assert!(err.to_string().contains(setting), "{err}");
    }
}

#[test]
fn settings_at_the_edge_of_the_range_are_accepted() {
    type Edge = fn(BreakerBuilder) -> BreakerBuilder;
    let cases: &[(&str, Edge)] = &[
        ("rate of 1", |b| b.failure_rate(1.0)),
        ("no jitter", |b| b.jitter(0.0)),
        ("jitter just below 1", |b| b.jitter(0.99)),
        ("1 ms buckets", |b| b.window(secs(1), 1000)),
        ("one bucket", |b| b.window(secs(1), 1)),
        ("constant cool-down", |b| {
            b.open_for(secs(5)).backoff(1.0, secs(5))
        }),
        ("slow calls only", |b| {
            b.no_consecutive_failures()
                .no_failure_rate()
                .slow_calls(ms(1), 1.0)
        }),
        ("consecutive failures only", |b| b.no_failure_rate()),
        ("failure rate only", |b| b.no_consecutive_failures()),
    ];
    for (what, edge) in cases {
        if let Err(err) = edge(BreakerLayer::builder()).build() {
            panic!("{what}: {err}");
        }
    }
}

// ===== the tower contract =====

#[test]
#[should_panic(expected = "Breaker::call without a successful poll_ready")]
fn calling_without_poll_ready_panics() {
    let (mut svc, _mock, _handle) = spawn(BreakerLayer::new());
    drop(svc.call(1));
}

#[tokio::test]
#[should_panic(expected = "Breaker::call without a successful poll_ready")]
async fn one_poll_ready_admits_only_one_call() {
    let (mut svc, _mock, _handle) = spawn(BreakerLayer::new());
    assert_ready_ok!(svc.poll_ready());
    let _first = svc.call(1);
    let _second = svc.call(2);
}

// ===== Send + Sync =====

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    type Classifier = fn(Result<&u32, &BoxError>) -> Outcome;

    assert_send_sync::<Breaker<Mock>>();
    assert_send_sync::<Breaker<Mock, Classifier>>();
    assert_send_sync::<BreakerLayer>();
    assert_send_sync::<BreakerLayer<Classifier>>();
    assert_send_sync::<BreakerBuilder>();
    assert_send_sync::<BreakerHandle>();
    assert_send_sync::<<Breaker<Mock> as Service<u32>>::Future>();
    assert_send_sync::<<Breaker<Mock, Classifier> as Service<u32>>::Future>();
    assert_send_sync::<BreakerOpen>();
    assert_send_sync::<BreakerMetrics>();
    assert_send_sync::<BreakerState>();
    assert_send_sync::<ConfigError>();
};

#[tokio::test(start_paused = true)]
async fn a_long_cool_down_raises_the_default_cap_instead_of_being_refused() {
    let layer = consecutive(1).open_for(secs(3600)).build().unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(3600)));
}
