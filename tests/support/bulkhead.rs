//! Helpers of the bulkhead's tests: a bulkhead over tower-test's mock, and calls that must be
//! admitted or shed.

// Each test binary uses the part it needs.
#![allow(dead_code, unused_macros)]

use std::time::Duration;

use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{BoxError, Service};
use tower_test::mock;

use tanker::bulkhead::future::ResponseFuture;
use tanker::bulkhead::{Bulkhead, BulkheadFull, BulkheadLayer};

pub(crate) type Req = &'static str;
pub(crate) type Res = &'static str;
pub(crate) type MockSvc = mock::Mock<Req, Res>;
pub(crate) type Svc = mock::Spawn<Bulkhead<MockSvc>>;
pub(crate) type Handle = mock::Handle<Req, Res>;

pub(crate) const MAX_WAIT: Duration = Duration::from_millis(100);
pub(crate) const MS: Duration = Duration::from_millis(1);

pub(crate) fn layer(max_in_flight: usize) -> BulkheadLayer {
    BulkheadLayer::new(max_in_flight).expect("a valid compartment")
}

pub(crate) fn layer_with_room(
    max_in_flight: usize,
    room: usize,
    max_wait: Duration,
) -> BulkheadLayer {
    BulkheadLayer::builder()
        .max_in_flight(max_in_flight)
        .waiting_room(room, max_wait)
        .build()
        .expect("a valid compartment")
}

/// A service built by `layer` around a fresh mock, with the mock's handle.
pub(crate) fn spawn(layer: &BulkheadLayer) -> (Svc, Handle) {
    mock::spawn_layer(layer.clone())
}

/// `assert_request_eq!`, failing instead of hanging when the request never comes: tests run on
/// paused time, so the timeout fires as soon as nothing else can happen.
macro_rules! request {
    ($handle:expr, $expect:expr) => {
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            tower_test::assert_request_eq!($handle, $expect,)
        })
        .await
        .unwrap_or_else(|_| panic!("the inner service never received {:?}", $expect))
    };
}
#[allow(unused_imports)] // a binary that never uses `request!`
pub(crate) use request;

/// `ServiceExt::ready`, except that readiness must come at once: without a waiting room, a full
/// compartment never makes a caller wait (and a test fails instead of hanging if it does).
pub(crate) fn ready_now<S: Service<R>, R>(svc: &mut S) -> &mut S
where
    S::Error: std::fmt::Debug,
{
    assert_ready_ok!(task::spawn(()).enter(|cx, _| svc.poll_ready(cx)));
    svc
}

/// Asserts that the inner service has not received any request (yet).
pub(crate) fn assert_no_request(handle: &mut Handle) {
    match handle.poll_request() {
        std::task::Poll::Pending => {}
        std::task::Poll::Ready(Some((req, _))) => {
            panic!("the inner service saw request {req:?}, which should have been shed")
        }
        std::task::Poll::Ready(None) => panic!("the mock service was dropped"),
    }
}

/// Asserts that `err` is the bulkhead's shed error.
pub(crate) fn assert_full(err: BoxError) {
    assert!(
        err.is::<BulkheadFull>(),
        "expected BulkheadFull, got {err:?}"
    );
    assert_eq!(err.to_string(), "bulkhead is full");
}

/// Calls `svc` after a poll_ready that must be ready at once, and asserts the call is shed.
pub(crate) fn assert_shed_now(svc: &mut Svc, req: Req) {
    assert_ready_ok!(
        svc.poll_ready(),
        "poll_ready must not wait for a full compartment"
    );
    let mut fut = task::spawn(svc.call(req));
    assert_full(assert_ready_err!(
        fut.poll(),
        "a shed call must fail at once"
    ));
}

/// Makes a call that is admitted, and returns its (pending) response future.
pub(crate) async fn admit(
    svc: &mut Svc,
    handle: &mut Handle,
    req: Req,
) -> (
    task::Spawn<ResponseFuture<mock::future::ResponseFuture<Res>>>,
    mock::SendResponse<Res>,
) {
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(req));
    assert_pending!(fut.poll(), "an admitted call waits for the inner service");
    let send = request!(handle, req);
    (fut, send)
}

/// A service holding a slot it waited for in the waiting room (the compartment must have one
/// slot): it waited while a first call was in flight, and that call has finished.
pub(crate) async fn holder_of_a_waited_for_slot(bulkhead: &BulkheadLayer) -> (Svc, Handle) {
    let (mut svc, mut handle) = spawn(bulkhead);
    let (mut first, send) = admit(&mut svc, &mut handle, "first").await;
    let mut waiter = svc.clone();
    assert_pending!(waiter.poll_ready());
    send.send_response("done");
    assert_ready_ok!(first.poll());
    assert!(waiter.is_woken());
    assert_ready_ok!(waiter.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 0);
    (waiter, handle)
}
