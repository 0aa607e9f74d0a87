//! Bounded concurrency: the dependency never sees more than `concurrency` calls at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{self, Instant};
use tower::{service_fn, BoxError};

use crate::support::handoff::*;

#[tokio::test(start_paused = true)]
async fn the_dependency_never_sees_more_than_concurrency_calls_at_once() {
    const CONCURRENCY: usize = 3;
    let dependency = Dependency::default();
    let handoff = builder(100, CONCURRENCY).spawn(dependency.clone()).unwrap();

    assert_eq!(send_many(&handoff, [Fate::Slow; 100]), 100);
    let start = Instant::now();
    run_worker().await;
    assert_eq!(dependency.in_flight(), CONCURRENCY);
    assert_eq!(handoff.counts().in_flight, CONCURRENCY as u64);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 100);
    assert_eq!(
        dependency.peak(),
        CONCURRENCY,
        "the bound is reached and never exceeded"
    );
    // 100 calls of `SLOW`, three at a time: 34 rounds, no faster.
    assert!(
        Instant::now() - start >= SLOW * 34,
        "{:?}",
        Instant::now() - start
    );
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_of_one_calls_the_dependency_one_record_at_a_time_in_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (seen, now, peak) = (seen.clone(), now.clone(), peak.clone());
        service_fn(move |n: u32| {
            seen.lock().unwrap().push(n);
            let current = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(current, Ordering::SeqCst);
            let now = now.clone();
            async move {
                time::sleep(Duration::from_millis(3)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        })
    };
    let handoff = builder(32, 1).spawn(inner).unwrap();
    assert_eq!(send_many(&handoff, 0..20), 20);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 20);
    assert_eq!(peak.load(Ordering::SeqCst), 1);
    assert_eq!(*seen.lock().unwrap(), (0..20).collect::<Vec<_>>());
}
