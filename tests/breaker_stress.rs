//! The breaker under contention: more OS threads than cores, each with its own runtime, making
//! calls through clones of one breaker. Each test runs for about a second of real time; what it
//! checks holds for every interleaving, so any run that breaks it is a bug.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tanker::breaker::{Breaker, BreakerHandle, BreakerLayer, BreakerState};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

const THREADS: usize = 8;
const RUN_FOR: Duration = Duration::from_millis(1_000);

/// Runs `work` on `THREADS` threads, each in its own current-thread runtime, until `RUN_FOR` has
/// passed, while a reader thread checks that every snapshot of the counters is consistent.
fn hammer<S, F, Fut>(svc: S, handle: BreakerHandle, work: F)
where
    S: Clone + Send + 'static,
    F: Fn(S, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    // The reader and the workers start together, however late the scheduler runs each thread.
    let start = Arc::new(Barrier::new(THREADS + 1));
    let reader = {
        let (stop, start) = (stop.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            let mut snapshots = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let m = handle.counts();
                assert!(m.window_failures <= m.window_calls, "{m:?}");
                assert!(m.window_slow_calls <= m.window_calls, "{m:?}");
                assert!(m.successes < u64::MAX / 2, "wrapped: {m:?}");
                snapshots += 1;
                std::thread::yield_now();
            }
            snapshots
        })
    };
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (svc, work, start) = (svc.clone(), work.clone(), start.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                start.wait();
                let started = Instant::now();
                let mut round = 0;
                while started.elapsed() < RUN_FOR {
                    rt.block_on(work(svc.clone(), thread, round));
                    round += 1;
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
}

type Echo =
    Breaker<tower::util::ServiceFn<fn(bool) -> std::future::Ready<Result<u32, &'static str>>>>;

fn echo_breaker(layer: &BreakerLayer) -> Echo {
    fn echo(ok: bool) -> std::future::Ready<Result<u32, &'static str>> {
        std::future::ready(if ok { Ok(1) } else { Err("down") })
    }
    layer.layer(service_fn(echo as fn(bool) -> _))
}

/// Makes 200 calls: a failure every `every`-th one (never, for 0).
async fn calls(mut svc: Echo, thread: usize, every: usize) {
    for i in 0..200 {
        let ok = every == 0 || !(i + thread).is_multiple_of(every);
        let result: Result<u32, BoxError> = svc.ready().await.unwrap().call(ok).await;
        assert_eq!(result.is_ok(), ok, "every call reached the inner service");
    }
}

#[test]
fn successes_alone_never_open_the_breaker() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .failure_rate(f64::MIN_POSITIVE)
        .minimum_calls(1)
        .window(Duration::from_millis(20), 20)
        .build()
        .unwrap();
    let handle = layer.handle();
    hammer(echo_breaker(&layer), handle.clone(), |svc, thread, _| {
        calls(svc, thread, 0)
    });
    let m = handle.counts();
    assert_eq!(
        (m.state, m.times_opened, m.failures),
        (BreakerState::Closed, 0, 0)
    );
    assert!(m.successes > 0);
}

#[test]
fn a_failure_rate_below_the_threshold_never_opens_the_breaker() {
    // One call in four fails, from every thread at once; the threshold is one in two. A window
    // of two 1 ms buckets: a reader preempted between a bucket's loads while the others write
    // would count the current bucket's later failures without their calls, up to twice the
    // true rate. 64 calls at least, so that a window nearly emptied by a pause cannot reach
    // one in two by chance.
    let layer = BreakerLayer::builder()
        .no_consecutive_failures()
        .failure_rate(0.5)
        .minimum_calls(64)
        .window(Duration::from_millis(2), 2)
        .build()
        .unwrap();
    let handle = layer.handle();
    hammer(echo_breaker(&layer), handle.clone(), |svc, thread, _| {
        calls(svc, thread, 4)
    });
    let m = handle.counts();
    assert_eq!(
        (m.state, m.times_opened),
        (BreakerState::Closed, 0),
        "{m:?}"
    );
    assert_eq!(m.failures * 4, m.successes + m.failures, "{m:?}");
}

#[test]
fn never_more_probes_in_the_dependency_than_allowed() {
    const PROBES: u32 = 2;
    // A dependency that is down: every call fails, after a delay that is sometimes longer than
    // the probe timeout. After the first trip, every call that reaches it is a probe.
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let calls_made = Arc::new(AtomicU64::new(0));
    let inner = {
        let (running, most, calls_made) = (running.clone(), most.clone(), calls_made.clone());
        service_fn(move |delay_us: u64| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            calls_made.fetch_add(1, Ordering::Relaxed);
            let running = running.clone();
            async move {
                tokio::time::sleep(Duration::from_micros(delay_us)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Err::<u32, _>("down")
            }
        })
    };
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_micros(500))
        .backoff(1.0, Duration::from_micros(500))
        .jitter(0.0)
        .probes(PROBES)
        .probe_timeout(Duration::from_millis(2))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(inner);
    // Trip it first, from one thread, so that no ordinary call is in the dependency.
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(async {
            let _ = svc.clone().oneshot(0).await;
        });
    assert_eq!(handle.state(), BreakerState::Open);
    most.store(0, Ordering::SeqCst);
    hammer(svc, handle.clone(), |mut svc, thread, round| async move {
        // Delays from 0 to 4 ms: a third of the probes outlive their timeout.
        let delay = ((thread as u64 * 7 + round * 13) % 9) * 500;
        if let Ok(ready) = svc.ready().await {
            let _ = ready.call(delay).await;
        }
    });
    let m = handle.counts();
    assert!(
        m.times_opened > 10,
        "the breaker reopened many times: {m:?}"
    );
    assert!(
        calls_made.load(Ordering::Relaxed) > 10,
        "probes went through"
    );
    assert!(
        most.load(Ordering::SeqCst) <= PROBES as usize,
        "{} calls in the dependency at once, with {PROBES} probes allowed",
        most.load(Ordering::SeqCst)
    );
}
