//! The handle's counts: in flight, waiting, admitted and shed.

use tokio_test::{assert_pending, assert_ready_ok, task};

use crate::support::bulkhead::*;

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
