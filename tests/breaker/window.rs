//! Tripping on the failure rate over the sliding window.

use tanker::breaker::BreakerState;
use tokio::time::{self};
use tower::{service_fn, Layer};

use crate::support::breaker::*;

// ===== tripping on the failure rate =====

#[tokio::test(start_paused = true)]
async fn failure_rate_does_not_trip_before_minimum_calls() {
    let layer = rate(0.5, 10, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    // A 100% failure rate, over too few calls to mean anything.
    drive(&mut svc, Err("down"), 9).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.counts().window_failures, 9);

    drive(&mut svc, Err("down"), 1).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_trips_exactly_when_the_share_of_failures_reaches_the_threshold() {
    let layer = rate(0.5, 10, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Ok(1), 6).await;
    drive(&mut svc, Err("down"), 4).await; // 4 of 10
    drive(&mut svc, Err("down"), 1).await; // 5 of 11
    assert_eq!(handle.state(), BreakerState::Closed);
    let m = handle.counts();
    assert_eq!((m.window_calls, m.window_failures), (11, 5));

    drive(&mut svc, Err("down"), 1).await; // 6 of 12: 50%
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn failures_after_successes_that_slid_out_of_the_window_trip_it() {
    let layer = rate(0.5, 10, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Ok(1), 1000).await;
    time::advance(secs(11)).await;

    // The 1000 successes are history: the window holds only the new failures.
    drive(&mut svc, Err("down"), 9).await;
    assert_eq!(handle.state(), BreakerState::Closed, "below minimum_calls");
    let m = handle.counts();
    assert_eq!((m.window_calls, m.window_failures), (9, 9));
    assert_eq!(m.successes, 1000, "all-time counters keep them");

    drive(&mut svc, Err("down"), 1).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn successes_still_inside_the_window_hold_the_failure_rate_down() {
    let layer = rate(0.5, 10, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Ok(1), 1000).await;
    time::advance(secs(5)).await;

    drive(&mut svc, Err("down"), 999).await;
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "999 of 1999 is below 50%"
    );
    let m = handle.counts();
    assert_eq!((m.window_calls, m.window_failures), (1999, 999));

    drive(&mut svc, Err("down"), 1).await;
    assert_eq!(handle.state(), BreakerState::Open, "1000 of 2000 is 50%");
}

#[tokio::test(start_paused = true)]
async fn successes_after_a_quiet_spell_count_in_the_window() {
    let layer = rate(0.5, 20, secs(10), 10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    // Busy, then a quiet minute, then traffic again.
    drive(&mut svc, Ok(1), 1000).await;
    time::advance(secs(60)).await;
    drive(&mut svc, Ok(1), 30).await;
    let m = handle.counts();
    assert_eq!(
        (m.window_calls, m.window_failures),
        (30, 0),
        "every success since the quiet spell is in the window"
    );
    drive(&mut svc, Err("down"), 29).await;

    let m = handle.counts();
    assert_eq!(
        (m.window_calls, m.window_failures),
        (59, 29),
        "every call since the quiet spell is in the window"
    );
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "29 of 59 is below 50%"
    );

    drive(&mut svc, Err("down"), 1).await;
    assert_eq!(handle.state(), BreakerState::Open, "30 of 60 is 50%");
}

#[tokio::test(start_paused = true)]
async fn calls_from_long_ago_never_come_back_into_the_window() {
    // The narrowest buckets allowed: 1 ms.
    let layer = rate(0.5, 10, secs(1), 1000).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Err("down"), 9).await;
    // 2^32 buckets later (about 50 days).
    time::advance(ms(1 << 32)).await;
    drive(&mut svc, Err("down"), 1).await;

    assert_eq!(
        handle.counts().window_calls,
        1,
        "only the new call is in the window"
    );
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "1 call is below minimum_calls"
    );
}
