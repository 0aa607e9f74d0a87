//! Accounting under every outcome: each record counted once, and the identities hold.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::{self, Instant};
use tower::{service_fn, BoxError, ServiceBuilder};

use tanker::breaker::{BreakerLayer, BreakerState};
use tanker::bulkhead::BulkheadLayer;
use tanker::handoff::Sent;
use tanker::ServiceBuilderExt;

use crate::support::handoff::*;
use crate::support::DependencyDown;

#[tokio::test(start_paused = true)]
async fn every_outcome_is_counted_once_and_the_identity_holds() {
    let dependency = Dependency::default();
    let router = Router::new(&dependency).await;
    let handoff = builder(64, 4).spawn(router).unwrap();

    let fates = [
        Fate::Deliver,
        Fate::Slow,
        Fate::Fail,
        Fate::Hang,
        Fate::Shed,
        Fate::Reject,
        Fate::Deliver,
        Fate::Shed,
        Fate::Reject,
        Fate::Fail,
    ];
    let mut expected = Expected::default();
    for fate in fates {
        assert_eq!(handoff.send(fate), Sent::Accepted);
        expected.add(fate);
    }
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.accepted, 10);
    assert_eq!(
        Expected {
            delivered: counts.delivered,
            shed: counts.shed,
            rejected: counts.rejected,
            failed: counts.failed,
        },
        expected
    );
    assert_eq!(counts.ignored(), 7);
    // Shed and rejected records never reached the dependency.
    assert_eq!(dependency.calls(), 6);
    assert_eq!(
        dependency.in_flight(),
        0,
        "the hung call was cancelled by the timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_dependency_behind_a_bulkhead_of_one_sheds_the_rest_of_a_burst() {
    let dependency = Dependency::default();
    let bulkhead = BulkheadLayer::new(1).unwrap();
    let stack = ServiceBuilder::new()
        .bulkhead(bulkhead.clone())
        .service(dependency.clone());
    let handoff = builder(16, 4).spawn(stack).unwrap();

    // The first call holds the only slot for `SLOW`; every other record of the burst is shed at
    // once, long before it ends.
    assert_eq!(send_many(&handoff, [Fate::Slow; 10]), 10);
    let start = Instant::now();
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 1);
    assert_eq!(counts.shed, 9);
    assert_eq!(counts.failed, 0);
    assert_eq!(bulkhead.handle().counts().shed, 9);
    assert_eq!(dependency.calls(), 1);
    assert!(Instant::now() - start >= SLOW);

    // Once it finishes, the slot is free again.
    assert_eq!(handoff.send(Fate::Deliver), Sent::Accepted);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 2);
    assert_eq!(counts.shed, 9);
}

#[tokio::test(start_paused = true)]
async fn a_failing_dependency_trips_the_breaker_and_the_handoff_resumes_after_the_cool_down() {
    let down = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU64::new(0));
    let dependency = {
        let (down, calls) = (down.clone(), calls.clone());
        service_fn(move |_: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            let down = down.load(Ordering::SeqCst);
            async move {
                if down {
                    Err::<(), BoxError>(DependencyDown.into())
                } else {
                    Ok(())
                }
            }
        })
    };
    let breaker = BreakerLayer::builder()
        .consecutive_failures(3)
        .open_for(Duration::from_secs(5))
        .jitter(0.0)
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .breaker(breaker.clone())
        .bulkhead(BulkheadLayer::new(8).unwrap())
        .service(dependency);
    // One call at a time, so the order of outcomes is fixed.
    let handoff = builder(64, 1).spawn(stack).unwrap();

    assert_eq!(send_many(&handoff, 0..10), 10);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.failed, 3);
    assert_eq!(counts.rejected, 7);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "an open breaker does not call"
    );
    assert_eq!(breaker.handle().state(), BreakerState::Open);

    // The dependency recovers; after the cool-down, the first record probes it and closes the
    // breaker, and the rest go through, with no human action.
    down.store(false, Ordering::SeqCst);
    time::advance(Duration::from_secs(5)).await;
    assert_eq!(send_many(&handoff, 10..15), 5);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 5);
    assert_eq!(counts.rejected, 7);
    assert_eq!(counts.failed, 3);
    assert_eq!(breaker.handle().state(), BreakerState::Closed);
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        4 => Just(Fate::Deliver),
        2 => Just(Fate::Slow),
        2 => Just(Fate::Fail),
        1 => Just(Fate::Hang),
        2 => Just(Fate::Shed),
        2 => Just(Fate::Reject),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Waves of records with random fates, each wave sent in one burst (so exactly `capacity` of
    /// it fit), then settled; then a close and a few sends after it. Every count is what the
    /// fates say, and both identities hold exactly.
    #[test]
    fn the_accounting_identity_holds_for_any_mix_of_outcomes(
        capacity in 1usize..=16,
        concurrency in 1usize..=8,
        waves in prop::collection::vec(prop::collection::vec(fate(), 0..40), 1..4),
        after_close in 0u64..5,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let dependency = Dependency::default();
            let router = Router::new(&dependency).await;
            let handoff = builder(capacity, concurrency).spawn(router).unwrap();

            let mut expected = Expected::default();
            let (mut offered, mut accepted) = (0u64, 0u64);
            for wave in &waves {
                for (i, fate) in wave.iter().enumerate() {
                    let sent = handoff.send(*fate);
                    offered += 1;
                    if i < capacity {
                        prop_assert_eq!(sent, Sent::Accepted);
                        accepted += 1;
                        expected.add(*fate);
                    } else {
                        prop_assert_eq!(sent, Sent::Dropped);
                    }
                }
                let counts = settle(&handoff).await;
                prop_assert!(counts.is_balanced(), "{:?}", counts);
                prop_assert_eq!(counts.pending(), 0);
                prop_assert_eq!(counts.offered, offered);
                prop_assert_eq!(counts.accepted, accepted);
            }

            let report = handoff.close(Duration::from_secs(1)).await;
            prop_assert!(report.drained);
            prop_assert_eq!(report.left, 0);
            for _ in 0..after_close {
                prop_assert_eq!(handoff.send(Fate::Deliver), Sent::Dropped);
                offered += 1;
            }

            let counts = handoff.counts();
            prop_assert_eq!(counts.offered, offered);
            prop_assert_eq!(counts.offered, counts.accepted + counts.dropped);
            prop_assert_eq!(counts.accepted, accepted);
            prop_assert_eq!(counts.dropped, offered - accepted);
            prop_assert_eq!(
                counts.accepted,
                counts.delivered + counts.shed + counts.rejected + counts.failed + counts.pending()
            );
            prop_assert_eq!(counts.pending(), 0);
            prop_assert_eq!(counts.delivered, expected.delivered);
            prop_assert_eq!(counts.shed, expected.shed);
            prop_assert_eq!(counts.rejected, expected.rejected);
            prop_assert_eq!(counts.failed, expected.failed);
            prop_assert!(counts.is_balanced());
            prop_assert!(
                dependency.peak() <= concurrency,
                "the dependency saw {} calls at once, the bound is {}",
                dependency.peak(),
                concurrency
            );
            prop_assert_eq!(dependency.in_flight(), 0);
            Ok(())
        })?;
    }
}
