//! The breaker's sliding window on unusual runtimes: a runtime that stays alive but idle after
//! the first call, and a runtime without the time driver.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tanker::breaker::{BreakerLayer, BreakerState};
use tokio::runtime::Builder;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

async fn call<S>(svc: &mut S, ok: bool) -> Result<u32, BoxError>
where
    S: Service<bool, Response = u32, Error = BoxError>,
{
    svc.ready().await?.call(ok).await
}

fn echo(ok: bool) -> std::future::Ready<Result<u32, &'static str>> {
    std::future::ready(if ok { Ok(1) } else { Err("down") })
}

#[test]
fn a_ticker_left_on_an_idle_runtime_does_not_stall_the_window() {
    // A warm-up runtime makes the first call, then stays alive but is never driven again: the
    // window's ticker was started there.
    let warm_up = Builder::new_current_thread().enable_time().build().unwrap();
    let layer = warm_up.block_on(async {
        BreakerLayer::builder()
            .no_consecutive_failures()
            .failure_rate(0.5)
            .minimum_calls(10)
            .window(Duration::from_secs(10), 10)
            .build()
            .unwrap()
    });
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));
    warm_up.block_on(call(&mut svc, true)).unwrap();

    let serving = Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    serving.block_on(async {
        // 30 s of steady successes, then a blip of 6 failures: far below 50 %.
        for _ in 0..30 {
            for _ in 0..100 {
                call(&mut svc, true).await.unwrap();
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        for _ in 0..6 {
            assert!(call(&mut svc, false).await.is_err());
        }
        let m = handle.counts();
        assert_eq!(handle.state(), BreakerState::Closed, "{m:?}");
        // 900 successes were made in the last 10 s; a few may land one bucket early while a
        // ticker on this runtime takes over.
        assert!(
            m.window_calls >= 800,
            "the last 10 s of successes are in the window: {m:?}"
        );
    });
    drop(warm_up);
}

#[test]
fn a_runtime_without_timers_neither_panics_per_call_nor_loses_counts() {
    // Counts the panics of this test's thread (the runtime runs on it).
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = panics.clone();
    let here = std::thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == here {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));

    let runtime = Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let layer = BreakerLayer::builder()
            .no_consecutive_failures()
            .failure_rate(0.5)
            .minimum_calls(10)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(service_fn(echo));
        for _ in 0..10_000 {
            call(&mut svc, true).await.unwrap();
            // Let anything the call spawned run (and panic, if it would).
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            assert!(call(&mut svc, false).await.is_err());
        }
        tokio::task::yield_now().await;
        let m = handle.counts();
        assert_eq!(handle.state(), BreakerState::Closed);
        assert_eq!((m.successes, m.failures), (10_000, 100));
        assert_eq!((m.window_calls, m.window_failures), (10_100, 100));
    });
    // tokio's own check that timers are missing panics once, caught where the ticker would have
    // started; nothing was spawned to panic per call.
    assert!(
        panics.load(Ordering::SeqCst) <= 1,
        "{} panics",
        panics.load(Ordering::SeqCst)
    );
}
