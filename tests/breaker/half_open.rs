//! Half-open: probing, and probes that are cancelled or hang.

use std::task::Poll;

use tanker::breaker::{BreakerOpen, BreakerState};
use tokio::time::{self};
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok, task};
use tower::ServiceExt;
use tower_test::assert_request_eq;

use crate::support::breaker::*;

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
    assert_eq!(handle.counts().probes_in_flight, 3);

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
    assert_eq!(handle.counts().probes_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn closing_after_probes_forgets_the_old_window() {
    let layer = rate(0.5, 4, secs(60), 6).open_for(secs(1)).build().unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    for _ in 0..4 {
        fail(&mut svc, &mut mock).await;
    }
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.counts().window_failures, 4);

    time::advance(secs(1)).await;
    succeed(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    let m = handle.counts();
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
    assert_eq!(handle.counts().times_opened, 2);
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
    assert_eq!(handle.counts().probes_in_flight, 0);
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
    assert_eq!(handle.counts().probes_in_flight, 1);

    drop(probe);
    let m = handle.counts();
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
    assert_eq!(handle.counts().probes_in_flight, 1);
    // A clone of the holder does not inherit its place.
    let mut holder_clone = holder.clone();
    reject(&mut holder_clone, &mut mock);
    reject(&mut svc, &mut mock);

    drop(holder);
    let m = handle.counts();
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
    assert_eq!(handle.counts().probes_in_flight, 1);
    let _inner: Mock = holder.into_inner().into_inner();
    assert_eq!(handle.counts().probes_in_flight, 0);
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
    let m = handle.counts();
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
    assert_eq!(handle.counts().times_opened, 2);

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
    assert_eq!(handle.counts().probes_in_flight, 0);
}
