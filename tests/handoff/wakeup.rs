//! Waking the worker: an idle worker slows its tick, a half-full queue wakes it early.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{self, Instant};
use tower::{service_fn, BoxError, Service};

use tanker::handoff::Sent;

use crate::support::handoff::*;

/// A dependency that answers at once and counts its calls.
fn counting_ok() -> (
    Arc<AtomicU64>,
    impl Service<u32, Response = (), Error = BoxError, Future = impl Send> + Send + 'static,
) {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let inner = service_fn(move |_: u32| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(()) }
    });
    (calls, inner)
}

/// How long an idle worker keeps its 1 ms tick before it slows down, and its slow tick.
const LINGER: Duration = Duration::from_millis(50);
const SLOW_TICK: Duration = Duration::from_millis(100);

#[tokio::test(start_paused = true)]
async fn an_idle_worker_slows_its_tick_and_a_sender_never_wakes_it() {
    let (delivered, inner) = counting_ok();
    let handoff = builder(10, 4).spawn(inner).unwrap();
    // Let the worker start and stay idle past its fast spell.
    run_worker().await;
    let slow_at = Instant::now() + LINGER + TICK * 2;
    while Instant::now() < slow_at {
        time::advance(TICK).await;
        run_worker().await;
    }

    // A lone record does not wake it (no sender pays for a wake-up), and a fast tick's time is
    // not enough any more...
    assert_eq!(handoff.send(0), Sent::Accepted);
    run_worker().await;
    time::advance(TICK * 2).await;
    run_worker().await;
    assert_eq!(delivered.load(Ordering::SeqCst), 0);
    assert_eq!(handoff.counts().queued, 1);

    // ...but the slow tick picks it up.
    time::advance(SLOW_TICK).await;
    run_worker().await;
    assert_eq!(delivered.load(Ordering::SeqCst), 1);

    // Busy again, the worker is back on its fast tick.
    assert_eq!(handoff.send(1), Sent::Accepted);
    run_worker().await;
    time::advance(TICK).await;
    run_worker().await;
    assert_eq!(delivered.load(Ordering::SeqCst), 2);
    assert_quiescent(&handoff.counts());
}

#[tokio::test(start_paused = true)]
async fn a_ticking_worker_wakes_early_when_the_queue_is_half_full() {
    let (delivered, inner) = counting_ok();
    let handoff = builder(10, 4).spawn(inner).unwrap();
    // Freshly started, the worker ticks (it has not been idle for long).
    run_worker().await;

    // Below half full, nobody rings: the records wait for the tick.
    assert_eq!(send_many(&handoff, 0..4), 4);
    run_worker().await;
    assert_eq!(handoff.counts().queued, 4);
    assert_eq!(delivered.load(Ordering::SeqCst), 0);

    // The fifth record makes the queue half full and wakes the worker before the tick.
    assert_eq!(handoff.send(4), Sent::Accepted);
    run_worker().await;
    let counts = handoff.counts();
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 5);

    // A small backlog is picked up by the next tick.
    assert_eq!(send_many(&handoff, 5..7), 2);
    run_worker().await;
    assert_eq!(handoff.counts().queued, 2);
    time::advance(TICK).await;
    run_worker().await;
    let counts = handoff.counts();
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 7);
}

#[tokio::test(start_paused = true)]
async fn an_idle_worker_picks_up_a_single_record_within_one_tick() {
    let handoff = builder(100, 4).spawn(instant_ok::<u32>()).unwrap();
    run_worker().await;
    assert_eq!(handoff.send(1), Sent::Accepted);
    time::advance(TICK).await;
    run_worker().await;
    let counts = handoff.counts();
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 1);
}
