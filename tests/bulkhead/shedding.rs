//! Max in flight and immediate shedding: a call beyond capacity fails at once.

use tokio_test::{assert_ready_err, assert_ready_ok, task};

use tanker::bulkhead::BulkheadFull;

use crate::support::bulkhead::*;

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
