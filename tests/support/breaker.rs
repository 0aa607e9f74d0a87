//! Helpers of the breaker's tests: settings without jitter, a breaker over tower-test's mock,
//! and calls that must succeed, fail or be rejected.

// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::future::{ready, Ready};
use std::time::Duration;

use tanker::breaker::{
    Breaker, BreakerBuilder, BreakerHandle, BreakerLayer, BreakerOpen, Classify, ErrorsAsFailures,
};
use tokio::time;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{BoxError, Service, ServiceExt};
use tower_test::{assert_request_eq, mock};

pub(crate) type Mock = mock::Mock<u32, u32>;
pub(crate) type MockHandle = mock::Handle<u32, u32>;
pub(crate) type Svc<C = ErrorsAsFailures> = mock::Spawn<Breaker<Mock, C>>;

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Test settings: exact cool-downs (no jitter).
pub(crate) fn builder() -> BreakerBuilder {
    BreakerLayer::builder().jitter(0.0)
}

/// Trips after `n` failures in a row, and on nothing else.
pub(crate) fn consecutive(n: u32) -> BreakerBuilder {
    builder().consecutive_failures(n).no_failure_rate()
}

/// Trips on the failure rate only.
pub(crate) fn rate(
    rate: f64,
    minimum_calls: u32,
    window: Duration,
    buckets: u32,
) -> BreakerBuilder {
    builder()
        .no_consecutive_failures()
        .failure_rate(rate)
        .minimum_calls(minimum_calls)
        .window(window, buckets)
}

/// A breaker over a mock, the mock's handle, and the breaker's handle.
pub(crate) fn spawn<C: Clone>(layer: BreakerLayer<C>) -> (Svc<C>, MockHandle, BreakerHandle) {
    let handle = layer.handle();
    let (svc, mock) = mock::spawn_layer(layer);
    (svc, mock, handle)
}

/// A call the inner service answers with `Ok`.
pub(crate) async fn succeed<C>(svc: &mut Svc<C>, mock: &mut MockHandle)
where
    C: Classify<u32, BoxError> + Clone,
{
    assert_ready_ok!(svc.poll_ready(), "the breaker lets this call through");
    let response = svc.call(1);
    assert_request_eq!(mock, 1).send_response(2);
    assert_eq!(response.await.expect("the inner service answered"), 2);
}

/// A call the inner service answers with an error.
pub(crate) async fn fail<C>(svc: &mut Svc<C>, mock: &mut MockHandle)
where
    C: Classify<u32, BoxError> + Clone,
{
    fail_with(svc, mock, "connection refused").await;
}

pub(crate) async fn fail_with<C>(svc: &mut Svc<C>, mock: &mut MockHandle, message: &'static str)
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
pub(crate) async fn call_taking<C>(svc: &mut Svc<C>, mock: &mut MockHandle, took: Duration)
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
pub(crate) fn reject<C>(svc: &mut Svc<C>, mock: &mut MockHandle) -> BreakerOpen
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
pub(crate) type Echo = Result<u32, &'static str>;

pub(crate) fn echo(request: Echo) -> Ready<Echo> {
    ready(request)
}

/// `times` calls with the same outcome, each of which must reach the inner service.
pub(crate) async fn drive<S>(svc: &mut S, outcome: Echo, times: usize)
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
pub(crate) async fn echo_rejected<S>(svc: &mut S) -> BreakerOpen
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
