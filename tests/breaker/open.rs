//! Open: rejecting at once, and the cool-down that grows, with jitter.

use std::collections::HashSet;

use tanker::breaker::{BreakerLayer, BreakerOpen, BreakerState};
use tokio::time::{self};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_test::mock;

use crate::support::breaker::*;

// ===== open: rejecting =====

#[tokio::test(start_paused = true)]
async fn open_breaker_rejects_at_once_with_the_rest_of_the_cool_down() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(5)).build().unwrap());
    fail(&mut svc, &mut mock).await;

    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(5)));
    time::advance(secs(2)).await;
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(3)));
    time::advance(ms(2500)).await;
    let open = reject(&mut svc, &mut mock);
    assert_eq!(open.retry_after(), Some(ms(500)));
    assert!(open.to_string().contains("open"), "{open}");

    assert_eq!(handle.counts().rejected, 3);
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_never_polls_inner() {
    let (mut svc, mut mock, handle) = spawn(consecutive(1).open_for(secs(5)).build().unwrap());
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);

    // From now on the inner service would keep anyone who polls it waiting.
    mock.allow(0);
    for _ in 0..10 {
        reject(&mut svc, &mut mock);
    }
    assert_eq!(handle.counts().rejected, 10);
}

#[tokio::test(start_paused = true)]
async fn a_hung_inner_service_cannot_hold_back_rejection() {
    let layer = consecutive(2).open_for(secs(5)).build().unwrap();
    let handle = layer.handle();

    // One caller waits on a dependency connection that hangs...
    let (hung, mut hung_mock) = mock::pair::<u32, u32>();
    hung_mock.allow(0);
    let mut waiting = mock::Spawn::new(layer.layer(hung));
    assert_pending!(waiting.poll_ready());

    // ...while calls on another connection to the same dependency fail and trip the breaker.
    let (mut other, mut other_mock) = mock::spawn_layer(layer.clone());
    fail(&mut other, &mut other_mock).await;
    fail(&mut other, &mut other_mock).await;
    assert_eq!(handle.state(), BreakerState::Open);

    // Polled again, the waiting caller is rejected at once, the hung service notwithstanding.
    let open = reject(&mut waiting, &mut hung_mock);
    assert_eq!(open.retry_after(), Some(secs(5)));
    // And so is every new caller on the hung connection.
    let mut fresh = waiting.clone();
    reject(&mut fresh, &mut hung_mock);
}

#[tokio::test(start_paused = true)]
async fn a_caller_parked_on_a_hung_inner_service_is_released_when_the_breaker_opens() {
    let layer = consecutive(2).open_for(secs(5)).build().unwrap();

    // A caller awaits readiness (`ServiceExt::ready`) of a connection that hangs...
    let (hung, mut hung_mock) = mock::pair::<u32, u32>();
    hung_mock.allow(0);
    let mut parked_svc = layer.layer(hung);
    let mut parked = task::spawn(parked_svc.ready());
    assert_pending!(parked.poll());

    // ...when failures on another connection to the same dependency trip the breaker.
    let (mut other, mut other_mock) = mock::spawn_layer(layer.clone());
    fail(&mut other, &mut other_mock).await;
    fail(&mut other, &mut other_mock).await;

    // Nothing but the breaker can release it: the hung service never will.
    assert!(
        parked.is_woken(),
        "the parked caller is woken when the breaker opens"
    );
    let svc = assert_ready_ok!(parked.poll());
    let err = svc.call(1).await.unwrap_err();
    assert!(err.is::<BreakerOpen>(), "{err}");
}

// ===== cool-down =====

#[tokio::test(start_paused = true)]
async fn cool_down_grows_with_each_failed_probe_up_to_the_cap_and_resets_after_closing() {
    let layer = consecutive(1)
        .open_for(secs(1))
        .backoff(2.0, secs(5))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    fail(&mut svc, &mut mock).await;
    let mut cool_down = reject(&mut svc, &mut mock).retry_after().unwrap();
    assert_eq!(cool_down, secs(1));
    let mut seen = vec![cool_down];
    for _ in 0..4 {
        time::advance(cool_down).await;
        fail(&mut svc, &mut mock).await; // the probe fails
        assert_eq!(handle.state(), BreakerState::Open);
        cool_down = reject(&mut svc, &mut mock).retry_after().unwrap();
        seen.push(cool_down);
    }
    assert_eq!(seen, [secs(1), secs(2), secs(4), secs(5), secs(5)]);

    time::advance(cool_down).await;
    succeed(&mut svc, &mut mock).await; // the probe succeeds
    assert_eq!(handle.state(), BreakerState::Closed);

    fail(&mut svc, &mut mock).await;
    assert_eq!(
        reject(&mut svc, &mut mock).retry_after(),
        Some(secs(1)),
        "back to the base cool-down after closing"
    );
    assert_eq!(handle.counts().times_opened, 6);
}

#[tokio::test(start_paused = true)]
async fn jittered_cool_down_stays_between_base_less_jitter_and_base() {
    let mut seen = HashSet::new();
    for seed in 0..32 {
        let layer = BreakerLayer::builder()
            .consecutive_failures(1)
            .open_for(secs(10))
            .jitter(0.25)
            .jitter_seed(seed)
            .build()
            .unwrap();
        let mut svc = layer.layer(service_fn(echo));
        drive(&mut svc, Err("down"), 1).await;
        let cool_down = echo_rejected(&mut svc).await.retry_after().unwrap();
        assert!(
            (ms(7500)..=secs(10)).contains(&cool_down),
            "seed {seed}: {cool_down:?}"
        );
        seen.insert(cool_down);
    }
    assert!(seen.len() > 1, "jitter varies the cool-down: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn jitter_applies_to_every_grown_cool_down() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .open_for(secs(1))
        .backoff(2.0, secs(8))
        .jitter(0.5)
        .jitter_seed(7)
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Err("down"), 1).await;
    for grown in [1, 2, 4, 8, 8] {
        let cool_down = echo_rejected(&mut svc).await.retry_after().unwrap();
        let grown = secs(grown);
        assert!(
            (grown / 2..=grown).contains(&cool_down),
            "{cool_down:?} outside [{:?}, {grown:?}]",
            grown / 2
        );
        time::advance(cool_down).await;
        drive(&mut svc, Err("down"), 1).await; // a failed probe
    }
}

#[tokio::test(start_paused = true)]
async fn the_same_jitter_seed_gives_the_same_cool_down() {
    let mut cool_downs = Vec::new();
    for _ in 0..2 {
        let layer = BreakerLayer::builder()
            .consecutive_failures(1)
            .open_for(secs(10))
            .jitter(0.5)
            .jitter_seed(1234)
            .build()
            .unwrap();
        let mut svc = layer.layer(service_fn(echo));
        drive(&mut svc, Err("down"), 1).await;
        cool_downs.push(echo_rejected(&mut svc).await.retry_after().unwrap());
    }
    assert_eq!(cool_downs[0], cool_downs[1]);
}

#[tokio::test(start_paused = true)]
async fn a_long_cool_down_raises_the_default_cap_instead_of_being_refused() {
    let layer = consecutive(1).open_for(secs(3600)).build().unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(reject(&mut svc, &mut mock).retry_after(), Some(secs(3600)));
}
