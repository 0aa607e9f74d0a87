//! Tripping while closed: on consecutive failures and on slow calls.

use tanker::breaker::BreakerState;
use tokio::time::{self};

use crate::support::breaker::*;

// ===== tripping on consecutive failures =====

#[tokio::test(start_paused = true)]
async fn trips_after_n_consecutive_failures() {
    let (mut svc, mut mock, handle) = spawn(consecutive(3).build().unwrap());

    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.counts().consecutive_failures, 2);

    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.counts().times_opened, 1);
    reject(&mut svc, &mut mock);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_consecutive_failure_count() {
    let (mut svc, mut mock, handle) = spawn(consecutive(3).build().unwrap());

    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    succeed(&mut svc, &mut mock).await;
    assert_eq!(handle.counts().consecutive_failures, 0);

    // Four failures out of five calls, but never three in a row.
    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);

    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

// ===== tripping on slow calls =====

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_breaker() {
    let layer = builder()
        .no_consecutive_failures()
        .no_failure_rate()
        .slow_calls(ms(100), 0.5)
        .minimum_calls(4)
        .window(secs(10), 10)
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    call_taking(&mut svc, &mut mock, ms(150)).await;
    call_taking(&mut svc, &mut mock, ms(100)).await; // the threshold itself is slow
    call_taking(&mut svc, &mut mock, ms(500)).await;
    assert_eq!(handle.state(), BreakerState::Closed, "below minimum_calls");
    let m = handle.counts();
    assert_eq!((m.window_calls, m.window_slow_calls), (3, 3));
    assert_eq!(m.failures, 0, "a slow success is not a failure");

    call_taking(&mut svc, &mut mock, ms(150)).await;
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.counts().slow_calls, 4);
    reject(&mut svc, &mut mock);
}

#[tokio::test(start_paused = true)]
async fn fast_calls_do_not_trip_the_slow_call_rate() {
    let layer = builder()
        .no_consecutive_failures()
        .no_failure_rate()
        .slow_calls(ms(100), 0.5)
        .minimum_calls(4)
        .window(secs(10), 10)
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    for _ in 0..50 {
        call_taking(&mut svc, &mut mock, ms(99)).await;
    }
    assert_eq!(handle.state(), BreakerState::Closed);
    let m = handle.counts();
    assert_eq!((m.window_calls, m.window_slow_calls), (50, 0));
    assert_eq!(m.slow_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_below_the_rate_do_not_trip() {
    let layer = builder()
        .no_consecutive_failures()
        .no_failure_rate()
        .slow_calls(ms(100), 0.5)
        .minimum_calls(4)
        .window(secs(60), 6)
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    for _ in 0..3 {
        call_taking(&mut svc, &mut mock, ms(10)).await;
        call_taking(&mut svc, &mut mock, ms(10)).await;
        call_taking(&mut svc, &mut mock, ms(200)).await;
    }
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "a third of the calls are slow"
    );
    assert_eq!(handle.counts().window_slow_calls, 3);
}

#[tokio::test(start_paused = true)]
async fn a_slow_probe_counts_as_a_failed_probe() {
    let layer = consecutive(1)
        .slow_calls(ms(100), 1.0)
        .open_for(secs(1))
        .backoff(2.0, secs(60))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;
    call_taking(&mut svc, &mut mock, ms(150)).await;

    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(2)));
}
