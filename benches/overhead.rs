//! Per-call overhead of tanker's layers next to their peers, in one run.
//!
//! Run with `cargo bench --bench overhead` (add `-- --quick` for a smoke run,
//! or a filter such as `-- ready_call/` to run one group), then
//! `python3 scripts/bench_table.py` for a Markdown summary.
//!
//! Groups (criterion benchmark groups), each with one function per variant:
//!
//! * `ready_call` – one service, `svc.ready().await?.call(x).await` in a loop
//!   inside a single `block_on` on a current-thread runtime.
//! * `oneshot`    – `svc.clone().oneshot(x).await` in the same kind of loop.
//! * `two_tasks`  – a 2-worker multi-thread runtime; two tasks, released
//!   together by a barrier, each do `iters` ready+call on their own clone of
//!   ONE shared service. The reported time is the wall time from the first
//!   task's start to the last task's end, i.e. ns per call per core.
//! * `rejection`  – the cost of a ready+call that comes back `Err`: bulkheads
//!   that are full (capacity 1, the slot held by an outstanding call whose
//!   inner future never completes), breakers forced open through their handle
//!   (`*_breaker`), and breakers tripped by inner failures
//!   (`*_breaker_tripped`). With no tracing subscriber, except
//!   `tanker_bulkhead_logged`, `tanker_breaker_logged` and
//!   `tower_limit_logged`: the same as `tanker_bulkhead`, `tanker_breaker`
//!   and `tower_limit`, with a `fmt` subscriber at INFO whose output is
//!   discarded, so that the bulkhead's rate-limited "shedding calls" WARN is
//!   enabled (tower's `load_shed` logs nothing: the reference). They run
//!   last in the group.
//! * `metrics_ready_call`, `metrics_two_tasks` – only with `--features
//!   metrics`: the cost of tanker's metrics, as `ready_call` and `two_tasks`
//!   measure it. Each tanker variant runs twice, side by side: built with no
//!   recorder (`<variant>/no_recorder`: its handles are no-ops) and built
//!   inside `metrics::with_local_recorder` with a Prometheus recorder
//!   (`<variant>/prometheus`: its handles are atomics in that recorder's
//!   registry). Filter with `-- metrics`.
//!
//! * `keyed_ready_call`, `keyed_oneshot`, `keyed_two_tasks` – the keyed layer
//!   (a bulkhead and a breaker per key) measured as the three groups above
//!   measure, next to `raw` and the unkeyed `tanker_stack`: `keyed_one_key`
//!   sends every call to one key, `keyed_64_keys` spreads them over 64 keys
//!   (`x % 64`). Every key exists before measuring (a warm-up call each,
//!   through a clone, so that the measured service's view of the table is
//!   stale, as an axum route's is): what is measured is a call on an existing
//!   key. Filter with `-- keyed`.
//!
//! Variants: `raw`, `tanker_bulkhead`, `tanker_breaker`, `tanker_stack`,
//! `tower_limit`, `resilience_bulkhead`, `resilience_breaker`,
//! `resilience_stack` (no `raw` or stacks in `rejection`).
//!
//! Configuration is chosen to be like-for-like: every bulkhead admits 64 calls
//! at a time and never waits (tower: `load_shed` over `concurrency_limit`;
//! tower-resilience: `reject_when_full()`, i.e. a zero max wait). The
//! tower-resilience circuit breaker is given the same trip settings as
//! tanker's default breaker (see `resilience_breaker_layer`). Layers whose
//! state can be per-layer or per-service are built so that every service from
//! one layer shares state (tower-resilience: `build_with_handle()`), which is
//! tanker's model.
//!
//! The tower-resilience bulkhead in reject mode acquires its permit inside
//! `tokio::time::timeout(Duration::ZERO, ..)`, so every runtime here has the
//! time driver enabled (`enable_all`), for every variant alike.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use tokio::runtime::{Builder, Runtime};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

use tanker::breaker::{Breaker, BreakerLayer, BreakerState};
use tanker::bulkhead::{Bulkhead, BulkheadLayer};
use tanker::keyed::KeyedLayer;
use tanker::ServiceBuilderExt;

use tower_resilience::bulkhead::BulkheadLayer as RBulkheadLayer;
use tower_resilience::circuitbreaker::{
    CircuitBreakerHandle as RBreakerHandle, CircuitBreakerLayer as RBreakerLayer, SlidingWindowType,
};

/// tanker's default cool-down, given to the tower-resilience breaker too.
const RESILIENCE_OPEN_FOR: Duration = Duration::from_secs(5);
/// Cool-down for breakers opened in the rejection group (tripped by failures,
/// or forced open): far longer than the benchmark, so they stay open
/// throughout.
const TRIPPED_OPEN_FOR: Duration = Duration::from_secs(3600);
/// Capacity of every bulkhead / concurrency limit in the throughput groups.
const MAX_IN_FLIGHT: usize = 64;
/// Request value that makes the rejection-group inner service pend forever.
const HOLD: u64 = u64::MAX;
/// Request value that makes the rejection-group inner service fail.
const FAIL: u64 = u64::MAX - 1;

// ---------------------------------------------------------------------------
// Inner services
// ---------------------------------------------------------------------------

/// The service every variant wraps: returns its input, immediately.
fn inner() -> impl Service<
    u64,
    Response = u64,
    Error = Infallible,
    Future = impl Future<Output = Result<u64, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|x: u64| async move { Ok::<_, Infallible>(x) })
}

/// Like [`inner`], but a request of [`HOLD`] never completes (used to keep a
/// bulkhead slot occupied) and a request of [`FAIL`] fails (used to trip
/// breakers). Used by the rejection group only.
fn rejection_inner() -> impl Service<
    u64,
    Response = u64,
    Error = &'static str,
    Future = impl Future<Output = Result<u64, &'static str>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|x: u64| async move {
        match x {
            HOLD => std::future::pending().await,
            FAIL => Err("inner failure"),
            x => Ok(x),
        }
    })
}

// ---------------------------------------------------------------------------
// Layer construction
// ---------------------------------------------------------------------------

fn tanker_bulkhead_layer(max: usize) -> BulkheadLayer {
    BulkheadLayer::builder()
        .max_in_flight(max)
        .no_waiting_room() // shed at once when full (the default, made explicit)
        .build()
        .expect("valid tanker bulkhead config")
}

fn tanker_breaker_layer() -> BreakerLayer {
    BreakerLayer::new()
}

/// recloser 1.4 (the fastest peer breaker) as a tower service: `poll_ready` is
/// the inner service's, `call` wraps the inner future in the recloser's.
#[derive(Clone)]
struct Recloser<S> {
    inner: S,
    breaker: recloser::AsyncRecloser,
}

impl<S: Service<u64>> Service<u64> for Recloser<S> {
    type Response = S::Response;
    type Error = recloser::Error<S::Error>;
    type Future = recloser::RecloserFuture<S::Future, recloser::AnyError>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(recloser::Error::Inner)
    }

    fn call(&mut self, request: u64) -> Self::Future {
        self.breaker.call(self.inner.call(request))
    }
}

/// recloser with its defaults (failure rate 0.5 over 100 calls, 30 s open),
/// or with `open_for` as its open time.
fn recloser<S>(inner: S, open_for: Option<Duration>) -> Recloser<S> {
    let mut builder = recloser::Recloser::custom();
    if let Some(open_for) = open_for {
        builder = builder.open_wait(open_for);
    }
    Recloser {
        inner,
        breaker: builder.build().into(),
    }
}

fn resilience_bulkhead_layer(max: usize) -> RBulkheadLayer {
    let (layer, _handle) = RBulkheadLayer::builder()
        .max_concurrent_calls(max)
        .reject_when_full()
        .build_with_handle()
        .expect("valid tower-resilience bulkhead config");
    layer
}

/// tower-resilience breaker set up like tanker's default breaker (failure
/// rate >= 50%, at least 20 calls, 5 s open, one half-open probe).
///
/// Window: tanker's default is time-based (10 s in 10 buckets). The
/// tower-resilience time-based window keeps one record per call in a
/// `VecDeque` and rescans all of them on every call, which at benchmark rates
/// (millions of calls in 10 s) makes each call O(n) and the run quadratic, so
/// its O(1) count-based mode (size 100) is used instead. (In 0.13 that mode
/// keeps cumulative counters since the last state change rather than the
/// last N calls; the per-call cost is what is compared here, not semantics.)
/// Its `ConsecutiveFailures` model cannot be combined with a rate, so
/// tanker's extra "5 in a row" rule has no counterpart here.
fn resilience_breaker_layer(open_for: Duration) -> (RBreakerLayer, RBreakerHandle) {
    RBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_type(SlidingWindowType::CountBased)
        .sliding_window_size(100)
        .minimum_number_of_calls(20)
        .wait_duration_in_open(open_for)
        .permitted_calls_in_half_open(1)
        .build_with_handle()
        .expect("valid tower-resilience breaker config")
}

// ---------------------------------------------------------------------------
// Runtimes
// ---------------------------------------------------------------------------

fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime")
}

fn two_workers() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("multi-thread runtime")
}

// ---------------------------------------------------------------------------
// Measurement routines
// ---------------------------------------------------------------------------

/// `svc.ready().await?.call(x).await`.
async fn ready_call<S: Service<u64>>(svc: &mut S, x: u64) -> Result<S::Response, S::Error> {
    svc.ready().await?.call(x).await
}

/// Group `ready_call`: one service, ready+call in a loop inside one block_on.
fn bench_ready_call<S>(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, mut svc: S)
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let out = ready_call(&mut svc, black_box(i))
                        .await
                        .expect("call succeeds");
                    black_box(out);
                }
                start.elapsed()
            })
        })
    });
}

/// Group `oneshot`: `svc.clone().oneshot(x)` per call.
fn bench_oneshot<S>(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, svc: S)
where
    S: Service<u64, Response = u64> + Clone,
    S::Error: Debug,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let out = svc
                        .clone()
                        .oneshot(black_box(i))
                        .await
                        .expect("call succeeds");
                    black_box(out);
                }
                start.elapsed()
            })
        })
    });
}

/// Group `two_tasks`: two tasks on a 2-worker runtime, each doing `iters`
/// ready+call on its own clone of one shared service. Returns wall time from
/// the earliest task start (after the barrier) to the latest task end.
fn bench_two_tasks<S>(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, svc: S)
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: Debug + Send,
    S::Future: Send,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let barrier = Arc::new(tokio::sync::Barrier::new(2));
                let spawn = |mut svc: S| {
                    let barrier = Arc::clone(&barrier);
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let start = Instant::now();
                        for i in 0..iters {
                            let out = ready_call(&mut svc, black_box(i))
                                .await
                                .expect("call succeeds");
                            black_box(out);
                        }
                        (start, Instant::now())
                    })
                };
                let a = spawn(svc.clone());
                let b = spawn(svc.clone());
                let (a_start, a_end) = a.await.expect("task a");
                let (b_start, b_end) = b.await.expect("task b");
                a_end.max(b_end) - a_start.min(b_start)
            })
        })
    });
}

/// Group `rejection`: every ready+call must come back `Err`.
fn bench_rejection<S>(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, mut svc: S)
where
    S: Service<u64, Response = u64>,
{
    // Fail loudly (rather than measure the wrong thing) if the setup does not
    // actually reject.
    rt.block_on(async {
        assert!(
            ready_call(&mut svc, 1).await.is_err(),
            "{name}: setup must reject"
        );
    });
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    match ready_call(&mut svc, black_box(i)).await {
                        Err(e) => drop(black_box(e)),
                        Ok(_) => panic!("expected a rejection"),
                    }
                }
                start.elapsed()
            })
        })
    });
}

/// Occupies one slot of a bulkhead: issues a [`HOLD`] call through a clone of
/// `svc` and polls it once, so that it has been admitted and now pends
/// forever. The returned future must be kept alive while the slot should stay
/// taken.
fn occupy<S>(rt: &Runtime, svc: &S) -> Pin<Box<S::Future>>
where
    S: Service<u64> + Clone,
    S::Error: Debug,
{
    let _runtime_context = rt.enter();
    let mut holder = svc.clone();
    rt.block_on(holder.ready()).expect("holder admitted");
    let mut fut = Box::pin(holder.call(HOLD));
    rt.block_on(async {
        assert!(
            futures::poll!(fut.as_mut()).is_pending(),
            "the holding call must stay in flight"
        );
    });
    fut
}

/// Sends [`FAIL`] requests through `svc` until `is_open()` says the breaker
/// has tripped.
fn trip<S: Service<u64>>(rt: &Runtime, svc: &mut S, is_open: impl Fn() -> bool) {
    rt.block_on(async {
        for _ in 0..10_000 {
            if is_open() {
                return;
            }
            let _ = ready_call(svc, FAIL).await;
        }
        panic!("breaker did not trip after 10 000 failures");
    });
}

// ---------------------------------------------------------------------------
// Service factories for the throughput groups
// ---------------------------------------------------------------------------

/// Calls `$f(group, runtime, name, service)` once per variant, each with a
/// freshly built service (fresh layer state).
macro_rules! for_each_variant {
    ($g:expr, $rt:expr, $f:ident) => {{
        let g = $g;
        let rt = $rt;

        $f(g, rt, "raw", inner());

        $f(
            g,
            rt,
            "tanker_bulkhead",
            ServiceBuilder::new()
                .layer(tanker_bulkhead_layer(MAX_IN_FLIGHT))
                .service(inner()),
        );
        $f(
            g,
            rt,
            "tanker_breaker",
            ServiceBuilder::new()
                .layer(tanker_breaker_layer())
                .service(inner()),
        );
        $f(g, rt, "recloser", recloser(inner(), None));
        $f(
            g,
            rt,
            "tanker_stack",
            ServiceBuilder::new()
                .breaker(tanker_breaker_layer())
                .bulkhead(tanker_bulkhead_layer(MAX_IN_FLIGHT))
                .service(inner()),
        );

        $f(
            g,
            rt,
            "tower_limit",
            ServiceBuilder::new()
                .load_shed()
                .concurrency_limit(MAX_IN_FLIGHT)
                .service(inner()),
        );

        $f(
            g,
            rt,
            "resilience_bulkhead",
            ServiceBuilder::new()
                .layer(resilience_bulkhead_layer(MAX_IN_FLIGHT))
                .service(inner()),
        );
        $f(
            g,
            rt,
            "resilience_breaker",
            ServiceBuilder::new()
                .layer(resilience_breaker_layer(RESILIENCE_OPEN_FOR).0)
                .service(inner()),
        );
        $f(
            g,
            rt,
            "resilience_stack",
            ServiceBuilder::new()
                .layer(resilience_breaker_layer(RESILIENCE_OPEN_FOR).0)
                .layer(resilience_bulkhead_layer(MAX_IN_FLIGHT))
                .service(inner()),
        );
    }};
}

// ---------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------

fn group_ready_call(c: &mut Criterion) {
    let rt = current_thread();
    let mut g = c.benchmark_group("ready_call");
    for_each_variant!(&mut g, &rt, bench_ready_call);
    g.finish();
}

fn group_oneshot(c: &mut Criterion) {
    let rt = current_thread();
    let mut g = c.benchmark_group("oneshot");
    for_each_variant!(&mut g, &rt, bench_oneshot);
    g.finish();
}

fn group_two_tasks(c: &mut Criterion) {
    let rt = two_workers();
    let mut g = c.benchmark_group("two_tasks");
    for_each_variant!(&mut g, &rt, bench_two_tasks);
    g.finish();
}

fn group_rejection(c: &mut Criterion) {
    let rt = current_thread();
    let mut g = c.benchmark_group("rejection");

    reject_tanker_bulkhead(&mut g, &rt, "tanker_bulkhead");
    reject_tanker_breaker(&mut g, &rt, "tanker_breaker");
    reject_tower_limit(&mut g, &rt, "tower_limit");

    // tower-resilience bulkhead (reject mode, zero wait), capacity 1, held.
    {
        let svc = ServiceBuilder::new()
            .layer(resilience_bulkhead_layer(1))
            .service(rejection_inner());
        let _held = occupy(&rt, &svc);
        bench_rejection(&mut g, &rt, "resilience_bulkhead", svc);
    }

    // tower-resilience breaker, forced open through its handle. Its cool-down
    // applies to a forced opening too: with 5 s it half-opens during the
    // measurement and lets a call through.
    {
        let (layer, handle) = resilience_breaker_layer(TRIPPED_OPEN_FOR);
        rt.block_on(handle.force_open());
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(rejection_inner());
        bench_rejection(&mut g, &rt, "resilience_breaker", svc);
    }

    // The breakers again, but opened the way production opens them: tripped
    // by failures of the inner service (cool-down longer than the run). A
    // forced-open breaker may take a different, slower path.
    {
        let layer = BreakerLayer::builder()
            .open_for(TRIPPED_OPEN_FOR)
            .backoff(1.0, TRIPPED_OPEN_FOR) // the default cap (60 s) must be >= open_for
            .build()
            .expect("valid tanker breaker config");
        let handle = layer.handle();
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service(rejection_inner());
        trip(&rt, &mut svc, || handle.state() == BreakerState::Open);
        bench_rejection(&mut g, &rt, "tanker_breaker_tripped", svc);
    }
    {
        let mut svc = recloser(rejection_inner(), Some(TRIPPED_OPEN_FOR));
        rt.block_on(async {
            // Its ring buffer of 100 calls must fill with failures first.
            for _ in 0..1_000 {
                if let Err(recloser::Error::Rejected) = ready_call(&mut svc, FAIL).await {
                    return;
                }
            }
            panic!("recloser did not open");
        });
        bench_rejection(&mut g, &rt, "recloser_tripped", svc);
    }
    {
        let (layer, handle) = resilience_breaker_layer(TRIPPED_OPEN_FOR);
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service(rejection_inner());
        trip(&rt, &mut svc, || handle.is_open());
        bench_rejection(&mut g, &rt, "resilience_breaker_tripped", svc);
    }

    // Last, because a subscriber, once registered, leaves the callsites'
    // cached interest and tracing's global max level behind it: the variants
    // above must run before any subscriber exists.
    group_rejection_logged(&mut g, &rt);

    g.finish();
}

/// tanker bulkhead, capacity 1, the one slot held by a call that never ends.
/// Each of its rejections is a shed call (`record_shed`).
fn reject_tanker_bulkhead(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str) {
    let svc = ServiceBuilder::new()
        .layer(tanker_bulkhead_layer(1))
        .service(rejection_inner());
    let _held = occupy(rt, &svc);
    bench_rejection(g, rt, name, svc);
}

/// tanker breaker, forced open.
fn reject_tanker_breaker(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str) {
    let layer = tanker_breaker_layer();
    layer.handle().force_open();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(rejection_inner());
    bench_rejection(g, rt, name, svc);
}

/// tower load_shed over concurrency_limit(1), the one permit held.
fn reject_tower_limit(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str) {
    let svc = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1)
        .service(rejection_inner());
    let _held = occupy(rt, &svc);
    bench_rejection(g, rt, name, svc);
}

/// Counts the events from tanker that reach the subscriber.
struct CountTankerEvents(Arc<AtomicU64>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountTankerEvents {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target().starts_with("tanker") {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The `rejection` variants again (`<variant>_logged`), with a `fmt`
/// subscriber enabled at INFO whose output is discarded: the cost of a
/// rejection when its WARN would be logged, with tower's `load_shed` (which
/// logs nothing) as the reference.
///
/// The subscriber is this thread's default for the duration (`set_default`):
/// criterion runs the routine on this thread, and the current-thread runtime
/// polls the calls here too. (A global default could not be removed again
/// and would reach every later group.) Fails loudly unless WARN is enabled
/// and the bulkhead's warnings do reach the subscriber.
fn group_rejection_logged(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime) {
    let events = Arc::new(AtomicU64::new(0));
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .finish()
        .with(CountTankerEvents(Arc::clone(&events)));
    let _default = tracing::subscriber::set_default(subscriber);
    assert!(
        rt.block_on(async { tracing::enabled!(tracing::Level::WARN) }),
        "the subscriber must enable WARN where the calls are polled"
    );

    reject_tanker_bulkhead(g, rt, "tanker_bulkhead_logged");
    let warnings = events.load(Ordering::Relaxed);
    assert!(
        warnings > 0,
        "the bulkhead's shed warnings must reach the subscriber"
    );
    eprintln!("tanker_bulkhead_logged: {warnings} tanker events reached the subscriber");

    reject_tanker_breaker(g, rt, "tanker_breaker_logged");
    reject_tower_limit(g, rt, "tower_limit_logged");
}

// ---------------------------------------------------------------------------
// Metrics (feature `metrics`)
// ---------------------------------------------------------------------------

/// Builds with `recorder` as the current one, so that the components built by
/// `build` resolve their metric handles in it; with `None`, with no recorder
/// (none is installed globally), so that their handles are no-ops.
#[cfg(feature = "metrics")]
fn built_with<T>(
    recorder: Option<&metrics_exporter_prometheus::PrometheusRecorder>,
    build: impl FnOnce() -> T,
) -> T {
    match recorder {
        Some(recorder) => metrics::with_local_recorder(recorder, build),
        None => build(),
    }
}

/// Runs `bench` on `<name>/no_recorder` then `<name>/prometheus`, each on a
/// service from `build` (called once per variant: fresh layer state).
#[cfg(feature = "metrics")]
fn with_and_without_recorder<S>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    recorder: &metrics_exporter_prometheus::PrometheusRecorder,
    name: &str,
    build: impl Fn() -> S,
    bench: fn(&mut BenchmarkGroup<'_, WallTime>, &Runtime, &str, S),
) {
    bench(
        g,
        rt,
        &format!("{name}/no_recorder"),
        built_with(None, &build),
    );
    bench(
        g,
        rt,
        &format!("{name}/prometheus"),
        built_with(Some(recorder), &build),
    );
}

/// Calls `$f(group, runtime, name, service)` for each tanker variant, without
/// and with `$recorder`.
#[cfg(feature = "metrics")]
macro_rules! for_each_metrics_variant {
    ($g:expr, $rt:expr, $recorder:expr, $f:ident) => {{
        let (g, rt, recorder) = ($g, $rt, $recorder);
        with_and_without_recorder(
            g,
            rt,
            recorder,
            "tanker_bulkhead",
            || {
                ServiceBuilder::new()
                    .layer(tanker_bulkhead_layer(MAX_IN_FLIGHT))
                    .service(inner())
            },
            $f,
        );
        with_and_without_recorder(
            g,
            rt,
            recorder,
            "tanker_breaker",
            || {
                ServiceBuilder::new()
                    .layer(tanker_breaker_layer())
                    .service(inner())
            },
            $f,
        );
        with_and_without_recorder(
            g,
            rt,
            recorder,
            "tanker_stack",
            || {
                ServiceBuilder::new()
                    .breaker(tanker_breaker_layer())
                    .bulkhead(tanker_bulkhead_layer(MAX_IN_FLIGHT))
                    .service(inner())
            },
            $f,
        );
    }};
}

/// Fails loudly (rather than report a recorder that was never used) unless
/// the Prometheus variants did bump the recorder's counters.
#[cfg(feature = "metrics")]
fn assert_recorded(recorder: &metrics_exporter_prometheus::PrometheusRecorder) {
    let rendered = recorder.handle().render();
    for name in [
        tanker::metrics::BULKHEAD_ADMITTED,
        tanker::metrics::BREAKER_CALLS,
    ] {
        let total: f64 = rendered
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(total > 0.0, "{name} not recorded:\n{rendered}");
    }
}

#[cfg(feature = "metrics")]
fn group_metrics_ready_call(c: &mut Criterion) {
    let rt = current_thread();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let mut g = c.benchmark_group("metrics_ready_call");
    for_each_metrics_variant!(&mut g, &rt, &recorder, bench_ready_call);
    g.finish();
    assert_recorded(&recorder);
}

#[cfg(feature = "metrics")]
fn group_metrics_two_tasks(c: &mut Criterion) {
    let rt = two_workers();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let mut g = c.benchmark_group("metrics_two_tasks");
    for_each_metrics_variant!(&mut g, &rt, &recorder, bench_two_tasks);
    g.finish();
    assert_recorded(&recorder);
}

// Keep the `BoxError` import meaningful: every tanker/tower service here
// reports it, and this pins that expectation at compile time.
#[allow(dead_code)]
fn _error_types_are_boxed() {
    fn is_boxed<S: Service<u64, Error = BoxError>>(_: &S) {}
    is_boxed(
        &ServiceBuilder::new()
            .layer(tanker_bulkhead_layer(1))
            .service(inner()),
    );
    is_boxed(
        &ServiceBuilder::new()
            .layer(tanker_breaker_layer())
            .service(inner()),
    );
    is_boxed(
        &ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(1)
            .service(inner()),
    );
}

// ---------------------------------------------------------------------------
// Keyed: a bulkhead and a breaker per key, next to the unkeyed stack
// ---------------------------------------------------------------------------

/// How many keys the `keyed_64_keys` variant spreads its calls over.
const KEYS: u64 = 64;

/// A keyed layer with the unkeyed stack's settings per key (default breaker, a compartment of
/// [`MAX_IN_FLIGHT`]), keyed by `key`.
fn tanker_keyed_layer(key: fn(&u64) -> u32) -> KeyedLayer<u32, fn(&u64) -> u32> {
    KeyedLayer::builder(key)
        .bulkhead(BulkheadLayer::builder().max_in_flight(MAX_IN_FLIGHT))
        .build()
        .expect("valid keyed config")
}

/// The unkeyed breaker over a bulkhead, as `tanker_stack` builds it.
fn unkeyed_stack<S>(inner: S) -> Breaker<Bulkhead<S>> {
    ServiceBuilder::new()
        .breaker(tanker_breaker_layer())
        .bulkhead(tanker_bulkhead_layer(MAX_IN_FLIGHT))
        .service(inner)
}

/// Calls `$f(group, runtime, name, service)` for the unkeyed stack and the keyed layer, each
/// warmed so that its keys exist: what is measured is a call on an existing key.
macro_rules! for_each_keyed_variant {
    ($g:expr, $rt:expr, $f:ident) => {{
        let (g, rt) = ($g, $rt);
        $f(g, rt, "raw", inner());
        $f(g, rt, "tanker_stack", unkeyed_stack(inner()));
        let one_key: fn(&u64) -> u32 = |_| 7;
        let spread: fn(&u64) -> u32 = |x| (*x % KEYS) as u32;
        for (name, key) in [("keyed_one_key", one_key), ("keyed_64_keys", spread)] {
            let svc = ServiceBuilder::new()
                .layer(tanker_keyed_layer(key))
                .service(inner());
            // The keys come through a clone, as axum's per-request clones bring them: the
            // measured service starts with a stale view of the table.
            let mut warm = svc.clone();
            rt.block_on(async {
                for i in 0..KEYS {
                    ready_call(&mut warm, i)
                        .await
                        .expect("warm-up call succeeds");
                }
            });
            $f(g, rt, name, svc);
        }
    }};
}

fn group_keyed(c: &mut Criterion) {
    let rt = current_thread();
    let mut g = c.benchmark_group("keyed_ready_call");
    for_each_keyed_variant!(&mut g, &rt, bench_ready_call);
    g.finish();
    let mut g = c.benchmark_group("keyed_oneshot");
    for_each_keyed_variant!(&mut g, &rt, bench_oneshot);
    g.finish();
    let rt = two_workers();
    let mut g = c.benchmark_group("keyed_two_tasks");
    for_each_keyed_variant!(&mut g, &rt, bench_two_tasks);
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = group_ready_call, group_oneshot, group_two_tasks, group_rejection, group_keyed
}
#[cfg(feature = "metrics")]
criterion_group! {
    name = metrics_benches;
    config = config();
    targets = group_metrics_ready_call, group_metrics_two_tasks
}
#[cfg(not(feature = "metrics"))]
criterion_main!(benches);
#[cfg(feature = "metrics")]
criterion_main!(benches, metrics_benches);
