//! What a hand-off costs when nothing happens, and what `send` costs when records flow.
//!
//! Run with `cargo bench --no-default-features --bench handoff` (a filter argument runs one part:
//! `-- idle` or `-- latency`). It prints a Markdown report on stdout. A plain binary
//! (`harness = false`): what matters here are CPU time over a long idle stretch and per-call
//! percentiles, which criterion does not report.
//!
//! 1. **`idle`**: the CPU time of the whole process (every thread's run time, from
//!    `/proc/self/task/*/schedstat`, in nanoseconds) over `TANKER_BENCH_IDLE_SECS` (default 10)
//!    seconds of no traffic, on a two-worker tokio runtime: first the runtime alone, then the
//!    same runtime with `TANKER_BENCH_IDLE_HANDOFFS` (default 4) hand-offs that each delivered
//!    one record and then sat idle. The difference, per hand-off, is the cost of an idle
//!    hand-off, given as a share of one core.
//! 2. **`latency`**: the duration of each `Handoff::send`, two `Instant::now()` around it, from a
//!    plain thread, into a hand-off whose service answers at once. Three paces: a steady
//!    100 000 records/s (batches of 100 every millisecond, sleeping in between), a trickle of
//!    one record per millisecond, sparse records (one every 30 ms), and records further apart
//!    than the worker's 50 ms fast spell (one every 100 ms: the worker is on its slow tick, and
//!    no send wakes it). The cost of the two clock reads alone is its own row, at the steady
//!    pace and at the sparse ones: a thread that has just woken from a sleep reads the clock
//!    (and runs any code) on a cold core, so a sparse pace's tail is partly the measurement's.
//! 3. **`peers`**: `send` side by side with the least a hand-off can do, at sparse paces (one
//!    per millisecond, one every 4 ms, the same time for each), in one run: each period, every variant offers one
//!    record after its own sleep, in an order that rotates, so that each starts on a core that
//!    ran something else meanwhile. The variants: two clock reads alone; one atomic add on a
//!    counter another thread reads every millisecond; a bare `crossbeam_queue::ArrayQueue` push
//!    (the queue `send` uses) drained by a thread every millisecond; tokio's
//!    `mpsc::Sender::try_send` to a task that receives; and `Handoff::send`. The ratios to
//!    the bare push say what the hand-off adds to the queue it is built on.

mod common;

use common::env_or;
use std::hint::black_box;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use tokio::runtime::{Builder, Runtime};
use tower::{service_fn, BoxError};

use tanker::handoff::{Handoff, Sent};

fn runtime() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn handoff(rt: &Runtime, name: &str) -> Handoff<u64> {
    let _guard = rt.enter();
    Handoff::builder()
        .name(name.to_owned())
        .spawn(service_fn(|x: u64| async move { Ok::<_, BoxError>(x) }))
        .expect("hand-off")
}

/// Waits (on real time) until the hand-off finished everything it accepted.
fn wait_finished(handoff: &Handoff<u64>) {
    let start = Instant::now();
    while handoff.counts().pending() > 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "hand-off stuck");
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------------------------

/// CPU time used so far by every live thread of this process, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task").path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// CPU time the process used over `secs` seconds while the main thread slept.
fn cpu_over(secs: u64) -> Duration {
    let before = process_cpu_ns();
    std::thread::sleep(Duration::from_secs(secs));
    Duration::from_nanos(process_cpu_ns() - before)
}

fn share(cpu: Duration, secs: u64) -> f64 {
    100.0 * cpu.as_secs_f64() / secs as f64
}

fn idle() {
    let secs = env_or("TANKER_BENCH_IDLE_SECS", 10);
    let count = env_or("TANKER_BENCH_IDLE_HANDOFFS", 4);
    eprintln!("[handoff bench] idle: {secs} s with the runtime alone, then with {count} hand-offs");

    let rt = runtime();
    // Let the runtime's threads start and settle.
    std::thread::sleep(Duration::from_millis(200));
    let alone = cpu_over(secs);

    let handoffs: Vec<_> = (0..count)
        .map(|i| handoff(&rt, &format!("idle-{i}")))
        .collect();
    for handoff in &handoffs {
        assert_eq!(handoff.send(1), Sent::Accepted);
        wait_finished(handoff);
    }
    // Past any grace period the worker keeps after its last record.
    std::thread::sleep(Duration::from_millis(500));
    let with = cpu_over(secs);
    for handoff in &handoffs {
        assert_eq!(handoff.counts().delivered, 1);
    }

    let added = with.saturating_sub(alone);
    let per = added / count as u32;
    println!("### Idle hand-offs: CPU over {secs} s of no traffic\n");
    println!("| process | CPU time | share of one core |");
    println!("|---|---|---|");
    println!(
        "| runtime alone (2 workers) | {alone:.1?} | {:.3} % |",
        share(alone, secs)
    );
    println!(
        "| runtime + {count} idle hand-offs | {with:.1?} | {:.3} % |",
        share(with, secs)
    );
    println!(
        "| **added per idle hand-off** | {per:.1?} | **{:.3} %** |\n",
        share(per, secs)
    );
}

// ---------------------------------------------------------------------------------------------
// latency
// ---------------------------------------------------------------------------------------------

/// Offers `n` records, `batch` at a time every `period`, timing each `send` (or, with no
/// hand-off, two clock reads alone), and returns the sorted durations in nanoseconds.
fn paced(handoff: Option<&Handoff<u64>>, n: usize, batch: usize, period: Duration) -> Vec<u64> {
    let mut samples = Vec::with_capacity(n);
    let mut next = Instant::now();
    let mut i = 0u64;
    while samples.len() < n {
        for _ in 0..batch.min(n - samples.len()) {
            i += 1;
            let took = match handoff {
                Some(handoff) => {
                    let t0 = Instant::now();
                    let sent = handoff.send(black_box(i));
                    let t1 = Instant::now();
                    assert_eq!(sent, Sent::Accepted, "the queue should never fill here");
                    t1 - t0
                }
                None => {
                    let t0 = Instant::now();
                    let t1 = Instant::now();
                    t1 - t0
                }
            };
            samples.push(took.as_nanos() as u64);
        }
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    samples.sort_unstable();
    samples
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Counts per power-of-two bucket, as `≤64ns:n ≤128ns:n …`.
fn histogram(sorted: &[u64]) -> String {
    let mut buckets = std::collections::BTreeMap::new();
    for &ns in sorted {
        *buckets.entry(ns.max(1).next_power_of_two()).or_insert(0u64) += 1;
    }
    buckets
        .iter()
        .map(|(top, n)| format!("≤{top}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn row(name: &str, sorted: &[u64]) {
    println!(
        "| {name} | {} | {} | {} | {} | {} | {} |",
        sorted.len(),
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        percentile(sorted, 99.9),
        sorted[sorted.len() - 1],
        histogram(sorted),
    );
}

fn latency() {
    let n = env_or("TANKER_BENCH_SENDS", 300_000) as usize;
    let sparse = env_or("TANKER_BENCH_SPARSE_SENDS", 100) as usize;
    let rt = runtime();
    println!("### `Handoff::send` latency (ns), instant service, plain sender thread\n");
    println!("| pace | sends | p50 | p99 | p99.9 | max | histogram (ns bucket: count) |");
    println!("|---|---|---|---|---|---|---|");
    row(
        "two clock reads alone",
        &paced(None, n, 100, Duration::from_millis(1)),
    );
    let steady = handoff(&rt, "steady");
    eprintln!("[handoff bench] latency: {n} sends at 100 000/s");
    // Warm-up: a first second at the same pace.
    paced(Some(&steady), 100_000, 100, Duration::from_millis(1));
    row(
        "100 000/s (100 per ms)",
        &paced(Some(&steady), n, 100, Duration::from_millis(1)),
    );
    let n_trickle = n / 100;
    eprintln!("[handoff bench] latency: {n_trickle} sends at 1 per ms");
    row(
        "1 per ms",
        &paced(Some(&steady), n_trickle, 1, Duration::from_millis(1)),
    );
    row(
        "two clock reads alone, 1 per ms",
        &paced(None, n_trickle, 1, Duration::from_millis(1)),
    );
    eprintln!("[handoff bench] latency: {sparse} sends, one every 30 ms");
    row(
        "one every 30 ms",
        &paced(Some(&steady), sparse, 1, Duration::from_millis(30)),
    );
    row(
        "two clock reads alone, one every 30 ms",
        &paced(None, sparse, 1, Duration::from_millis(30)),
    );
    let parked = env_or("TANKER_BENCH_PARKED_SENDS", 30) as usize;
    eprintln!("[handoff bench] latency: {parked} sends, one every 100 ms");
    row(
        "one every 100 ms",
        &paced(Some(&steady), parked, 1, Duration::from_millis(100)),
    );
    wait_finished(&steady);
    println!();
}

// ---------------------------------------------------------------------------------------------
// peers
// ---------------------------------------------------------------------------------------------

/// One way to hand a record over, timed by [`side_by_side`].
struct Variant<'a> {
    name: &'static str,
    offer: Box<dyn FnMut(u64) + 'a>,
    samples: Vec<u64>,
}

/// Offers `n` records to every variant, one per variant per `period`, each after its own sleep
/// (the period is split in equal slots), in an order that rotates every period; returns each
/// variant's sorted durations in nanoseconds.
fn side_by_side(variants: &mut [Variant<'_>], n: usize, period: Duration) {
    let slot = period / variants.len() as u32;
    let mut next = Instant::now();
    for i in 0..n {
        for k in 0..variants.len() {
            next += slot;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            let variant = &mut variants[(i + k) % variants.len()];
            let t0 = Instant::now();
            (variant.offer)(black_box(i as u64));
            let t1 = Instant::now();
            variant.samples.push((t1 - t0).as_nanos() as u64);
        }
    }
    for variant in variants.iter_mut() {
        variant.samples.sort_unstable();
    }
}

fn peers() {
    let n = env_or("TANKER_BENCH_PEER_SENDS", 20_000) as usize;
    let rt = runtime();
    let handoff = handoff(&rt, "peers");
    // The counter and the bare queue each have a thread that looks at them every millisecond,
    // as the hand-off's worker does on its fast tick.
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let queue = Arc::new(ArrayQueue::<u64>::new(50_000));
    let drainer = {
        let (stop, counter, queue) = (stop.clone(), counter.clone(), queue.clone());
        std::thread::spawn(move || {
            let mut seen = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seen = seen.max(counter.load(Ordering::Relaxed));
                while queue.pop().is_some() {}
                std::thread::sleep(Duration::from_millis(1));
            }
            black_box(seen);
        })
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(50_000);
    let receiver = rt.spawn(async move { while rx.recv().await.is_some() {} });

    println!("### `send` beside the least a hand-off can do, at sparse paces (ns)\n");
    println!(
        "Each period, every variant offers one record after its own sleep, in a rotating \
         order; {n} records each. Ratios are to the bare `ArrayQueue` push.\n"
    );
    println!("| pace | variant | p50 | p99 | p99.9 | max | p50 / p99.9 vs bare push |");
    println!("|---|---|---|---|---|---|---|");
    for (pace, period) in [
        ("1 per ms", Duration::from_millis(1)),
        ("one every 4 ms", Duration::from_millis(4)),
    ] {
        // The same time for each pace.
        let n = (n as u128 * Duration::from_millis(1).as_nanos() / period.as_nanos()) as usize;
        let n = n.max(100);
        eprintln!("[handoff bench] peers: {n} records each, {pace}");
        let mut variants = vec![
            Variant {
                name: "two clock reads alone",
                offer: Box::new(|_| {}),
                samples: Vec::new(),
            },
            Variant {
                name: "one atomic add",
                offer: Box::new(|i| {
                    counter.fetch_add(i, Ordering::Relaxed);
                }),
                samples: Vec::new(),
            },
            Variant {
                name: "bare `ArrayQueue::push`",
                offer: Box::new(|i| {
                    assert!(queue.push(i).is_ok(), "the drained queue never fills");
                }),
                samples: Vec::new(),
            },
            Variant {
                name: "tokio `mpsc::Sender::try_send`",
                offer: Box::new(|i| {
                    assert!(tx.try_send(i).is_ok(), "the received channel never fills");
                }),
                samples: Vec::new(),
            },
            Variant {
                name: "`Handoff::send`",
                offer: Box::new(|i| {
                    assert_eq!(
                        handoff.send(i),
                        Sent::Accepted,
                        "the queue never fills here"
                    );
                }),
                samples: Vec::new(),
            },
        ];
        side_by_side(&mut variants, n, period);
        let bare = variants
            .iter()
            .find(|v| v.name.starts_with("bare"))
            .map(|v| (percentile(&v.samples, 50.0), percentile(&v.samples, 99.9)))
            .expect("the bare push is a variant");
        for v in &variants {
            let (p50, p999) = (percentile(&v.samples, 50.0), percentile(&v.samples, 99.9));
            println!(
                "| {pace} | {} | {p50} | {} | {p999} | {} | {:.2} / {:.2} |",
                v.name,
                percentile(&v.samples, 99.0),
                v.samples[v.samples.len() - 1],
                p50 as f64 / bare.0.max(1) as f64,
                p999 as f64 / bare.1.max(1) as f64,
            );
        }
    }
    println!();
    stop.store(true, Ordering::Relaxed);
    drainer.join().expect("drainer");
    drop(tx);
    rt.block_on(receiver).expect("receiver");
    wait_finished(&handoff);
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| filter.is_empty() || filter.iter().any(|f| part.contains(f.as_str()));
    if wanted("idle") {
        idle();
    }
    if wanted("latency") {
        latency();
    }
    if wanted("peers") {
        peers();
    }
}
