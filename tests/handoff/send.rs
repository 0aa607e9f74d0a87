//! `send` never blocks: on a hung dependency, a service never ready, or outside the runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::{self, Instant};
use tower::{service_fn, BoxError};
use tower_test::mock;

use tanker::handoff::Sent;

use crate::support::handoff::*;

#[tokio::test(start_paused = true)]
async fn send_never_blocks_on_a_hung_dependency_and_drops_beyond_capacity() {
    const CAPACITY: usize = 8;
    const CONCURRENCY: usize = 4;
    let (service, mut handle) = mock::pair::<u32, ()>();
    let handoff = builder(CAPACITY, CONCURRENCY).spawn(service).unwrap();
    let start = Instant::now();

    // The worker has not run yet: exactly `capacity` records fit, the rest are dropped at once.
    let results: Vec<Sent> = (0..5_000).map(|i| handoff.send(i)).collect();
    assert!(results[..CAPACITY].iter().all(|s| *s == Sent::Accepted));
    assert!(results[CAPACITY..].iter().all(|s| *s == Sent::Dropped));
    let counts = handoff.counts();
    assert_eq!(counts.offered, 5_000);
    assert_eq!(counts.accepted, CAPACITY as u64);
    assert_eq!(counts.dropped, 5_000 - CAPACITY as u64);
    assert_eq!(counts.queued, CAPACITY as u64);
    assert_eq!(counts.in_flight, 0);

    // The worker takes `concurrency` records into calls that never finish, in FIFO order.
    run_worker().await;
    let requests = take_requests(&mut handle);
    let seen: Vec<u32> = requests.iter().map(|(r, _)| *r).collect();
    assert_eq!(seen, vec![0, 1, 2, 3]);
    let counts = handoff.counts();
    assert_eq!(counts.in_flight, CONCURRENCY as u64);
    assert_eq!(counts.queued, (CAPACITY - CONCURRENCY) as u64);

    // That freed `concurrency` places in the queue, and no more: thousands more sends.
    let accepted = send_many(&handoff, 5_000..10_000);
    assert_eq!(accepted, CONCURRENCY as u64);
    run_worker().await;
    assert!(
        take_requests(&mut handle).is_empty(),
        "the worker must not exceed its concurrency"
    );

    let counts = handoff.counts();
    assert_eq!(counts.offered, 10_000);
    assert_eq!(counts.accepted, (CAPACITY + CONCURRENCY) as u64);
    assert_eq!(counts.dropped, 10_000 - (CAPACITY + CONCURRENCY) as u64);
    assert_eq!(counts.queued, CAPACITY as u64);
    assert_eq!(counts.in_flight, CONCURRENCY as u64);
    assert_eq!(counts.finished(), 0);
    assert!(counts.is_balanced(), "{counts:?}");
    assert_eq!(Instant::now(), start, "sending took no (paused) time");
    drop(requests);
}

#[tokio::test(start_paused = true)]
async fn send_never_blocks_when_the_service_is_never_ready() {
    const CAPACITY: usize = 16;
    let (service, mut handle) = mock::pair::<u32, ()>();
    handle.allow(0);
    let handoff = builder(CAPACITY, 4).spawn(service).unwrap();

    assert_eq!(send_many(&handoff, 0..1_000), CAPACITY as u64);
    // The worker holds one record back while the service is not ready.
    run_worker().await;
    time::advance(TICK * 10).await;
    let counts = handoff.counts();
    assert_eq!(counts.in_flight, 1, "{counts:?}");
    assert_eq!(counts.queued, CAPACITY as u64 - 1, "{counts:?}");
    assert_eq!(send_many(&handoff, 1_000..2_000), 1);
    assert!(take_requests(&mut handle).is_empty());

    let counts = handoff.counts();
    assert_eq!(counts.accepted, CAPACITY as u64 + 1);
    assert_eq!(counts.dropped, 2_000 - (CAPACITY as u64 + 1));
    assert!(counts.is_balanced(), "{counts:?}");

    // Once the service is ready, the held record and the queue are delivered, in order.
    handle.allow(u64::MAX);
    let answer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            seen.push(request);
            respond.send_response(());
            if seen.len() == CAPACITY + 1 {
                break;
            }
        }
        seen
    });
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, CAPACITY as u64 + 1);
    let seen = answer.await.unwrap();
    let mut expected: Vec<u32> = (0..CAPACITY as u32).collect();
    // The one place freed by the held record went to the first send of the second burst.
    expected.push(1_000);
    assert_eq!(seen, expected);
}

#[tokio::test(start_paused = true)]
async fn send_works_from_a_plain_thread_outside_the_runtime() {
    let delivered = Arc::new(AtomicU64::new(0));
    let inner = {
        let delivered = delivered.clone();
        service_fn(move |_: u64| {
            delivered.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        })
    };
    let handoff = builder(1_000, 8).spawn(inner).unwrap();

    let sender = handoff.clone();
    let results = std::thread::spawn(move || {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "this thread has no runtime"
        );
        (0..1_010).map(|i| sender.send(i)).collect::<Vec<_>>()
    })
    .join()
    .expect("send never panics");
    assert!(results[..1_000].iter().all(|s| *s == Sent::Accepted));
    assert!(results[1_000..].iter().all(|s| *s == Sent::Dropped));

    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.accepted, 1_000);
    assert_eq!(counts.dropped, 10);
    assert_eq!(counts.delivered, 1_000);
    assert_eq!(delivered.load(Ordering::SeqCst), 1_000);
}
