//! Stress tests of the bulkhead on real threads, more of them than cores: no false shed when the
//! capacity is above the number of callers, and nothing leaked when calls and waits are
//! cancelled at random points.
//!
//! Each thread drives its futures by hand with a no-op waker, so that the interleavings come from
//! the OS scheduler preempting threads (8 threads on the 2 cores of CI), not from an executor.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use futures::task::noop_waker_ref;
use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
use tower::{service_fn, Layer, Service};

const THREADS: usize = 8;

/// Runs `work(thread index)` on `THREADS` threads released together.
fn on_threads(work: impl Fn(usize) + Send + Sync + 'static) {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (work, start) = (work.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                work(t);
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a stress thread panicked");
    }
}

#[test]
fn no_false_sheds_with_capacity_above_the_number_of_callers() {
    // Sequential calls on 8 threads through clones of one compartment of 9: at most 8 calls are
    // ever in flight, so not one may be shed. Deciding from two counters read one after the
    // other shed about 50 calls per million here; two million calls catch that (on the old code,
    // 3 runs in 3 failed).
    const CALLS_PER_THREAD: usize = 250_000;
    let bulkhead = BulkheadLayer::new(THREADS + 1).unwrap();
    let counters = bulkhead.handle();
    let svc = bulkhead.layer(service_fn(|n: usize| {
        std::future::ready(Ok::<_, Infallible>(n))
    }));
    let shed = Arc::new(AtomicUsize::new(0));
    {
        let shed = shed.clone();
        on_threads(move |_| {
            let mut svc = svc.clone();
            let mut cx = Context::from_waker(noop_waker_ref());
            for i in 0..CALLS_PER_THREAD {
                assert!(svc.poll_ready(&mut cx).is_ready());
                let mut fut = svc.call(i);
                match Pin::new(&mut fut).poll(&mut cx) {
                    Poll::Ready(Ok(n)) => assert_eq!(n, i),
                    Poll::Ready(Err(err)) => {
                        assert!(err.is::<BulkheadFull>(), "{err}");
                        shed.fetch_add(1, Ordering::Relaxed);
                    }
                    Poll::Pending => panic!("the inner service is always ready"),
                }
            }
        });
    }
    let total = (THREADS * CALLS_PER_THREAD) as u64;
    assert_eq!(
        shed.load(Ordering::Relaxed),
        0,
        "calls shed with at most {THREADS} of {} slots taken",
        THREADS + 1
    );
    assert_eq!(counters.counts().shed, 0);
    assert_eq!(counters.counts().admitted, total);
    assert_eq!(counters.counts().in_flight, 0);
}

/// A tiny deterministic random source per thread (xorshift), so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: usize) -> Self {
        Self(0x9E37_79B9_7F4A_7C15 ^ (seed as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A future that is pending `polls` times, then ready: a call still in flight until then (or
/// until it is dropped).
struct Slow {
    polls: u64,
    inside: Option<Arc<AtomicUsize>>,
}

impl Future for Slow {
    type Output = Result<(), Infallible>;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            // The call is over when it answers, before its future is dropped.
            if let Some(inside) = self.inside.take() {
                inside.fetch_sub(1, Ordering::SeqCst);
            }
            return Poll::Ready(Ok(()));
        }
        self.polls -= 1;
        Poll::Pending
    }
}

impl Drop for Slow {
    fn drop(&mut self) {
        if let Some(inside) = self.inside.take() {
            inside.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Calls, readiness and waits cancelled at random points on 8 threads; afterwards nothing is
/// held and the inner service never saw more calls at once than the capacity.
fn cancellations_leave_nothing_behind(bulkhead: BulkheadLayer) {
    const ROUNDS: usize = 20_000;
    let max = bulkhead.handle().max_in_flight();
    let counters = bulkhead.handle();
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = {
        let (inside, peak) = (inside.clone(), peak.clone());
        bulkhead.layer(service_fn(move |polls: u64| {
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            Slow {
                polls,
                inside: Some(inside.clone()),
            }
        }))
    };
    // The waiting room's timers need a runtime with its time driver, which its worker drives.
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap(),
    );
    {
        let (calls, svc) = (calls.clone(), svc.clone());
        on_threads(move |t| {
            let _runtime = runtime.enter();
            let mut rng = Rng::new(t);
            let mut cx = Context::from_waker(noop_waker_ref());
            let mut handle = svc.clone();
            // Calls kept in flight across rounds, finished or dropped later.
            let mut in_flight = Vec::new();
            for _ in 0..ROUNDS {
                // Readiness polled a few times, then given up on: the handle is kept (an
                // abandoned waiter), or dropped for a fresh clone.
                let mut ready = false;
                for _ in 0..rng.below(3) + 1 {
                    if handle.poll_ready(&mut cx).is_ready() {
                        ready = true;
                        break;
                    }
                }
                if !ready {
                    if rng.below(2) == 0 {
                        handle = svc.clone();
                    }
                    continue;
                }
                if rng.below(8) == 0 {
                    // Ready, and dropped without a call.
                    handle = svc.clone();
                    continue;
                }
                calls.fetch_add(1, Ordering::Relaxed);
                let mut fut = handle.call(rng.below(3));
                match Pin::new(&mut fut).poll(&mut cx) {
                    Poll::Ready(Err(err)) => assert!(err.is::<BulkheadFull>(), "{err}"),
                    Poll::Ready(Ok(())) => {}
                    Poll::Pending => in_flight.push(fut),
                }
                // Some calls in flight move on: polled (and maybe finished) or cancelled.
                if !in_flight.is_empty() {
                    let k = rng.below(in_flight.len() as u64) as usize;
                    match rng.below(3) {
                        0 => drop(in_flight.swap_remove(k)),
                        _ => {
                            if Pin::new(&mut in_flight[k]).poll(&mut cx).is_ready() {
                                in_flight.swap_remove(k);
                            }
                        }
                    }
                }
            }
        });
    }
    drop(svc);
    assert!(
        peak.load(Ordering::SeqCst) <= max,
        "the inner service saw {} calls at once, max is {max}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(inside.load(Ordering::SeqCst), 0);
    assert_eq!(counters.counts().in_flight, 0, "a slot leaked");
    assert_eq!(counters.counts().waiting, 0, "a place in the room leaked");
    assert_eq!(
        counters.counts().admitted + counters.counts().shed,
        calls.load(Ordering::Relaxed) as u64
    );
    assert!(counters.counts().admitted > 0);
}

#[test]
fn cancellations_at_random_points_leave_nothing_behind() {
    cancellations_leave_nothing_behind(BulkheadLayer::new(3).unwrap());
}

#[test]
fn cancellations_at_random_points_leave_nothing_behind_in_the_waiting_room() {
    cancellations_leave_nothing_behind(
        BulkheadLayer::builder()
            .max_in_flight(3)
            .waiting_room(4, Duration::from_millis(1))
            .build()
            .unwrap(),
    );
}
