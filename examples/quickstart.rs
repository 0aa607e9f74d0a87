//! The two layers against a flaky fake dependency, printed as it happens.
//!
//! ```text
//! cargo run --no-default-features --example quickstart   # no librdkafka to build
//! ```
//!
//! A fake dependency answers in 1 ms, then goes down for two seconds (every call hangs for 200 ms
//! and fails), then recovers. A caller sends 500 calls a second through
//! `breaker → bulkhead → timeout → dependency`. Each line shows what happened in the last 250 ms:
//! calls that succeeded, failed, were shed by the bulkhead or rejected by the open breaker, and the
//! caller's slowest wait. Watch the breaker open, reject at once while the dependency is down,
//! probe, and close by itself when it is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{interval, sleep, Instant, MissedTickBehavior};
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};

use tanker::breaker::{BreakerLayer, BreakerOpen};
use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
use tanker::ServiceBuilderExt;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    shed: AtomicU64,
    rejected: AtomicU64,
    slowest_us: AtomicU64,
}

impl Tally {
    fn take(&self) -> [u64; 5] {
        [
            self.ok.swap(0, Ordering::Relaxed),
            self.failed.swap(0, Ordering::Relaxed),
            self.shed.swap(0, Ordering::Relaxed),
            self.rejected.swap(0, Ordering::Relaxed),
            self.slowest_us.swap(0, Ordering::Relaxed),
        ]
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let down = Arc::new(AtomicBool::new(false));
    let dependency = {
        let down = down.clone();
        service_fn(move |n: u64| {
            let down = down.load(Ordering::Relaxed);
            async move {
                if down {
                    sleep(Duration::from_millis(200)).await;
                    Err::<u64, BoxError>("dependency is down".into())
                } else {
                    sleep(Duration::from_millis(1)).await;
                    Ok(n)
                }
            }
        })
    };

    let breaker = BreakerLayer::builder()
        .name("fake-dependency")
        .consecutive_failures(5)
        .open_for(Duration::from_millis(500))
        .backoff(2.0, Duration::from_secs(2))
        .jitter(0.0)
        .build()?;
    let bulkhead = BulkheadLayer::new(16)?;
    let breaker_handle = breaker.handle();
    let bulkhead_handle = bulkhead.handle();

    let svc = ServiceBuilder::new()
        // Boxing erases the stack's type, which lets `tokio::spawn` prove the calls are `Send`
        // (rustc cannot always prove it through generic `Into<BoxError>` bounds, with tower's own
        // layers too). A caller that does not spawn per call needs no box.
        .boxed_clone()
        .breaker(breaker)
        .bulkhead(bulkhead)
        .timeout(Duration::from_millis(100))
        .service(dependency);

    let tally = Arc::new(Tally::default());
    let started = Instant::now();

    // The caller: 500 calls a second, each in its own task, never waiting on the previous one.
    let caller = {
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut tick = interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            for n in 0.. {
                tick.tick().await;
                let svc = svc.clone();
                let tally = tally.clone();
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let result = svc.oneshot(n).await;
                    let waited = t0.elapsed().as_micros() as u64;
                    tally.slowest_us.fetch_max(waited, Ordering::Relaxed);
                    let counter = match &result {
                        Ok(_) => &tally.ok,
                        Err(e) if e.is::<BulkheadFull>() => &tally.shed,
                        Err(e) if e.is::<BreakerOpen>() => &tally.rejected,
                        Err(_) => &tally.failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                });
            }
        })
    };

    println!("  time  dependency  breaker      ok  failed  shed  rejected  slowest wait");
    let mut report = interval(Duration::from_millis(250));
    report.tick().await;
    for step in 1..=20 {
        report.tick().await;
        let at = started.elapsed();
        match step {
            4 => down.store(true, Ordering::Relaxed),
            12 => down.store(false, Ordering::Relaxed),
            _ => {}
        }
        let [ok, failed, shed, rejected, slowest] = tally.take();
        println!(
            "{:>5.2}s  {:<10}  {:<11} {:>3}  {:>6}  {:>4}  {:>8}  {:>9.1} ms",
            at.as_secs_f64(),
            if down.load(Ordering::Relaxed) {
                "DOWN"
            } else {
                "up"
            },
            breaker_handle.state().to_string(),
            ok,
            failed,
            shed,
            rejected,
            slowest as f64 / 1000.0,
        );
    }
    caller.abort();

    let breaker = breaker_handle.counts();
    println!();
    println!(
        "breaker: opened {} times, rejected {} calls, final state {}",
        breaker.times_opened, breaker.rejected, breaker.state
    );
    let bulkhead = bulkhead_handle.counts();
    println!(
        "bulkhead: admitted {}, shed {}, in flight {}",
        bulkhead.admitted, bulkhead.shed, bulkhead.in_flight
    );
    Ok(())
}
