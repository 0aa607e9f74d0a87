//! The handle: metrics, forcing, reset; state shared by clones of one layer.

use tanker::breaker::{BreakerLayer, BreakerOpen, BreakerState};
use tanker::ServiceBuilderExt;
use tokio::time::{self, Instant};
use tokio_test::assert_ready_ok;
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};
use tower_test::assert_request_eq;

use crate::support::breaker::*;

// ===== the handle =====

#[tokio::test(start_paused = true)]
async fn metrics_track_calls_rejections_probes_and_transitions() {
    let t0 = Instant::now();
    let layer = consecutive(3).open_for(secs(5)).build().unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    let m = handle.counts();
    assert_eq!(m.state, BreakerState::Closed);
    assert_eq!(
        (m.window_calls, m.window_failures, m.window_slow_calls),
        (0, 0, 0)
    );
    assert_eq!(
        (m.successes, m.failures, m.slow_calls, m.ignored, m.rejected),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(
        (m.consecutive_failures, m.times_opened, m.probes_in_flight),
        (0, 0, 0)
    );
    assert_eq!((m.last_transition, m.open_until), (t0, None));

    succeed(&mut svc, &mut mock).await;
    succeed(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    let m = handle.counts();
    assert_eq!((m.window_calls, m.window_failures), (3, 1));
    assert_eq!((m.successes, m.failures, m.consecutive_failures), (2, 1, 1));

    time::advance(secs(1)).await;
    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    let tripped = Instant::now();
    reject(&mut svc, &mut mock);
    reject(&mut svc, &mut mock);
    let m = handle.counts();
    assert_eq!(m.state, BreakerState::Open);
    assert_eq!((m.failures, m.consecutive_failures), (3, 3));
    assert_eq!((m.rejected, m.times_opened), (2, 1));
    assert_eq!(m.last_transition, tripped);
    assert_eq!(m.open_until, Some(tripped + secs(5)));

    time::advance(secs(5)).await;
    assert_ready_ok!(svc.poll_ready());
    let probe = svc.call(1);
    let send = assert_request_eq!(mock, 1);
    let m = handle.counts();
    assert_eq!(m.state, BreakerState::HalfOpen);
    assert_eq!((m.probes_in_flight, m.open_until), (1, None));

    send.send_response(0);
    probe.await.unwrap();
    let m = handle.counts();
    assert_eq!(m.state, BreakerState::Closed);
    assert_eq!(
        (m.window_calls, m.window_failures, m.consecutive_failures),
        (0, 0, 0)
    );
    assert_eq!(
        (m.successes, m.failures),
        (2, 3),
        "probes are not in the all-time counters"
    );
    assert_eq!((m.probes_in_flight, m.rejected, m.times_opened), (0, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn window_metrics_drop_calls_that_slid_out_of_the_window() {
    let layer = rate(0.5, 100, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Ok(1), 5).await;
    drive(&mut svc, Err("down"), 5).await;
    assert_eq!(handle.counts().window_calls, 10);

    time::advance(secs(11)).await;
    let m = handle.counts();
    assert_eq!(
        (m.window_calls, m.window_failures),
        (0, 0),
        "eleven seconds later a ten-second window is empty"
    );
    assert_eq!((m.successes, m.failures), (5, 5));
}

#[tokio::test(start_paused = true)]
async fn last_transition_is_the_instant_of_each_change() {
    let built = Instant::now();
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(5)).build().unwrap());
    assert_eq!(handle.last_transition(), built);

    time::advance(secs(3)).await;
    succeed(&mut svc, &mut mock).await;
    assert_eq!(
        handle.last_transition(),
        built,
        "a call is not a transition"
    );
    fail(&mut svc, &mut mock).await;
    let opened = built + secs(3);
    assert_eq!(handle.last_transition(), opened);

    time::advance(secs(2)).await;
    reject(&mut svc, &mut mock);
    assert_eq!(
        handle.last_transition(),
        opened,
        "a rejection is not a transition"
    );

    time::advance(secs(3)).await;
    // The cool-down ended at +8 s, but the change happens when the next call arrives.
    assert_eq!(handle.state(), BreakerState::Open);
    time::advance(secs(1)).await;
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    assert_eq!(handle.last_transition(), built + secs(9));

    time::advance(secs(1)).await;
    let probe = svc.call(1);
    assert_request_eq!(mock, 1).send_response(0);
    probe.await.unwrap();
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.last_transition(), built + secs(10));

    time::advance(secs(1)).await;
    handle.force_open();
    assert_eq!(handle.last_transition(), built + secs(11));
}

#[tokio::test(start_paused = true)]
async fn force_open_rejects_every_call_without_a_retry_time() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(1)).build().unwrap());
    handle.force_open();
    assert_eq!(handle.state(), BreakerState::ForcedOpen);

    mock.allow(0);
    let open = reject(&mut svc, &mut mock);
    assert_eq!(open.retry_after(), None);
    assert!(open.to_string().contains("forced open"), "{open}");

    // No cool-down ends a forced opening.
    time::advance(secs(3600)).await;
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), None);
    let m = handle.counts();
    assert_eq!(m.state, BreakerState::ForcedOpen);
    assert_eq!((m.rejected, m.times_opened, m.open_until), (2, 0, None));

    mock.allow(u64::MAX);
    handle.reset();
    assert_eq!(handle.state(), BreakerState::Closed);
    succeed(&mut svc, &mut mock).await;
}

#[tokio::test(start_paused = true)]
async fn force_closed_lets_every_call_through_and_never_trips() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(60)).build().unwrap());
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);

    handle.force_closed();
    assert_eq!(handle.state(), BreakerState::ForcedClosed);
    for _ in 0..50 {
        fail(&mut svc, &mut mock).await;
    }
    succeed(&mut svc, &mut mock).await;
    let m = handle.counts();
    assert_eq!(m.state, BreakerState::ForcedClosed);
    assert_eq!(
        (m.failures, m.successes, m.times_opened),
        (1, 0, 1),
        "nothing counted"
    );

    handle.reset();
    assert_eq!(handle.state(), BreakerState::Closed);
    fail(&mut svc, &mut mock).await;
    assert_eq!(
        handle.state(),
        BreakerState::Open,
        "counting again after the reset"
    );
}

#[tokio::test(start_paused = true)]
async fn reset_closes_with_an_empty_window_and_the_base_cool_down() {
    let layer = consecutive(2)
        .open_for(secs(1))
        .backoff(2.0, secs(60))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;
    fail(&mut svc, &mut mock).await; // failed probe: cool-down 2 s
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(2)));

    handle.reset();
    let m = handle.counts();
    assert_eq!(m.state, BreakerState::Closed);
    assert_eq!((m.window_calls, m.consecutive_failures), (0, 0));
    assert_eq!(m.open_until, None);

    fail(&mut svc, &mut mock).await;
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "the old run was forgotten"
    );
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(
        reject(&mut svc, &mut mock).retry_after(),
        Some(secs(1)),
        "back to the base cool-down"
    );
}

#[tokio::test(start_paused = true)]
async fn the_handle_carries_the_breakers_name() {
    let layer = consecutive(1).name("kafka").build().unwrap();
    let svc = layer.layer(service_fn(echo));
    assert_eq!(layer.handle().name(), "kafka");
    assert_eq!(svc.handle().name(), "kafka");
    assert_eq!(BreakerLayer::new().handle().name(), "breaker");
}

// ===== shared state =====

#[tokio::test(start_paused = true)]
async fn clones_and_every_service_from_one_layer_share_one_breaker() {
    let layer = consecutive(3).open_for(secs(5)).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(echo));

    // axum-style: each request runs on its own clone, in its own task.
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(Err("down"))))
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "down");
    }
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(svc.handle().state(), BreakerState::Open);
    assert_eq!(svc.handle().counts(), handle.counts());

    // A new clone, another service from the same layer, and one from a clone of the layer:
    // all see the same open breaker.
    let mut fresh_clone = svc.clone();
    let mut another = layer.layer(service_fn(echo));
    let mut from_layer_clone = layer.clone().layer(service_fn(echo));
    for svc in [&mut fresh_clone, &mut another, &mut from_layer_clone] {
        assert_eq!(echo_rejected(svc).await.retry_after(), Some(secs(5)));
    }
    assert_eq!(handle.counts().rejected, 3);
}

#[tokio::test(start_paused = true)]
async fn layers_built_separately_do_not_share_state() {
    let settings = consecutive(1);
    let a = settings.clone().build().unwrap();
    let b = settings.build().unwrap();
    let mut svc_a = a.layer(service_fn(echo));
    let mut svc_b = b.layer(service_fn(echo));

    drive(&mut svc_a, Err("down"), 1).await;
    assert_eq!(a.handle().state(), BreakerState::Open);
    assert_eq!(b.handle().state(), BreakerState::Closed);
    drive(&mut svc_b, Ok(1), 1).await;
}

#[tokio::test(start_paused = true)]
async fn rejections_pass_through_a_buffer_recognisably() {
    let layer = consecutive(2).open_for(secs(5)).build().unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .buffer(8)
        .breaker(layer)
        .service(service_fn(echo));

    for _ in 0..2 {
        let err = svc.clone().oneshot(Err("down")).await.unwrap_err();
        assert_eq!(err.to_string(), "down");
    }
    assert_eq!(handle.state(), BreakerState::Open);
    let err = svc.clone().oneshot(Ok(1)).await.unwrap_err();
    let open = err
        .downcast_ref::<BreakerOpen>()
        .expect("BreakerOpen through the buffer");
    assert_eq!(open.retry_after(), Some(secs(5)));
}
