//! Many tasks on a multi-threaded runtime: the compartment never lets more than its capacity in.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time;
use tower::{service_fn, Layer, Service, ServiceExt};

use tanker::bulkhead::{BulkheadFull, BulkheadLayer};

use crate::support::bulkhead::*;

/// An inner service that records how many of its calls run at once, and yields a few times.
#[derive(Clone, Default)]
struct Gauge {
    current: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Gauge {
    fn service(
        &self,
    ) -> impl Service<
        u32,
        Response = u32,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<u32, Infallible>> + Send + 'static,
    > + Clone
           + Send
           + Sync
           + 'static {
        let gauge = self.clone();
        service_fn(move |n: u32| {
            let now = gauge.current.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.peak.fetch_max(now, Ordering::SeqCst);
            let current = gauge.current.clone();
            async move {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                current.fetch_sub(1, Ordering::SeqCst);
                Ok(n)
            }
        })
    }
}

async fn hammer(bulkhead: BulkheadLayer, tasks: usize, calls: usize) -> (Gauge, usize, usize) {
    let gauge = Gauge::default();
    let svc = bulkhead.layer(gauge.service());
    let mut joins = Vec::new();
    for t in 0..tasks {
        let svc = svc.clone();
        joins.push(tokio::spawn(async move {
            let (mut ok, mut shed) = (0, 0);
            let mut kept = svc.clone();
            for i in 0..calls {
                // Half the calls use a fresh clone per request (axum style), half a kept one.
                let mut fresh = svc.clone();
                let svc = if (t + i) % 2 == 0 {
                    &mut fresh
                } else {
                    &mut kept
                };
                match svc
                    .ready()
                    .await
                    .expect("never an error")
                    .call(i as u32)
                    .await
                {
                    Ok(n) => {
                        assert_eq!(n, i as u32);
                        ok += 1;
                    }
                    Err(err) => {
                        assert!(err.is::<BulkheadFull>(), "unexpected error {err}");
                        shed += 1;
                    }
                }
            }
            (ok, shed)
        }));
    }
    // A guard, not a sleep: it only fires if a caller hangs (the run takes well under a second).
    let all = time::timeout(Duration::from_secs(120), async {
        let (mut ok, mut shed) = (0, 0);
        for join in joins {
            let (o, s) = join.await.expect("task panicked");
            ok += o;
            shed += s;
        }
        (ok, shed)
    });
    let (ok, shed) = all.await.expect("a caller never got an answer");
    (gauge, ok, shed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clones_never_exceed_max_in_flight() {
    const MAX: usize = 3;
    const TASKS: usize = 64;
    const CALLS: usize = 200;
    let bulkhead = layer(MAX);
    let counters = bulkhead.handle();

    let (gauge, ok, shed) = hammer(bulkhead, TASKS, CALLS).await;

    let peak = gauge.peak.load(Ordering::SeqCst);
    assert!(
        peak <= MAX,
        "the inner service saw {peak} calls at once, max is {MAX}"
    );
    assert!(peak >= 1);
    assert_eq!(ok + shed, TASKS * CALLS);
    assert_eq!(counters.counts().admitted as usize, ok);
    assert_eq!(counters.counts().shed as usize, shed);
    assert_eq!(
        counters.counts().admitted + counters.counts().shed,
        (TASKS * CALLS) as u64
    );
    // 64 tasks on 2 workers, each call yielding while it holds its slot: some must be shed.
    assert!(shed > 0, "the stress test never filled the compartment");
    assert_eq!(counters.counts().in_flight, 0);
    assert_eq!(gauge.current.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiters_never_exceed_max_in_flight() {
    const MAX: usize = 2;
    const TASKS: usize = 32;
    const CALLS: usize = 100;
    // The wait is long enough never to end while calls keep finishing; it is not a sleep.
    let bulkhead = layer_with_room(MAX, 8, Duration::from_secs(10));
    let counters = bulkhead.handle();

    let (gauge, ok, shed) = hammer(bulkhead, TASKS, CALLS).await;

    let peak = gauge.peak.load(Ordering::SeqCst);
    assert!(
        peak <= MAX,
        "the inner service saw {peak} calls at once, max is {MAX}"
    );
    assert_eq!(ok + shed, TASKS * CALLS);
    assert_eq!(counters.counts().admitted as usize, ok);
    assert_eq!(counters.counts().shed as usize, shed);
    assert_eq!(counters.counts().in_flight, 0);
    assert_eq!(counters.counts().waiting, 0);
    assert_eq!(gauge.current.load(Ordering::SeqCst), 0);
}
