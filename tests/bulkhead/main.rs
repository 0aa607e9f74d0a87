//! Integration tests for the bulkhead: one compartment per layer value, bounded in-flight calls,
//! immediate shedding, the optional waiting room, slot release, counters and configuration.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tanker::bulkhead::{
    future::ResponseFuture, Bulkhead, BulkheadFull, BulkheadHandle, BulkheadLayer,
};
use tanker::{ConfigError, ServiceBuilderExt};
use tokio::sync::oneshot;
use tokio::time;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::{assert_request_eq, mock};

type Req = &'static str;
type Res = &'static str;
type MockSvc = mock::Mock<Req, Res>;
type Svc = mock::Spawn<Bulkhead<MockSvc>>;
type Handle = mock::Handle<Req, Res>;

const MAX_WAIT: Duration = Duration::from_millis(100);
const MS: Duration = Duration::from_millis(1);

fn layer(max_in_flight: usize) -> BulkheadLayer {
    BulkheadLayer::new(max_in_flight).expect("a valid compartment")
}

fn layer_with_room(max_in_flight: usize, room: usize, max_wait: Duration) -> BulkheadLayer {
    BulkheadLayer::builder()
        .max_in_flight(max_in_flight)
        .waiting_room(room, max_wait)
        .build()
        .expect("a valid compartment")
}

/// A service built by `layer` around a fresh mock, with the mock's handle.
fn spawn(layer: &BulkheadLayer) -> (Svc, Handle) {
    mock::spawn_layer(layer.clone())
}

/// `assert_request_eq!`, failing instead of hanging when the request never comes: tests run on
/// paused time, so the timeout fires as soon as nothing else can happen.
macro_rules! request {
    ($handle:expr, $expect:expr) => {
        time::timeout(Duration::from_secs(60), async {
            assert_request_eq!($handle, $expect)
        })
        .await
        .unwrap_or_else(|_| panic!("the inner service never received {:?}", $expect))
    };
}

/// `ServiceExt::ready`, except that readiness must come at once: without a waiting room, a full
/// compartment never makes a caller wait (and a test fails instead of hanging if it does).
fn ready_now<S: Service<R>, R>(svc: &mut S) -> &mut S
where
    S::Error: std::fmt::Debug,
{
    assert_ready_ok!(task::spawn(()).enter(|cx, _| svc.poll_ready(cx)));
    svc
}

/// Asserts that the inner service has not received any request (yet).
fn assert_no_request(handle: &mut Handle) {
    match handle.poll_request() {
        std::task::Poll::Pending => {}
        std::task::Poll::Ready(Some((req, _))) => {
            panic!("the inner service saw request {req:?}, which should have been shed")
        }
        std::task::Poll::Ready(None) => panic!("the mock service was dropped"),
    }
}

/// Asserts that `err` is the bulkhead's shed error.
fn assert_full(err: BoxError) {
    assert!(
        err.is::<BulkheadFull>(),
        "expected BulkheadFull, got {err:?}"
    );
    assert_eq!(err.to_string(), "bulkhead is full");
}

/// Calls `svc` after a poll_ready that must be ready at once, and asserts the call is shed.
fn assert_shed_now(svc: &mut Svc, req: Req) {
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
async fn admit(
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

// ---------------------------------------------------------------------------------------------
// One compartment per layer value
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn services_built_from_one_layer_share_one_capacity() {
    let bulkhead = layer(1);
    let (mut a, mut handle_a) = spawn(&bulkhead);
    let (mut b, mut handle_b) = spawn(&bulkhead);

    let (_fut, _send) = admit(&mut a, &mut handle_a, "a").await;
    assert_shed_now(&mut b, "b");
    assert_no_request(&mut handle_b);
    assert_eq!(bulkhead.handle().counts().in_flight, 1);
    assert_eq!(b.get_ref().handle().counts().shed, 1);
}

#[tokio::test(start_paused = true)]
async fn clones_made_per_request_share_the_capacity_like_axum_routes() {
    // axum clones the route's service for every request: a per-route bulkhead must still bound.
    let bulkhead = layer(2);
    let (route, mut handle) = mock::pair::<Req, Res>();
    let route = bulkhead.layer(route);

    let mut responses = Vec::new();
    for req in ["r1", "r2"] {
        let mut per_request = route.clone();
        let fut = ready_now(&mut per_request).call(req);
        let send = request!(handle, req);
        responses.push((task::spawn(fut), send));
    }

    let mut third = route.clone();
    let err = ready_now(&mut third).call("r3").await.unwrap_err();
    assert_full(err);
    assert_no_request(&mut handle);

    // Finishing one request lets the next per-request clone in.
    let (mut fut, send) = responses.remove(0);
    send.send_response("done");
    assert_eq!(assert_ready_ok!(fut.poll()), "done");
    let mut fourth = route.clone();
    let fut = ready_now(&mut fourth).call("r4");
    request!(handle, "r4").send_response("ok");
    assert_eq!(fut.await.expect("admitted"), "ok");

    let counters = route.handle();
    assert_eq!(counters.counts().admitted, 3);
    assert_eq!(counters.counts().shed, 1);
    assert_eq!(counters.counts().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_layer_share_one_compartment() {
    let bulkhead = layer(1);
    let (mut a, mut handle_a) = spawn(&bulkhead.clone());
    let (mut b, mut handle_b) = spawn(&bulkhead.clone());

    let (_fut, _send) = admit(&mut a, &mut handle_a, "a").await;
    assert_shed_now(&mut b, "b");
    assert_no_request(&mut handle_b);
    assert_eq!(bulkhead.handle().counts().shed, 1);
}

#[tokio::test(start_paused = true)]
async fn separate_layer_values_are_separate_compartments() {
    let first = layer(1);
    let second = layer(1);
    let (mut a, mut handle_a) = spawn(&first);
    let (mut b, mut handle_b) = spawn(&second);

    let (_fa, _sa) = admit(&mut a, &mut handle_a, "a").await;
    let (_fb, _sb) = admit(&mut b, &mut handle_b, "b").await;
    assert_eq!(first.handle().counts().in_flight, 1);
    assert_eq!(second.handle().counts().in_flight, 1);
    assert_eq!(
        first.handle().counts().shed + second.handle().counts().shed,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn service_builder_ext_adds_the_same_compartment() {
    let bulkhead = layer(1);
    let (inner, mut handle) = mock::pair::<Req, Res>();
    let mut svc = mock::Spawn::new(
        ServiceBuilder::new()
            .bulkhead(bulkhead.clone())
            .service(inner),
    );
    let (other, mut other_handle) = spawn(&bulkhead);
    let mut other = other;

    assert_ready_ok!(svc.poll_ready());
    let _fut = svc.call("a");
    let _send = request!(handle, "a");
    assert_shed_now(&mut other, "b");
    assert_no_request(&mut other_handle);
}

// ---------------------------------------------------------------------------------------------
// Max in flight and immediate shedding
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn calls_beyond_max_in_flight_are_shed_at_once_and_never_reach_the_inner_service() {
    let bulkhead = layer(2);
    let (mut svc, mut handle) = spawn(&bulkhead);

    let (_f1, _s1) = admit(&mut svc, &mut handle, "one").await;
    let (_f2, _s2) = admit(&mut svc, &mut handle, "two").await;
    for req in ["three", "four", "five"] {
        assert_shed_now(&mut svc, req);
    }
    assert_no_request(&mut handle);

    let counters = bulkhead.handle();
    assert_eq!(counters.counts().in_flight, 2);
    assert_eq!(counters.counts().admitted, 2);
    assert_eq!(counters.counts().shed, 3);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_is_ready_at_once_when_full_without_a_waiting_room() {
    let bulkhead = layer(1);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (_f, _s) = admit(&mut svc, &mut handle, "a").await;

    let mut other = svc.clone();
    // Ready, and Ok: a full compartment is a temporary condition, never an error of poll_ready.
    assert_ready_ok!(other.poll_ready());
    // Polling again does not change the outcome nor start waiting.
    assert_ready_ok!(other.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 0);
    let mut fut = task::spawn(other.call("b"));
    assert_full(assert_ready_err!(fut.poll()));
}

#[tokio::test(start_paused = true)]
async fn a_shed_call_holds_no_slot() {
    let bulkhead = layer(1);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut first, send) = admit(&mut svc, &mut handle, "a").await;

    assert_shed_now(&mut svc, "b");
    assert_eq!(bulkhead.handle().counts().in_flight, 1);

    send.send_response("ok");
    assert_ready_ok!(first.poll());
    assert_eq!(bulkhead.handle().counts().in_flight, 0);
    let (_f, _s) = admit(&mut svc, &mut handle, "c").await;
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_the_response_future_and_free_the_slot() {
    let bulkhead = layer(1);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut fut, send) = admit(&mut svc, &mut handle, "a").await;

    send.send_error("dependency failed");
    let err = assert_ready_err!(fut.poll());
    assert!(!err.is::<BulkheadFull>());
    assert_eq!(err.to_string(), "dependency failed");
    assert_eq!(bulkhead.handle().counts().in_flight, 0);
    assert_eq!(bulkhead.handle().counts().admitted, 1);
    assert_eq!(bulkhead.handle().counts().shed, 0);
}

// ---------------------------------------------------------------------------------------------
// Readiness of the inner service
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn inner_not_ready_is_shed_rather_than_queued_and_keeps_no_slot() {
    let bulkhead = layer(1);
    let (mut svc, mut handle) = spawn(&bulkhead);
    handle.allow(0);

    assert_ready_ok!(
        svc.poll_ready(),
        "an unready inner service must not make the caller wait"
    );
    assert_eq!(
        bulkhead.handle().counts().in_flight,
        0,
        "the slot must be given back at once"
    );

    let mut fut = task::spawn(svc.call("a"));
    assert_full(assert_ready_err!(fut.poll()));
    assert_no_request(&mut handle);

    // The only slot is free for another service of the compartment.
    let (mut ready, mut ready_handle) = spawn(&bulkhead);
    let (_f, _s) = admit(&mut ready, &mut ready_handle, "b").await;

    let counters = bulkhead.handle();
    assert_eq!(counters.counts().shed, 1);
    assert_eq!(counters.counts().admitted, 1);
}

#[tokio::test(start_paused = true)]
async fn service_is_admitted_again_once_its_inner_service_is_ready() {
    let bulkhead = layer(1);
    let (mut svc, mut handle) = spawn(&bulkhead);
    handle.allow(0);
    assert_shed_now(&mut svc, "a");

    handle.allow(1);
    let (mut fut, send) = admit(&mut svc, &mut handle, "b").await;
    send.send_response("ok");
    assert_eq!(assert_ready_ok!(fut.poll()), "ok");
    assert_eq!(bulkhead.handle().counts().admitted, 1);
    assert_eq!(bulkhead.handle().counts().shed, 1);
}

#[tokio::test(start_paused = true)]
async fn inner_poll_ready_errors_pass_through_and_hold_no_slot() {
    let bulkhead = layer(1);
    let (mut svc, mut handle) = spawn(&bulkhead);
    handle.send_error("inner broke");

    let err = assert_ready_err!(svc.poll_ready());
    assert!(
        !err.is::<BulkheadFull>(),
        "an inner error must not be disguised as BulkheadFull"
    );
    assert_eq!(err.to_string(), "inner broke");

    let counters = bulkhead.handle();
    assert_eq!(
        counters.counts().in_flight,
        0,
        "a failed poll_ready holds no slot"
    );
    assert_eq!(counters.counts().admitted, 0);
    assert_eq!(counters.counts().shed, 0);

    let (mut other, mut other_handle) = spawn(&bulkhead);
    let (_f, _s) = admit(&mut other, &mut other_handle, "b").await;
}

#[tokio::test(start_paused = true)]
async fn poll_ready_alone_holds_no_slot() {
    // Without a waiting room the slot is taken by `call`, as `LoadShed` decides at `call`: a
    // handle that was polled ready and never called keeps nobody out.
    let bulkhead = layer(1);
    let (mut idle, mut idle_handle) = spawn(&bulkhead);
    assert_ready_ok!(idle.poll_ready());
    assert_ready_ok!(idle.poll_ready());
    assert_eq!(bulkhead.handle().counts().in_flight, 0);

    let (mut other, mut other_handle) = spawn(&bulkhead);
    let (_f, _s) = admit(&mut other, &mut other_handle, "other").await;

    // The slot went to another caller since `idle` was polled: its call is shed at once.
    let mut fut = task::spawn(idle.call("idle"));
    assert_full(assert_ready_err!(fut.poll()));
    assert_no_request(&mut idle_handle);
    let counters = bulkhead.handle();
    assert_eq!(counters.counts().admitted, 1);
    assert_eq!(counters.counts().shed, 1);
    assert_eq!(counters.counts().in_flight, 1);
}

// ---------------------------------------------------------------------------------------------
// Releasing slots
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn slot_is_freed_when_the_inner_future_completes_even_if_the_future_is_kept() {
    let bulkhead = layer(1);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut fut, send) = admit(&mut svc, &mut handle, "a").await;

    send.send_response("ok");
    assert_eq!(assert_ready_ok!(fut.poll()), "ok");
    // `fut` is still alive here.
    assert_eq!(bulkhead.handle().counts().in_flight, 0);
    let (_f, _s) = admit(&mut svc, &mut handle, "b").await;
    assert_eq!(bulkhead.handle().counts().in_flight, 1);
    drop(fut);
    assert_eq!(
        bulkhead.handle().counts().in_flight,
        1,
        "dropping a finished future frees nothing twice"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_a_pending_response_future_frees_its_slot() {
    let bulkhead = layer(1);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (fut, _send) = admit(&mut svc, &mut handle, "a").await;
    assert_eq!(bulkhead.handle().counts().in_flight, 1);

    drop(fut);
    assert_eq!(bulkhead.handle().counts().in_flight, 0);
    assert_eq!(
        bulkhead.handle().counts().admitted,
        1,
        "a cancelled call was still admitted"
    );
    let (_f, _s) = admit(&mut svc, &mut handle, "b").await;
}

#[tokio::test(start_paused = true)]
async fn dropping_an_unpolled_response_future_frees_its_slot() {
    let bulkhead = layer(1);
    let (mut svc, mut handle) = spawn(&bulkhead);
    assert_ready_ok!(svc.poll_ready());
    drop(svc.call("a"));
    let _send = request!(handle, "a");
    assert_eq!(bulkhead.handle().counts().in_flight, 0);
    let (_f, _s) = admit(&mut svc, &mut handle, "b").await;
}

/// A service holding a slot it waited for in the waiting room (the compartment must have one
/// slot): it waited while a first call was in flight, and that call has finished.
async fn holder_of_a_waited_for_slot(bulkhead: &BulkheadLayer) -> (Svc, Handle) {
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

#[tokio::test(start_paused = true)]
async fn dropping_a_service_holding_a_waited_for_slot_frees_it() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (holder, mut handle) = holder_of_a_waited_for_slot(&bulkhead).await;
    assert_eq!(
        bulkhead.handle().counts().in_flight,
        1,
        "a waited-for slot is held until call"
    );

    drop(holder);
    let counters = bulkhead.handle();
    assert_eq!(counters.counts().in_flight, 0);
    assert_eq!(
        counters.counts().admitted,
        1,
        "a slot given back unused is not an admitted call"
    );
    assert_eq!(counters.counts().shed, 0);
    assert_no_request_or_closed(&mut handle);

    let (mut other, mut other_handle) = spawn(&bulkhead);
    let (_f, _s) = admit(&mut other, &mut other_handle, "b").await;
}

/// Like `assert_no_request`, but accepts that the mock itself has been dropped.
fn assert_no_request_or_closed(handle: &mut Handle) {
    if let std::task::Poll::Ready(Some((req, _))) = handle.poll_request() {
        panic!("the inner service saw request {req:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn into_inner_gives_a_waited_for_slot_back() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (holder, _handle) = holder_of_a_waited_for_slot(&bulkhead).await;
    assert_eq!(bulkhead.handle().counts().in_flight, 1);

    let _inner: MockSvc = holder.into_inner().into_inner();
    assert_eq!(bulkhead.handle().counts().in_flight, 0);
    assert_eq!(bulkhead.handle().counts().admitted, 1);
}

#[tokio::test(start_paused = true)]
async fn a_clone_does_not_inherit_a_waited_for_slot() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut holder, mut handle) = holder_of_a_waited_for_slot(&bulkhead).await;

    let mut clone = holder.clone();
    assert_eq!(
        bulkhead.handle().counts().in_flight,
        1,
        "cloning must not take a second slot"
    );
    // The clone has to ask for itself, and the only slot is the holder's: it waits.
    assert_pending!(clone.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 1);
    assert_no_request(&mut handle);

    // The holder still has its slot, and the clone gets it once the holder's call is over.
    let mut fut = task::spawn(holder.call("holder"));
    assert_pending!(fut.poll());
    request!(handle, "holder").send_response("ok");
    assert_pending!(clone.poll_ready());
    assert_ready_ok!(fut.poll());
    assert!(clone.is_woken());
    assert_ready_ok!(clone.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_clone_keeps_the_originals_waited_for_slot() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut holder, mut handle) = holder_of_a_waited_for_slot(&bulkhead).await;
    drop(holder.clone());
    assert_eq!(bulkhead.handle().counts().in_flight, 1);

    let mut fut = task::spawn(holder.call("holder"));
    assert_pending!(fut.poll());
    let _send = request!(handle, "holder");
    assert_eq!(bulkhead.handle().counts().in_flight, 1);
    assert_eq!(bulkhead.handle().counts().admitted, 2);
}

// ---------------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn handle_reports_every_counter() {
    let bulkhead = layer(2);
    let counters = bulkhead.handle();
    assert_eq!(counters.max_in_flight(), 2);
    assert_eq!(
        (
            counters.counts().in_flight,
            counters.counts().waiting,
            counters.counts().admitted,
            counters.counts().shed
        ),
        (0, 0, 0, 0)
    );

    let (mut svc, mut handle) = spawn(&bulkhead);
    assert_eq!(svc.get_ref().handle().max_in_flight(), 2);
    let (mut f1, s1) = admit(&mut svc, &mut handle, "a").await;
    assert_eq!(
        (counters.counts().in_flight, counters.counts().admitted),
        (1, 1)
    );
    let (_f2, _s2) = admit(&mut svc, &mut handle, "b").await;
    assert_eq!(
        (counters.counts().in_flight, counters.counts().admitted),
        (2, 2)
    );
    assert_shed_now(&mut svc, "c");
    assert_eq!(
        (
            counters.counts().in_flight,
            counters.counts().admitted,
            counters.counts().shed
        ),
        (2, 2, 1)
    );

    s1.send_response("ok");
    assert_ready_ok!(f1.poll());
    assert_eq!(
        (
            counters.counts().in_flight,
            counters.counts().admitted,
            counters.counts().shed
        ),
        (1, 2, 1)
    );
    assert_eq!(counters.counts().waiting, 0);

    // Every handle of the compartment reports the same numbers.
    let from_service = svc.get_ref().handle();
    assert_eq!(from_service.counts().in_flight, 1);
    assert_eq!(from_service.counts().admitted, 2);
    assert_eq!(from_service.counts().shed, 1);
    let debug = format!("{counters:?}");
    assert!(
        debug.contains("in_flight: 1") && debug.contains("shed: 1"),
        "{debug}"
    );
}

#[tokio::test(start_paused = true)]
async fn in_flight_counts_a_waited_for_slot_until_its_call_ends() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut holder, mut handle) = holder_of_a_waited_for_slot(&bulkhead).await;
    assert_eq!(bulkhead.handle().counts().in_flight, 1);

    let mut fut = task::spawn(holder.call("holder"));
    assert_pending!(fut.poll());
    assert_eq!(
        bulkhead.handle().counts().in_flight,
        1,
        "the held slot becomes the call's slot"
    );
    request!(handle, "holder").send_response("ok");
    assert_ready_ok!(fut.poll());
    assert_eq!(bulkhead.handle().counts().in_flight, 0);
    assert_eq!(bulkhead.handle().counts().admitted, 2);
}

#[tokio::test(start_paused = true)]
async fn admitted_counts_neither_shed_calls_nor_unused_readiness() {
    let bulkhead = layer(1);

    // A handle polled ready and dropped without a call.
    let (mut dropped, _h) = spawn(&bulkhead);
    assert_ready_ok!(dropped.poll_ready());
    drop(dropped);

    // A call shed because the inner service was not ready.
    let (mut unready, mut unready_handle) = spawn(&bulkhead);
    unready_handle.allow(0);
    assert_shed_now(&mut unready, "unready");

    // One real call, and one shed while it is in flight.
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (_f, _s) = admit(&mut svc, &mut handle, "real").await;
    assert_shed_now(&mut svc, "full");

    // A slot waited for in a waiting room and given back unused.
    let with_room = layer_with_room(1, 1, MAX_WAIT);
    let (holder, _room_handle) = holder_of_a_waited_for_slot(&with_room).await;
    drop(holder);
    assert_eq!(
        with_room.handle().counts().admitted,
        1,
        "only the first call was admitted"
    );

    let counters = bulkhead.handle();
    assert_eq!(counters.counts().admitted, 1);
    assert_eq!(counters.counts().shed, 2);
    assert_eq!(counters.counts().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn admitted_counts_calls_not_readiness() {
    // `admitted` is "calls admitted to the inner service since the compartment was built": a
    // counter a metrics exporter can scrape at any time, so polling ready must not move it.
    let bulkhead = layer(1);
    let counters = bulkhead.handle();
    let (mut svc, mut handle) = spawn(&bulkhead);

    assert_ready_ok!(svc.poll_ready());
    assert_eq!(
        counters.counts().admitted,
        0,
        "readiness alone was reported as an admitted call"
    );
    let mut fut = task::spawn(svc.call("a"));
    assert_pending!(fut.poll());
    assert_eq!(counters.counts().admitted, 1);
    let _send = request!(handle, "a");
    drop(fut);
    assert_eq!(
        counters.counts().admitted,
        1,
        "a cancelled call was still admitted"
    );
}

// ---------------------------------------------------------------------------------------------
// Waiting room
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn waiter_is_admitted_when_a_slot_frees_before_max_wait() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut first, send) = admit(&mut svc, &mut handle, "first").await;

    let mut waiter = svc.clone();
    assert_pending!(waiter.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 1);

    time::advance(MAX_WAIT - MS).await;
    assert!(!waiter.is_woken());
    assert_pending!(waiter.poll_ready());

    send.send_response("ok");
    assert_ready_ok!(first.poll());
    assert!(waiter.is_woken(), "freeing a slot must wake the waiter");
    assert_ready_ok!(waiter.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 0);
    assert_eq!(bulkhead.handle().counts().in_flight, 1);

    let mut fut = task::spawn(waiter.call("waiter"));
    request!(handle, "waiter").send_response("late");
    assert_eq!(assert_ready_ok!(fut.poll()), "late");
    assert_eq!(bulkhead.handle().counts().admitted, 2);
    assert_eq!(bulkhead.handle().counts().shed, 0);
}

#[tokio::test(start_paused = true)]
async fn waiter_is_shed_once_max_wait_has_passed() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (_first, _send) = admit(&mut svc, &mut handle, "first").await;

    let mut waiter = svc.clone();
    assert_pending!(waiter.poll_ready());
    time::advance(MAX_WAIT - MS).await;
    assert_pending!(waiter.poll_ready());
    assert_eq!(bulkhead.handle().counts().shed, 0);

    time::advance(MS).await;
    assert!(
        waiter.is_woken(),
        "the end of the wait must wake the waiter"
    );
    assert_ready_ok!(
        waiter.poll_ready(),
        "a shed waiter is ready, and not an error"
    );
    assert_eq!(bulkhead.handle().counts().waiting, 0);

    let mut fut = task::spawn(waiter.call("waiter"));
    assert_full(assert_ready_err!(fut.poll()));
    assert_no_request(&mut handle);
    assert_eq!(bulkhead.handle().counts().shed, 1);
    assert_eq!(bulkhead.handle().counts().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn max_wait_counts_from_when_the_caller_started_waiting() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (_first, _send) = admit(&mut svc, &mut handle, "first").await;

    // Time passing before a caller waits does not count against it.
    time::advance(MAX_WAIT * 3).await;
    let mut waiter = svc.clone();
    assert_pending!(waiter.poll_ready());
    time::advance(MAX_WAIT - MS).await;
    assert_pending!(waiter.poll_ready());
    time::advance(MS).await;
    assert_ready_ok!(waiter.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn full_waiting_room_sheds_at_once() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (_first, _send) = admit(&mut svc, &mut handle, "first").await;

    let mut waiter = svc.clone();
    assert_pending!(waiter.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 1);

    let mut late = svc.clone();
    assert_shed_now(&mut late, "late");
    assert_no_request(&mut handle);
    assert_eq!(
        bulkhead.handle().counts().waiting,
        1,
        "the shed caller never entered the room"
    );
    assert_eq!(bulkhead.handle().counts().shed, 1);
    assert_pending!(waiter.poll_ready(), "the waiter keeps its place");
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiting_service_leaves_the_room() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (_first, _send) = admit(&mut svc, &mut handle, "first").await;

    let mut waiter = svc.clone();
    assert_pending!(waiter.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 1);
    drop(waiter);
    assert_eq!(bulkhead.handle().counts().waiting, 0);

    // The place is free for the next caller, who waits instead of being shed.
    let mut next = svc.clone();
    assert_pending!(next.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 1);
    assert_eq!(bulkhead.handle().counts().shed, 0);
}

#[tokio::test(start_paused = true)]
async fn each_waiter_is_woken_as_slots_free() {
    let bulkhead = layer_with_room(2, 3, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut f1, s1) = admit(&mut svc, &mut handle, "one").await;
    let (mut f2, s2) = admit(&mut svc, &mut handle, "two").await;

    let mut waiters: Vec<Svc> = (0..3).map(|_| svc.clone()).collect();
    for w in &mut waiters {
        assert_pending!(w.poll_ready());
    }
    assert_eq!(bulkhead.handle().counts().waiting, 3);

    // Only woken waiters are polled, as an executor would: a lost wakeup leaves one stuck.
    let mut admitted = Vec::new();
    let poll_woken = |waiters: &mut Vec<Svc>, admitted: &mut Vec<Svc>| {
        let mut i = 0;
        while i < waiters.len() {
            if waiters[i].is_woken() && waiters[i].poll_ready().is_ready() {
                admitted.push(waiters.remove(i));
            } else {
                i += 1;
            }
        }
    };

    s1.send_response("1");
    assert_ready_ok!(f1.poll());
    poll_woken(&mut waiters, &mut admitted);
    assert_eq!(
        admitted.len(),
        1,
        "one freed slot admits exactly one waiter"
    );
    assert_eq!(bulkhead.handle().counts().waiting, 2);

    s2.send_response("2");
    assert_ready_ok!(f2.poll());
    poll_woken(&mut waiters, &mut admitted);
    assert_eq!(admitted.len(), 2);
    assert_eq!(bulkhead.handle().counts().waiting, 1);

    // The first admitted waiter makes its call and finishes: the last waiter gets its slot.
    let mut w = admitted.remove(0);
    let mut fut = task::spawn(w.call("w1"));
    request!(handle, "w1").send_response("ok");
    assert_ready_ok!(fut.poll());
    poll_woken(&mut waiters, &mut admitted);
    assert!(waiters.is_empty(), "the last waiter was never woken");
    assert_eq!(bulkhead.handle().counts().waiting, 0);
    assert_eq!(bulkhead.handle().counts().shed, 0);
    assert_eq!(bulkhead.handle().counts().in_flight, 2);
}

#[tokio::test(start_paused = true)]
async fn two_slots_freed_together_wake_two_waiters() {
    let bulkhead = layer_with_room(2, 2, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut f1, s1) = admit(&mut svc, &mut handle, "one").await;
    let (mut f2, s2) = admit(&mut svc, &mut handle, "two").await;

    let mut a = svc.clone();
    let mut b = svc.clone();
    assert_pending!(a.poll_ready());
    assert_pending!(b.poll_ready());

    // Both slots free up before either waiter runs.
    s1.send_response("1");
    s2.send_response("2");
    assert_ready_ok!(f1.poll());
    assert_ready_ok!(f2.poll());

    assert!(a.is_woken(), "first waiter not woken");
    assert!(b.is_woken(), "second waiter not woken");
    assert_ready_ok!(a.poll_ready());
    assert_ready_ok!(b.poll_ready());
    let _fa = a.call("a");
    let _fb = b.call("b");
    let _sa = request!(handle, "a");
    let _sb = request!(handle, "b");
    assert_eq!(bulkhead.handle().counts().shed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_woken_waiter_that_is_dropped_passes_the_wakeup_on() {
    let bulkhead = layer_with_room(1, 2, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut first, send) = admit(&mut svc, &mut handle, "first").await;

    let mut a = svc.clone();
    let mut b = svc.clone();
    assert_pending!(a.poll_ready());
    assert_pending!(b.poll_ready());

    send.send_response("ok");
    assert_ready_ok!(first.poll());
    // Whichever waiter was woken goes away without running.
    let (gone, mut left) = if a.is_woken() { (a, b) } else { (b, a) };
    drop(gone);

    assert!(left.is_woken(), "the wakeup of a dropped waiter was lost");
    assert_ready_ok!(left.poll_ready());
    let _fut = left.call("left");
    let _s = request!(handle, "left");
    assert_eq!(bulkhead.handle().counts().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn giving_back_a_waited_for_slot_wakes_the_next_waiter() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (holder, mut handle) = holder_of_a_waited_for_slot(&bulkhead).await;

    let mut next = holder.clone();
    assert_pending!(next.poll_ready());
    drop(holder);

    assert!(
        next.is_woken(),
        "giving back a held slot must wake a waiter"
    );
    assert_ready_ok!(next.poll_ready());
    let mut fut = task::spawn(next.call("next"));
    assert_pending!(fut.poll());
    let _s = request!(handle, "next");
    assert_eq!(bulkhead.handle().counts().admitted, 2);
    assert_eq!(bulkhead.handle().counts().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_freed_slot_goes_to_the_waiter_not_to_a_newcomer() {
    // The waiting room promises "a waiter is admitted when a slot frees before max_wait". A caller
    // that arrives after the slot was freed, but before the woken waiter runs, must not take it;
    // otherwise, under steady load, newcomers keep winning and waiters only ever time out.
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut first, send) = admit(&mut svc, &mut handle, "first").await;
    let mut waiter = svc.clone();
    assert_pending!(waiter.poll_ready());

    send.send_response("ok");
    assert_ready_ok!(first.poll());
    assert!(waiter.is_woken());

    // A newcomer arrives before the woken waiter has run.
    let mut newcomer = svc.clone();
    assert_ready_ok!(newcomer.poll_ready());
    let mut newcomer_call = task::spawn(newcomer.call("newcomer"));
    let newcomer_result = newcomer_call.poll();

    assert_ready_ok!(
        waiter.poll_ready(),
        "the slot freed for the waiter went to a newcomer"
    );
    let mut waiter_call = task::spawn(waiter.call("waiter"));
    assert_pending!(waiter_call.poll());
    let _send = request!(handle, "waiter");
    match newcomer_result {
        std::task::Poll::Ready(Err(err)) => assert_full(err),
        other => panic!("the newcomer was not shed: {:?}", other.map(|r| r.is_ok())),
    }
    assert_no_request(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn a_newcomer_with_room_to_wait_queues_behind_a_woken_waiter() {
    // As above, but the room has a free place: the newcomer enters the room behind the waiter,
    // so the freed slot must still go to the waiter that was there first.
    let bulkhead = layer_with_room(1, 2, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut first, send) = admit(&mut svc, &mut handle, "first").await;
    let mut waiter = svc.clone();
    assert_pending!(waiter.poll_ready());

    send.send_response("ok");
    assert_ready_ok!(first.poll());
    assert!(waiter.is_woken());

    // A newcomer arrives before the woken waiter has run.
    let mut newcomer = svc.clone();
    let newcomer_ready = newcomer.poll_ready();

    assert_ready_ok!(
        waiter.poll_ready(),
        "the slot freed for the waiter went to a newcomer that entered the room after it"
    );
    let mut waiter_call = task::spawn(waiter.call("waiter"));
    assert_pending!(waiter_call.poll());
    let _send = request!(handle, "waiter");
    assert!(
        newcomer_ready.is_pending(),
        "the newcomer should wait its turn in the room"
    );
    assert_eq!(bulkhead.handle().counts().waiting, 1);
    assert_eq!(bulkhead.handle().counts().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_left_unpolled_past_max_wait_does_not_shed_calls_to_an_empty_compartment() {
    // A caller that gives up on readiness (say `timeout(d, svc.ready())`) but keeps its handle
    // leaves that handle in the waiting room until it is polled again or dropped. Once its
    // maximum wait is over it has no claim on a slot: it must not make an empty compartment shed.
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut first, send) = admit(&mut svc, &mut handle, "first").await;
    let mut gave_up = svc.clone();
    assert_pending!(gave_up.poll_ready());

    send.send_response("ok");
    assert_ready_ok!(first.poll());
    time::advance(MAX_WAIT * 2).await;
    assert_eq!(bulkhead.handle().counts().in_flight, 0);

    let mut newcomer = svc.clone();
    assert_ready_ok!(newcomer.poll_ready());
    let mut fut = task::spawn(newcomer.call("newcomer"));
    assert_pending!(
        fut.poll(),
        "an empty compartment shed a call because of a caller that stopped waiting long ago"
    );
    let _send = request!(handle, "newcomer");
    drop(gave_up);
}

#[tokio::test(start_paused = true)]
async fn a_waited_for_slot_is_given_back_when_the_inner_poll_ready_fails() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut first, send) = admit(&mut svc, &mut handle, "first").await;
    let mut waiter = svc.clone();
    assert_pending!(waiter.poll_ready());

    handle.send_error("inner broke");
    send.send_response("ok");
    assert_ready_ok!(first.poll());
    let err = assert_ready_err!(waiter.poll_ready());
    assert!(!err.is::<BulkheadFull>());
    assert_eq!(err.to_string(), "inner broke");

    let counters = bulkhead.handle();
    assert_eq!(
        counters.counts().in_flight,
        0,
        "the slot waited for must be given back"
    );
    assert_eq!(counters.counts().waiting, 0);
    assert_eq!(counters.counts().admitted, 1);
    assert_eq!(counters.counts().shed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_wakes_a_waiter() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (first, _send) = admit(&mut svc, &mut handle, "first").await;

    let mut waiter = svc.clone();
    assert_pending!(waiter.poll_ready());
    drop(first);
    assert!(waiter.is_woken());
    assert_ready_ok!(waiter.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 0);
    assert_eq!(bulkhead.handle().counts().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn waiting_room_admits_at_once_while_a_slot_is_free() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    // No waiting happens, and no time needs to pass.
    let (_f, _s) = admit(&mut svc, &mut handle, "a").await;
    assert_eq!(bulkhead.handle().counts().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn admitted_waiter_whose_inner_service_is_not_ready_is_shed() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut holder, mut holder_handle) = spawn(&bulkhead);
    let (first, _send) = admit(&mut holder, &mut holder_handle, "first").await;

    let (mut waiter, mut waiter_handle) = spawn(&bulkhead);
    waiter_handle.allow(0);
    assert_pending!(waiter.poll_ready());
    drop(first);
    assert!(waiter.is_woken());
    assert_ready_ok!(waiter.poll_ready());
    assert_eq!(
        bulkhead.handle().counts().in_flight,
        0,
        "the waiter's slot must not be kept"
    );
    let mut fut = task::spawn(waiter.call("w"));
    assert_full(assert_ready_err!(fut.poll()));
    assert_no_request(&mut waiter_handle);
}

// ---------------------------------------------------------------------------------------------
// Waiting room: readiness for one free slot, abandoned waiters, extreme waits
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn two_handles_readied_for_one_free_slot_the_second_waits_instead_of_being_shed() {
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut a, mut handle) = spawn(&bulkhead);
    let mut b = a.clone();

    assert_ready_ok!(a.poll_ready());
    assert_pending!(
        b.poll_ready(),
        "the only slot is a's: b must wait in the empty room, not be readied to be shed"
    );
    assert_eq!(bulkhead.handle().counts().waiting, 1);

    let mut fut_a = task::spawn(a.call("a"));
    assert_pending!(fut_a.poll());
    request!(handle, "a").send_response("done");
    assert_ready_ok!(fut_a.poll());

    assert!(b.is_woken());
    assert_ready_ok!(b.poll_ready());
    let mut fut_b = task::spawn(b.call("b"));
    assert_pending!(fut_b.poll());
    request!(handle, "b").send_response("done");
    assert_ready_ok!(fut_b.poll());
    let counters = bulkhead.handle();
    assert_eq!((counters.counts().admitted, counters.counts().shed), (2, 0));
    assert_eq!(
        (counters.counts().in_flight, counters.counts().waiting),
        (0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_stopped_polling_does_not_swallow_the_wakeup_of_the_one_behind() {
    let bulkhead = layer_with_room(1, 2, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut first, send) = admit(&mut svc, &mut handle, "first").await;

    // `abandoned` waits, then its `ready()` future is dropped (a timeout, a select!) and the
    // handle is kept but never polled again.
    let mut abandoned = svc.clone();
    assert_pending!(abandoned.poll_ready());
    let mut behind = svc.clone();
    assert_pending!(behind.poll_ready());
    assert_eq!(bulkhead.handle().counts().waiting, 2);

    send.send_response("ok");
    assert_ready_ok!(first.poll());
    assert!(
        behind.is_woken(),
        "the freed slot's wake-up went to the waiter that stopped polling"
    );
    assert_ready_ok!(behind.poll_ready());
    let mut fut = task::spawn(behind.call("behind"));
    assert_pending!(fut.poll());
    let _send = request!(handle, "behind");
    assert_eq!(bulkhead.handle().counts().shed, 0);
    drop(abandoned);
    assert_eq!(bulkhead.handle().counts().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_waiter_holds_its_place_no_longer_than_its_max_wait() {
    // A room of one, taken by a waiter that stopped polling: once its maximum wait is over, the
    // next caller gets the place and waits, instead of everybody being shed.
    let bulkhead = layer_with_room(1, 1, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut first, send) = admit(&mut svc, &mut handle, "first").await;
    let mut abandoned = svc.clone();
    assert_pending!(abandoned.poll_ready());

    time::advance(MAX_WAIT).await;
    assert_eq!(
        bulkhead.handle().counts().waiting,
        0,
        "a place past its max wait is not a waiter"
    );
    let mut next = svc.clone();
    assert_pending!(
        next.poll_ready(),
        "the stale place must be free for a new waiter"
    );
    assert_eq!(bulkhead.handle().counts().waiting, 1);
    assert_eq!(bulkhead.handle().counts().shed, 0);

    send.send_response("ok");
    assert_ready_ok!(first.poll());
    assert!(next.is_woken());
    assert_ready_ok!(next.poll_ready());
    let mut fut = task::spawn(next.call("next"));
    assert_pending!(fut.poll());
    let _send = request!(handle, "next");

    // The abandoned handle comes back late: its wait is over, its place gone, and leaving the
    // room again changes nobody's count.
    assert_ready_ok!(abandoned.poll_ready());
    assert_full(assert_ready_err!(task::spawn(abandoned.call("late")).poll()));
    assert_eq!(bulkhead.handle().counts().waiting, 0);
    assert_eq!(bulkhead.handle().counts().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn a_newcomer_behind_an_abandoned_waiter_takes_the_free_slot_when_the_claim_ends() {
    // The freed slot woke the abandoned waiter, which never runs. A newcomer queues behind it (it
    // cannot tell an abandoned waiter from one about to run), but only until that waiter's claim
    // ends: then it takes the free slot, well before its own maximum wait.
    let bulkhead = layer_with_room(1, 2, MAX_WAIT);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (first, _send) = admit(&mut svc, &mut handle, "first").await;
    let mut abandoned = svc.clone();
    assert_pending!(abandoned.poll_ready());
    time::advance(MAX_WAIT / 2).await;
    drop(first);

    let mut newcomer = svc.clone();
    assert_pending!(newcomer.poll_ready());
    time::advance(MAX_WAIT / 2).await;
    assert!(newcomer.is_woken());
    assert_ready_ok!(newcomer.poll_ready());
    let mut fut = task::spawn(newcomer.call("newcomer"));
    assert_pending!(fut.poll());
    let _send = request!(handle, "newcomer");
    assert_eq!(bulkhead.handle().counts().shed, 0);
    drop(abandoned);
}

#[tokio::test(start_paused = true)]
async fn the_longest_max_wait_is_clamped_not_a_panic() {
    let bulkhead = layer_with_room(1, 1, Duration::MAX);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let (mut first, send) = admit(&mut svc, &mut handle, "first").await;
    let mut waiter = svc.clone();
    assert_pending!(waiter.poll_ready());
    time::advance(Duration::from_secs(86_400 * 365)).await;
    assert_pending!(waiter.poll_ready(), "a year is well within the wait");
    assert_eq!(bulkhead.handle().counts().waiting, 1);

    send.send_response("ok");
    assert_ready_ok!(first.poll());
    assert_ready_ok!(waiter.poll_ready());
    let mut fut = task::spawn(waiter.call("waiter"));
    assert_pending!(fut.poll());
    let _send = request!(handle, "waiter");
}

// ---------------------------------------------------------------------------------------------
// Panics in the inner service
// ---------------------------------------------------------------------------------------------

/// An inner service whose `call` panics for a request of `true`.
fn panicking_inner() -> impl Service<
    bool,
    Response = (),
    Error = Infallible,
    Future = std::future::Ready<Result<(), Infallible>>,
> + Clone {
    service_fn(|boom: bool| {
        assert!(!boom, "the inner call panicked");
        std::future::ready(Ok(()))
    })
}

async fn panic_in_inner_call_gives_the_slot_back(bulkhead: BulkheadLayer) {
    let cap = bulkhead.handle().max_in_flight();
    let mut svc = bulkhead.layer(panicking_inner());
    for _ in 0..cap + 2 {
        svc.ready().await.expect("never an error");
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| svc.call(true)));
        assert!(unwound.is_err(), "the inner call should have panicked");
        assert_eq!(
            bulkhead.handle().counts().in_flight,
            0,
            "a panic leaked a slot"
        );
    }
    svc.ready().await.expect("never an error");
    svc.call(false)
        .await
        .expect("after panics, calls must still get through");
    assert_eq!(bulkhead.handle().counts().shed, 0);
    assert_eq!(bulkhead.handle().counts().admitted, cap as u64 + 3);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_inner_call_gives_the_slot_back() {
    panic_in_inner_call_gives_the_slot_back(layer(2)).await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_inner_call_gives_a_held_slot_back() {
    panic_in_inner_call_gives_the_slot_back(layer_with_room(2, 1, MAX_WAIT)).await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_inner_future_gives_the_slot_back() {
    let bulkhead = layer(1);
    let mut svc = bulkhead.layer(service_fn(|boom: bool| async move {
        assert!(!boom, "the inner future panicked");
        Ok::<_, Infallible>(())
    }));
    for _ in 0..3 {
        let fut = svc.ready().await.expect("never an error").call(true);
        let unwound = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut)).await;
        assert!(unwound.is_err());
    }
    svc.ready().await.unwrap().call(false).await.unwrap();
    assert_eq!(bulkhead.handle().counts().in_flight, 0);
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn zero_max_in_flight_is_refused() {
    let err: ConfigError = BulkheadLayer::new(0).unwrap_err();
    assert_eq!(err.setting(), "max_in_flight");
    let message = err.to_string();
    assert!(message.contains("max_in_flight"), "{message}");
    assert!(message.contains("at least 1"), "{message}");

    let err = BulkheadLayer::builder()
        .max_in_flight(0)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "max_in_flight");
}

#[test]
fn waiting_room_with_no_capacity_is_refused() {
    let err = BulkheadLayer::builder()
        .waiting_room(0, MAX_WAIT)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "waiting_room");
    let message = err.to_string();
    assert!(message.contains("capacity must be at least 1"), "{message}");
    assert!(message.contains("no_waiting_room()"), "{message}");
}

#[test]
fn waiting_room_with_zero_max_wait_is_refused() {
    let err = BulkheadLayer::builder()
        .waiting_room(4, Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "waiting_room");
    let message = err.to_string();
    assert!(message.contains("max_wait"), "{message}");
    assert!(message.contains("no_waiting_room()"), "{message}");
}

#[test]
fn no_waiting_room_undoes_a_waiting_room() {
    let layer = BulkheadLayer::builder()
        .waiting_room(0, Duration::ZERO)
        .no_waiting_room()
        .max_in_flight(3)
        .build()
        .expect("no waiting room is valid");
    assert_eq!(layer.handle().max_in_flight(), 3);
}

#[test]
fn builder_defaults_to_64_in_flight() {
    let layer = BulkheadLayer::builder()
        .build()
        .expect("defaults are valid");
    assert_eq!(layer.handle().max_in_flight(), 64);
    assert_eq!(layer.handle().counts().waiting, 0);
}

// ---------------------------------------------------------------------------------------------
// The tower contract
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
#[should_panic(expected = "poll_ready")]
async fn call_without_poll_ready_panics() {
    let (mut svc, _handle) = spawn(&layer(1));
    drop(svc.call("a"));
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "poll_ready")]
async fn a_second_call_after_one_poll_ready_panics() {
    let (mut svc, _handle) = spawn(&layer(2));
    assert_ready_ok!(svc.poll_ready());
    let _first = svc.call("a");
    drop(svc.call("b"));
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "poll_ready")]
async fn a_clone_of_a_ready_service_panics_when_called_without_poll_ready() {
    let (mut svc, _handle) = spawn(&layer(1));
    assert_ready_ok!(svc.poll_ready());
    let mut clone = svc.clone();
    drop(clone.call("a"));
}

#[test]
fn public_types_are_send_sync_and_static() {
    fn send_sync<T: Send + Sync>() {}
    fn send_sync_static<T: Send + Sync + 'static>() {}

    // For any inner service and future, not only the mock.
    fn generic<S: Send + Sync, F: Send + Sync>() {
        send_sync::<Bulkhead<S>>();
        send_sync::<ResponseFuture<F>>();
    }
    fn generic_static<S: Send + Sync + 'static, F: Send + Sync + 'static>() {
        send_sync_static::<Bulkhead<S>>();
        send_sync_static::<ResponseFuture<F>>();
    }
    generic::<MockSvc, mock::future::ResponseFuture<Res>>();
    generic_static::<MockSvc, mock::future::ResponseFuture<Res>>();

    send_sync_static::<BulkheadLayer>();
    send_sync_static::<BulkheadHandle>();
    send_sync_static::<BulkheadFull>();
    send_sync_static::<ConfigError>();
    send_sync_static::<<Bulkhead<MockSvc> as Service<Req>>::Future>();
    assert_eq!(std::mem::size_of::<BulkheadFull>(), 0);
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

/// An inner service that records how many of its calls run at once, and yields a few times.
#[derive(Clone, Default)]
struct Gauge {
    current: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Gauge {
    fn service(
        &self,
    ) -> impl Service<
        u32,
        Response = u32,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<u32, Infallible>> + Send + 'static,
    > + Clone
           + Send
           + Sync
           + 'static {
        let gauge = self.clone();
        service_fn(move |n: u32| {
            let now = gauge.current.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.peak.fetch_max(now, Ordering::SeqCst);
            let current = gauge.current.clone();
            async move {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                current.fetch_sub(1, Ordering::SeqCst);
                Ok(n)
            }
        })
    }
}

async fn hammer(bulkhead: BulkheadLayer, tasks: usize, calls: usize) -> (Gauge, usize, usize) {
    let gauge = Gauge::default();
    let svc = bulkhead.layer(gauge.service());
    let mut joins = Vec::new();
    for t in 0..tasks {
        let svc = svc.clone();
        joins.push(tokio::spawn(async move {
            let (mut ok, mut shed) = (0, 0);
            let mut kept = svc.clone();
            for i in 0..calls {
                // Half the calls use a fresh clone per request (axum style), half a kept one.
                let mut fresh = svc.clone();
                let svc = if (t + i) % 2 == 0 {
                    &mut fresh
                } else {
                    &mut kept
                };
                match svc
                    .ready()
                    .await
                    .expect("never an error")
                    .call(i as u32)
                    .await
                {
                    Ok(n) => {
                        assert_eq!(n, i as u32);
                        ok += 1;
                    }
                    Err(err) => {
                        assert!(err.is::<BulkheadFull>(), "unexpected error {err}");
                        shed += 1;
                    }
                }
            }
            (ok, shed)
        }));
    }
    // A guard, not a sleep: it only fires if a caller hangs (the run takes well under a second).
    let all = time::timeout(Duration::from_secs(120), async {
        let (mut ok, mut shed) = (0, 0);
        for join in joins {
            let (o, s) = join.await.expect("task panicked");
            ok += o;
            shed += s;
        }
        (ok, shed)
    });
    let (ok, shed) = all.await.expect("a caller never got an answer");
    (gauge, ok, shed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clones_never_exceed_max_in_flight() {
    const MAX: usize = 3;
    const TASKS: usize = 64;
    const CALLS: usize = 200;
    let bulkhead = layer(MAX);
    let counters = bulkhead.handle();

    let (gauge, ok, shed) = hammer(bulkhead, TASKS, CALLS).await;

    let peak = gauge.peak.load(Ordering::SeqCst);
    assert!(
        peak <= MAX,
        "the inner service saw {peak} calls at once, max is {MAX}"
    );
    assert!(peak >= 1);
    assert_eq!(ok + shed, TASKS * CALLS);
    assert_eq!(counters.counts().admitted as usize, ok);
    assert_eq!(counters.counts().shed as usize, shed);
    assert_eq!(
        counters.counts().admitted + counters.counts().shed,
        (TASKS * CALLS) as u64
    );
    // 64 tasks on 2 workers, each call yielding while it holds its slot: some must be shed.
    assert!(shed > 0, "the stress test never filled the compartment");
    assert_eq!(counters.counts().in_flight, 0);
    assert_eq!(gauge.current.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiters_never_exceed_max_in_flight() {
    const MAX: usize = 2;
    const TASKS: usize = 32;
    const CALLS: usize = 100;
    // The wait is long enough never to end while calls keep finishing; it is not a sleep.
    let bulkhead = layer_with_room(MAX, 8, Duration::from_secs(10));
    let counters = bulkhead.handle();

    let (gauge, ok, shed) = hammer(bulkhead, TASKS, CALLS).await;

    let peak = gauge.peak.load(Ordering::SeqCst);
    assert!(
        peak <= MAX,
        "the inner service saw {peak} calls at once, max is {MAX}"
    );
    assert_eq!(ok + shed, TASKS * CALLS);
    assert_eq!(counters.counts().admitted as usize, ok);
    assert_eq!(counters.counts().shed as usize, shed);
    assert_eq!(counters.counts().in_flight, 0);
    assert_eq!(counters.counts().waiting, 0);
    assert_eq!(gauge.current.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// Model-based property test
// ---------------------------------------------------------------------------------------------

mod model {
    //! Random sequences of polls, calls, completions, cancellations and dropped handles on three
    //! clones of one compartment (no waiting room), checked against a reference model after
    //! every step.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        PollReady(usize),
        Call(usize),
        Complete(usize),
        Cancel(usize),
        DropService(usize),
    }

    /// What the model expects of a handle's next `call`.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Expect {
        /// Not polled since its last call: calling would panic.
        Idle,
        /// Polled while a slot looked free: `call` takes one if there still is one.
        Ready,
        /// Polled while full: `call` is shed.
        Shed,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..3usize).prop_map(Op::PollReady),
            3 => (0..3usize).prop_map(Op::Call),
            2 => any::<usize>().prop_map(Op::Complete),
            1 => any::<usize>().prop_map(Op::Cancel),
            1 => (0..3usize).prop_map(Op::DropService),
        ]
    }

    type Gate = oneshot::Receiver<()>;

    proptest! {
        #[test]
        fn counters_follow_a_reference_model(max in 1..4usize, ops in prop::collection::vec(op(), 1..60)) {
            let bulkhead = layer(max);
            let counters = bulkhead.handle();
            let base = bulkhead.layer(service_fn(|gate: Gate| async move {
                gate.await.map_err(|_| "gate dropped")
            }));
            let mut services: Vec<_> = (0..3).map(|_| (mock::Spawn::new(base.clone()), Expect::Idle)).collect();
            let mut calls = Vec::new();
            let (mut in_flight, mut admitted, mut shed) = (0usize, 0u64, 0u64);

            for op in ops {
                match op {
                    Op::PollReady(i) => {
                        let (svc, state) = &mut services[i];
                        let ready = svc.poll_ready::<Gate>();
                        prop_assert!(matches!(ready, std::task::Poll::Ready(Ok(()))));
                        if *state == Expect::Idle {
                            *state = if in_flight < max { Expect::Ready } else { Expect::Shed };
                        }
                    }
                    Op::Call(i) => {
                        let (svc, state) = &mut services[i];
                        if *state == Expect::Idle {
                            continue;
                        }
                        let (tx, rx) = oneshot::channel();
                        let mut fut = task::spawn(svc.call(rx));
                        if *state == Expect::Ready && in_flight < max {
                            prop_assert!(fut.poll().is_pending());
                            admitted += 1;
                            in_flight += 1;
                            calls.push((fut, tx));
                        } else {
                            match fut.poll() {
                                std::task::Poll::Ready(Err(err)) => prop_assert!(err.is::<BulkheadFull>()),
                                other => prop_assert!(false, "expected shed, got {:?}", other.map(|r| r.is_ok())),
                            }
                            shed += 1;
                        }
                        *state = Expect::Idle;
                    }
                    Op::Complete(k) if !calls.is_empty() => {
                        let (mut fut, tx) = calls.remove(k % calls.len());
                        tx.send(()).expect("call alive");
                        prop_assert!(matches!(fut.poll(), std::task::Poll::Ready(Ok(()))));
                        in_flight -= 1;
                    }
                    Op::Cancel(k) if !calls.is_empty() => {
                        drop(calls.remove(k % calls.len()));
                        in_flight -= 1;
                    }
                    Op::Complete(_) | Op::Cancel(_) => continue,
                    Op::DropService(i) => {
                        services[i] = (mock::Spawn::new(base.clone()), Expect::Idle);
                    }
                }
                prop_assert!(in_flight <= max);
                prop_assert_eq!(counters.counts().in_flight, in_flight);
                prop_assert_eq!(counters.counts().admitted, admitted);
                prop_assert_eq!(counters.counts().shed, shed);
                prop_assert_eq!(counters.counts().waiting, 0);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Extreme settings
// ---------------------------------------------------------------------------------------------

mod extremes {
    //! Every builder setting at its extremes: the builder refuses it with a `ConfigError` naming
    //! the setting, or the compartment works, and no call panics later.
    use super::*;
    use proptest::prelude::*;

    fn count() -> impl Strategy<Value = usize> {
        prop_oneof![
            Just(0),
            Just(1),
            Just(2),
            Just(u32::MAX as usize),
            Just(u32::MAX as usize + 1),
            Just(usize::MAX),
            1..5usize,
        ]
    }

    fn wait() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::from_nanos(1)),
            Just(MAX_WAIT),
            Just(Duration::from_secs(u64::MAX)),
            Just(Duration::MAX),
        ]
    }

    /// What the builder must say of these settings: `None` when they are valid.
    fn refused(max: usize, room: Option<(usize, Duration)>) -> Option<&'static str> {
        if max == 0 || max > u32::MAX as usize {
            return Some("max_in_flight");
        }
        match room {
            Some((capacity, max_wait))
                if capacity == 0 || capacity > u32::MAX as usize || max_wait.is_zero() =>
            {
                Some("waiting_room")
            }
            _ => None,
        }
    }

    /// Fills the compartment (at most a few slots), makes one caller more wait or be shed, lets
    /// time pass, frees everything, and checks the counters.
    async fn exercise(bulkhead: BulkheadLayer, room: Option<(usize, Duration)>) {
        let counters = bulkhead.handle();
        let fill = counters.max_in_flight().min(3);
        let (mut svc, mut handle) = spawn(&bulkhead);
        let mut calls = Vec::new();
        for _ in 0..fill {
            calls.push(admit(&mut svc, &mut handle, "fill").await);
        }
        let mut extra = svc.clone();
        let extra_ready = extra.poll_ready();
        time::advance(Duration::from_secs(86_400)).await;
        let _ = extra.poll_ready();
        for (fut, send) in calls.drain(..) {
            send.send_response("ok");
            drop(fut);
        }
        let _ = extra.poll_ready();
        drop(extra);
        assert_eq!(counters.counts().in_flight, 0);
        assert_eq!(counters.counts().waiting, 0);
        assert_eq!(counters.counts().admitted, fill as u64);
        if counters.max_in_flight() > fill {
            assert!(extra_ready.is_ready(), "a free slot, yet the caller waited");
        } else if room.is_none() {
            assert!(extra_ready.is_ready(), "no room, yet the caller waited");
        }
        // The compartment still works afterwards.
        let (_f, _s) = admit(&mut svc, &mut handle, "after").await;
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn extreme_settings_are_refused_or_work(
            max in count(),
            room in prop::option::of((count(), wait())),
        ) {
            let mut builder = BulkheadLayer::builder().max_in_flight(max);
            if let Some((capacity, max_wait)) = room {
                builder = builder.waiting_room(capacity, max_wait);
            }
            match (builder.build(), refused(max, room)) {
                (Err(err), Some(setting)) => {
                    prop_assert_eq!(err.setting(), setting);
                    prop_assert!(!err.to_string().is_empty());
                }
                (Ok(bulkhead), None) => {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .start_paused(true)
                        .build()
                        .unwrap();
                    runtime.block_on(exercise(bulkhead, room));
                }
                (Ok(_), Some(setting)) => prop_assert!(false, "{} was accepted", setting),
                (Err(err), None) => prop_assert!(false, "valid settings refused: {}", err),
            }
        }
    }
}
