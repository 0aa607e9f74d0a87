//! Releasing slots: when the inner future ends, when a future or a service is dropped.

use tokio_test::{assert_pending, assert_ready_ok, task};

use crate::support::bulkhead::*;

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
