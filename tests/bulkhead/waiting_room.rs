//! The waiting room: waiters admitted as slots free, shed after their maximum wait, in order.

use tokio::time;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};

use tanker::bulkhead::BulkheadFull;

use crate::support::bulkhead::*;

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
