//! Parking per failure domain: what one breaker or compartment refused waits on that domain's
//! own pause, while records for the other domains keep flowing; and the hand-off's leftovers of
//! issue 10 (a full bulkhead's retry pace, the one more try's wait, the probe's cost, no copy of a record nobody needs). All on paused time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time;
use tower::timeout::error::Elapsed;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

use tanker::breaker::BreakerLayer;
use tanker::bulkhead::BulkheadLayer;
use tanker::handoff::{Handoff, HandoffBuilder, HandoffCounts, Sent};
use tanker::keyed::KeyedLayer;
use tanker::ServiceBuilderExt;

/// Lets the worker run without moving paused time.
async fn run_worker() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

/// Moves paused time by `by`, a millisecond at a time, letting the worker run at each step.
async fn run_for(by: Duration) {
    for _ in 0..by.as_millis() {
        run_worker().await;
        time::advance(Duration::from_millis(1)).await;
    }
    run_worker().await;
}

/// Runs until nothing is pending (at most a minute of paused time), checking the identity at
/// every step.
async fn settle<Req>(handoff: &Handoff<Req>) -> HandoffCounts {
    for _ in 0..60_000 {
        run_worker().await;
        let counts = handoff.counts();
        assert!(counts.is_balanced(), "{counts:?}");
        if counts.pending() == 0 {
            return counts;
        }

        time::advance(Duration::from_millis(1)).await;
    }
    panic!("the hand-off did not settle: {:?}", handoff.counts());
}

/// What a dependency was given, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u32>>>);

impl Seen {
    fn push(&self, n: u32) {
        self.0.lock().unwrap().push(n);
    }

    fn all(&self) -> Vec<u32> {
        self.0.lock().unwrap().clone()
    }

    fn of(&self, parity: u32) -> Vec<u32> {
        self.all().into_iter().filter(|n| n % 2 == parity).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusing_domain_parks_only_its_records_and_the_other_flows_in_order() {
    // Two domains: even records go to key 0, odd ones to key 1, each with its own breaker.
    let per_key = KeyedLayer::builder(|n: &u32| n % 2)
        .breaker(BreakerLayer::builder().jitter(0.0))
        .build()
        .unwrap();
    let keys = per_key.handle();
    let seen = Seen::default();
    let dependency = {
        let seen = seen.clone();
        service_fn(move |n: u32| {
            seen.push(n);
            async move { Ok::<_, BoxError>(()) }
        })
    };
    let stack = ServiceBuilder::new().layer(per_key).service(dependency);
    let handoff = HandoffBuilder::new().capacity(1000).spawn(stack).unwrap();
    assert_eq!(handoff.send(0), Sent::Accepted);
    assert_eq!(handoff.send(1), Sent::Accepted);
    settle(&handoff).await;
    let sick = keys.get(&1).unwrap().breaker().clone();
    sick.force_open();

    // 200 ms at 2 records a millisecond: the healthy key's records are delivered as they come.
    let mut n = 2;
    for _ in 0..200 {
        assert_eq!(handoff.send(n), Sent::Accepted);
        assert_eq!(handoff.send(n + 1), Sent::Accepted);
        n += 2;
        run_for(Duration::from_millis(2)).await;
        let counts = handoff.counts();
        assert!(counts.is_balanced(), "{counts:?}");
        let evens: Vec<u32> = (0..n).step_by(2).collect();
        assert_eq!(seen.of(0), evens, "the healthy domain keeps up, in order");
        assert_eq!(seen.of(1), [1], "the refusing domain gets nothing");
        assert_eq!(counts.parked, u64::from(n / 2 - 1), "{counts:?}");
        assert_eq!(counts.rejected, 0, "{counts:?}");
    }

    // The breaker closes: its records go, oldest first, and every one is delivered.
    sick.reset();
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, u64::from(n), "{counts:?}");
    let odds: Vec<u32> = (1..n).step_by(2).collect();
    assert_eq!(seen.of(1), odds, "oldest first");
}

#[tokio::test(start_paused = true)]
async fn a_cluster_wide_refusal_parks_everything_behind_one_pause() {
    let breaker = BreakerLayer::builder().jitter(0.0).build().unwrap();
    let handle = breaker.handle();
    let calls = Arc::new(AtomicU64::new(0));
    let seen = Seen::default();
    let stack = {
        let (calls, seen) = (calls.clone(), seen.clone());
        ServiceBuilder::new()
            .breaker(breaker)
            .service(service_fn(move |n: u32| {
                calls.fetch_add(1, Ordering::SeqCst);
                seen.push(n);
                async move { Ok::<_, BoxError>(()) }
            }))
    };
    let handoff = HandoffBuilder::new().capacity(1000).spawn(stack).unwrap();
    handle.force_open();
    for n in 0..300 {
        assert_eq!(handoff.send(n), Sent::Accepted);
        if n % 10 == 0 {
            run_for(Duration::from_millis(3)).await;
        }
    }
    run_for(Duration::from_secs(1)).await;
    let counts = handoff.counts();
    assert!(counts.is_balanced(), "{counts:?}");
    assert_eq!(counts.parked, 300, "every record parks: {counts:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    handle.reset();
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 300, "{counts:?}");
    assert_eq!(seen.all(), (0..300).collect::<Vec<_>>(), "oldest first");
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_full_of_others_calls_is_not_retried_every_millisecond() {
    let bulkhead = BulkheadLayer::new(1).unwrap();
    let compartment = bulkhead.handle();
    let release = Arc::new(tokio::sync::Notify::new());
    let dependency = {
        let release = release.clone();
        service_fn(move |n: u32| {
            let release = release.clone();
            async move {
                if n == u32::MAX {
                    release.notified().await;
                }
                Ok::<_, BoxError>(())
            }
        })
    };
    let mut stack = ServiceBuilder::new().layer(bulkhead).service(dependency);
    // Someone else holds the only slot.
    let other = tokio::spawn(stack.ready().await.unwrap().call(u32::MAX));
    run_worker().await;
    let handoff = HandoffBuilder::new().spawn(stack).unwrap();
    assert_eq!(handoff.send(1), Sent::Accepted);
    run_for(Duration::from_secs(1)).await;
    let sheds = compartment.shed();
    // 1, 2, 4 ... 64 ms, then every 100 ms: about 16 in a second, not a thousand.
    assert!((5..=25).contains(&sheds), "{sheds} sheds in a second");
    assert_eq!(handoff.counts().parked, 1);

    release.notify_one();
    other.await.unwrap().unwrap();
    run_for(Duration::from_millis(101)).await;
    let counts = handoff.counts();
    assert_eq!(
        counts.delivered, 1,
        "delivered once a slot is free: {counts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_full_of_our_own_calls_waits_for_one_to_end() {
    let bulkhead = BulkheadLayer::new(1).unwrap();
    let compartment = bulkhead.handle();
    let stack = ServiceBuilder::new()
        .layer(bulkhead)
        .service(service_fn(|_: u32| async {
            time::sleep(Duration::from_millis(10)).await;
            Ok::<_, BoxError>(())
        }));
    let handoff = HandoffBuilder::new().concurrency(4).spawn(stack).unwrap();
    for n in 0..4 {
        assert_eq!(handoff.send(n), Sent::Accepted);
    }
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 4, "{counts:?}");
    // Each parked record is tried again when a call of ours ends, not every millisecond: with
    // 10 ms calls, a shed per millisecond would be about 30.
    let sheds = compartment.shed();
    assert!(sheds <= 8, "{sheds} sheds");
}

#[tokio::test(start_paused = true)]
async fn the_one_more_try_waits_for_the_dependency_to_look_healthy() {
    let calls = Arc::new(AtomicU64::new(0));
    let failed_once = Arc::new(AtomicBool::new(false));
    let stack = {
        let (calls, failed_once) = (calls.clone(), failed_once.clone());
        service_fn(move |n: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            let fail = n == 0 && !failed_once.swap(true, Ordering::SeqCst);
            async move {
                if fail {
                    return Err::<(), BoxError>(Box::new(Elapsed::new()));
                }
                Ok(())
            }
        })
    };
    let handoff = HandoffBuilder::new().spawn(stack).unwrap();
    assert_eq!(handoff.send(0), Sent::Accepted);
    run_for(Duration::from_millis(50)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not tried again at once");
    assert_eq!(handoff.counts().parked, 1);
    // A success says the dependency is back: the faulted record follows it.
    assert_eq!(handoff.send(1), Sent::Accepted);
    run_for(Duration::from_millis(5)).await;
    let counts = handoff.counts();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!((counts.delivered, counts.retried), (2, 1), "{counts:?}");

    // With no success to follow, it goes after 100 ms.
    failed_once.store(false, Ordering::SeqCst);
    assert_eq!(handoff.send(0), Sent::Accepted);
    run_for(Duration::from_millis(90)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    run_for(Duration::from_millis(20)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(settle(&handoff).await.delivered, 3);
}

#[tokio::test(start_paused = true)]
async fn failed_probes_cost_one_more_try_not_a_record() {
    let down = Arc::new(AtomicBool::new(true));
    let probes = Arc::new(AtomicU64::new(0));
    let breaker = BreakerLayer::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_millis(100))
        .backoff(2.0, Duration::from_millis(400))
        .jitter(0.0)
        .build()
        .unwrap();
    let stack = {
        let (down, probes) = (down.clone(), probes.clone());
        ServiceBuilder::new()
            .breaker(breaker)
            .service(service_fn(move |_: u32| {
                let down = down.load(Ordering::SeqCst);
                probes.fetch_add(u64::from(down), Ordering::SeqCst);
                async move {
                    if down {
                        return Err::<(), BoxError>(Box::new(Elapsed::new()));
                    }
                    Ok(())
                }
            }))
    };
    let handoff = HandoffBuilder::new().spawn(stack).unwrap();
    for n in 0..20 {
        assert_eq!(handoff.send(n), Sent::Accepted);
    }
    run_for(Duration::from_secs(3)).await;
    let failed_calls = probes.load(Ordering::SeqCst);
    assert!(
        failed_calls >= 5,
        "{failed_calls} failed calls: the breaker probed"
    );
    down.store(false, Ordering::SeqCst);
    let counts = settle(&handoff).await;
    // Each failed call used up a record's one more try, never a record: all are delivered.
    assert_eq!(counts.failed, 0, "{counts:?}");
    assert_eq!(counts.delivered, 20, "{counts:?}");
    assert_eq!(counts.retried, failed_calls, "{counts:?}");
}

/// A request that counts its clones.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::SeqCst);
        Self(self.0.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn with_parking_and_retries_off_a_record_is_never_cloned() {
    let clones = Arc::new(AtomicUsize::new(0));
    let handoff = HandoffBuilder::new()
        .park(false)
        .retry_failed(false)
        .spawn(service_fn(|_: Counted| async { Ok::<_, BoxError>(()) }))
        .unwrap();
    for _ in 0..10 {
        assert_eq!(handoff.send(Counted(clones.clone())), Sent::Accepted);
    }
    assert_eq!(settle(&handoff).await.delivered, 10);
    assert_eq!(clones.load(Ordering::SeqCst), 0);
}
