//! The inner service's readiness: not ready is shed rather than queued, and holds no slot.

use tokio_test::{assert_ready_err, assert_ready_ok, task};

use tanker::bulkhead::BulkheadFull;

use crate::support::bulkhead::*;

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
