//! Many threads: concurrent senders into a small queue lose nothing.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower::{service_fn, BoxError};

use tanker::handoff::Handoff;

use crate::support::handoff::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_into_a_small_queue_lose_nothing() {
    const THREADS: u64 = 3;
    const TASKS: u64 = 3;
    const PER_SENDER: u64 = 20_000;
    let delivered = Arc::new(AtomicU64::new(0));
    let inner = {
        let delivered = delivered.clone();
        service_fn(move |_: u64| {
            delivered.fetch_add(1, Ordering::Relaxed);
            async {
                tokio::task::yield_now().await;
                Ok::<_, BoxError>(())
            }
        })
    };
    let handoff = Handoff::builder()
        .capacity(16)
        .concurrency(4)
        .spawn(inner)
        .unwrap();

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let handoff = handoff.clone();
            std::thread::spawn(move || send_many(&handoff, t * PER_SENDER..(t + 1) * PER_SENDER))
        })
        .collect();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let handoff = handoff.clone();
            tokio::spawn(async move {
                let mut accepted = 0;
                for chunk in 0..PER_SENDER / 100 {
                    let base = (THREADS + t) * PER_SENDER + chunk * 100;
                    accepted += send_many(&handoff, base..base + 100);
                    tokio::task::yield_now().await;
                }
                accepted
            })
        })
        .collect();

    let mut accepted = 0;
    for thread in threads {
        accepted += thread.join().unwrap();
    }
    for task in tasks {
        accepted += task.await.unwrap();
    }
    // The storm is over: once the worker has taken every queued record, a sender finds room
    // again, whatever the senders that found none last left behind.
    spin_until("the queue drained", || handoff.counts().queued == 0).await;
    assert_eq!(handoff.send(u64::MAX), tanker::handoff::Sent::Accepted);
    accepted += 1;
    let sent = (THREADS + TASKS) * PER_SENDER + 1;

    let report = handoff.close(Duration::from_secs(30)).await;
    assert!(report.drained, "{report:?}");
    let counts = report.counts;
    assert_quiescent(&counts);
    assert_eq!(counts.offered, sent);
    assert_eq!(counts.accepted + counts.dropped, sent);
    assert_eq!(counts.accepted, accepted);
    assert_eq!(counts.delivered, accepted);
    assert_eq!(delivered.load(Ordering::Relaxed), accepted);
    assert!(counts.accepted >= 16, "{counts:?}");
    assert_eq!(handoff.counts(), counts, "nothing moves after close");
}

// `close` racing with eight sender threads: `eight_senders_racing_close_are_counted_exactly`
// in tests/handoff_faults.rs.

/// Waits, without sleeping, until `done` holds; fails after ten seconds of real time.
async fn spin_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_racing_close_are_all_counted_and_the_worker_finishes() {
    // Calls wait for the gate, so the worker stays busy, polling and publishing, after `close`.
    let (gate, opened) = tokio::sync::watch::channel(false);
    let handoff = Handoff::builder()
        .capacity(64)
        .spawn(service_fn(move |_: u64| {
            let mut opened = opened.clone();
            async move {
                let _ = opened.wait_for(|open| *open).await;
                Ok::<_, Infallible>(())
            }
        }))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let handoff = handoff.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut offered = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    handoff.send(offered);
                    offered += 1;
                }
                offered
            })
        })
        .collect();

    spin_until("calls in flight", || handoff.counts().in_flight >= 64).await;
    // Closed, not drained: the calls wait for the gate.
    assert!(!handoff.close(Duration::ZERO).await.drained);
    spin_until("records dropped after close", || {
        handoff.counts().dropped_closed >= 200_000
    })
    .await;
    gate.send(true).unwrap();
    let report = handoff.close(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let offered: u64 = senders.into_iter().map(|s| s.join().unwrap()).sum();

    assert!(report.drained, "{report:?}");
    let counts = handoff.counts();
    assert_eq!(counts.offered, offered);
    assert!(counts.is_balanced(), "{counts:?}");
    assert_eq!(counts.pending(), 0);
    assert_eq!(counts.delivered, counts.accepted);
    assert!(counts.dropped_closed <= counts.dropped, "{counts:?}");
}
