//! The waiting room's edges: two handles readied for one free slot, waiters that stopped polling,
//! and the longest wait.

use std::time::Duration;

use tokio::time;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};

use crate::support::bulkhead::*;

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
