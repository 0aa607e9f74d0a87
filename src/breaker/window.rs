//! The sliding time window: fixed buckets, fixed memory, O(1) per call, no lock.
//!
//! The window is `buckets` slots, each covering `bucket_width` of time. A slot holds three
//! counters (calls, failures, slow calls), each packed in one `AtomicU64` with the number of the
//! bucket (the *epoch*) it belongs to in the high 32 bits and the count in the low 32 bits. A
//! writer that finds a slot tagged with an older epoch resets it with one compare-and-swap; a
//! reader sums the slots whose epoch is within the last `buckets` epochs. So old calls fall out of
//! the window as it slides, without a timer and without a lock.
//!
//! # Knowing the current bucket without reading the clock on every call
//!
//! Reading the clock costs more than the rest of a call, so successes do not read it. The window
//! keeps the current epoch in an atomic; a ticker task on the tokio runtime (see
//! [`ticker`](super::ticker)) moves it forward at every bucket boundary, failures and slow calls
//! move it forward from the clock they read anyway, and while no ticker runs (no runtime yet, its
//! runtime shut down, or a runtime without timers) successes read the clock themselves. The
//! ticker sleeps on tokio's clock, so paused time drives it in tests. Whenever the epoch moves
//! forward, the slots it skipped are emptied, so a slot never holds counts older than the window.
//!
//! A ticker can stall without ending: its runtime is alive but nobody drives it (a
//! `current_thread` runtime used once for a warm-up, a test's runtime). Successes notice: the
//! first success in a bucket, and then every success whose count in its bucket is a power of two
//! or a multiple of 64, reads the clock (about one read in 64 under load, so ~0.5 ns a call). If
//! the epoch it finds is two or more buckets ahead of the one the ticker kept, the ticker has
//! missed a whole bucket: it is dropped, successes read the clock again, and the next call starts
//! a ticker on its own runtime. At most 64 successes land in a stale bucket before that.
//!
//! # Consistent totals
//!
//! A failure adds to the bucket's calls and then to its failures (slow calls likewise); a reader
//! loads a bucket's slow calls and failures before its calls, and counts a bucket's failures only
//! while they carry the same epoch as its calls, and never more than its calls. So every
//! snapshot has `failures <= calls` and `slow <= calls`, whatever runs between the loads, and a
//! failure is never counted without its call (which would raise the failure rate above what was
//! recorded).

use crate::clock::{nanos, Origin};
use crate::sync::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const COUNT_MASK: u64 = 0xFFFF_FFFF;
/// Bits of [`Window::current`] that hold the slot index (the policy allows at most 1000 slots).
const INDEX_BITS: u32 = 16;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

#[inline]
fn tag(word: u64) -> u32 {
    (word >> 32) as u32
}

#[inline]
fn count(word: u64) -> u32 {
    (word & COUNT_MASK) as u32
}

/// A bucket's counter: the epoch that owns it (its tag) in the high 32 bits, the count in the
/// low 32 bits.
#[inline]
fn tagged(epoch: u32, count: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(count)
}

/// What happened to one call, as the window counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

/// Sums over the window at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

/// The ticker that keeps the epoch current, as the window knows it.
#[derive(Debug, Default)]
pub(crate) struct TickerSeat {
    /// The id of the ticker task believed to run, or [`NO_TICKER`].
    id: AtomicU64,
    /// The epoch in which a ticker was last started or tried, to try at most once per bucket
    /// (0: try at once).
    tried: AtomicU64,
    /// A runtime without timers was met: no ticker can be started; successes read the clock.
    timerless: AtomicBool,
}

/// The id of no ticker.
pub(crate) const NO_TICKER: u64 = 0;

impl TickerSeat {
    /// Whether a ticker may be tried now (not yet in `epoch`, and timers were never missing).
    pub(crate) fn may_try(&self, epoch: u64) -> bool {
        !self.timerless.load(Ordering::Relaxed)
            && self.tried.swap(epoch, Ordering::Relaxed) != epoch
    }

    /// Takes the seat for ticker `id`; false if another ticker has it.
    pub(crate) fn claim(&self, id: u64) -> bool {
        self.id
            .compare_exchange(NO_TICKER, id, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether ticker `id` is still the one the window counts on.
    pub(crate) fn is(&self, id: u64) -> bool {
        self.id.load(Ordering::Acquire) == id
    }

    /// Frees the seat of ticker `id` (it ended, or stalled), so that the next call tries again at
    /// once.
    pub(crate) fn release(&self, id: u64) {
        if self
            .id
            .compare_exchange(id, NO_TICKER, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.tried.store(0, Ordering::Relaxed);
        }
    }

    /// Remembers that timers are missing: never try again.
    pub(crate) fn timers_missing(&self) {
        self.timerless.store(true, Ordering::Relaxed);
    }
}

/// The counters of one bucket: a slot of the ring, reused every `buckets` epochs. Each
/// counter is a tagged count (see [`tagged`]).
#[derive(Default)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

pub(crate) struct Window {
    origin: Origin,
    bucket_nanos: u64,
    slots: Box<[Bucket]>,
    /// The newest epoch seen by anybody, shifted left by [`INDEX_BITS`], with its slot's index in
    /// the low bits, so that a success finds its slot with one load and no division. Epochs
    /// start at 1 so that a zero tag means "empty".
    current: AtomicU64,
    /// The ticker that keeps `current` moving.
    ticker: TickerSeat,
    /// Counts of buckets that were recycled, for the all-time totals.
    retired_calls: AtomicU64,
    retired_failures: AtomicU64,
    retired_slow: AtomicU64,
}

impl Window {
    pub(crate) fn new(origin: Origin, width: Duration, buckets: u32) -> Self {
        Self {
            origin,
            bucket_nanos: (nanos(width) / u64::from(buckets)).max(1),
            slots: (0..buckets).map(|_| Bucket::default()).collect(),
            current: AtomicU64::new(Self::pack_current(1, buckets)),
            ticker: TickerSeat::default(),
            retired_calls: AtomicU64::new(0),
            retired_failures: AtomicU64::new(0),
            retired_slow: AtomicU64::new(0),
        }
    }

    /// The seat of the ticker that keeps the epoch current.
    pub(crate) fn ticker(&self) -> &TickerSeat {
        &self.ticker
    }

    /// When the bucket after `epoch` begins.
    pub(crate) fn next_boundary(&self, epoch: u64) -> Instant {
        self.origin.at(epoch.saturating_mul(self.bucket_nanos))
    }

    /// The epoch of `now`, and remembers it if it is the newest seen. If the epoch had fallen
    /// two or more buckets behind although a ticker should keep it current, the ticker has
    /// stalled: its seat is freed.
    #[inline]
    pub(crate) fn observe(&self, now: Instant) -> u64 {
        let (previous, epoch) = self.advance(now);
        if epoch > previous.saturating_add(1) {
            let ticker = self.ticker.id.load(Ordering::Acquire);
            if ticker != NO_TICKER {
                self.ticker.release(ticker);
            }
        }
        epoch
    }

    /// For the ticker: the epoch of `now`, remembered if it is the newest seen.
    pub(crate) fn tick(&self, now: Instant) -> u64 {
        self.advance(now).1
    }

    /// Moves the epoch to that of `now` if it is newer; returns the epoch seen before, and that
    /// of `now`.
    #[inline]
    fn advance(&self, now: Instant) -> (u64, u64) {
        let epoch = self.origin.nanos(now) / self.bucket_nanos + 1;
        let seen = self.epoch();
        if epoch > seen {
            let packed = Self::pack_current(epoch, self.slots.len() as u32);
            let previous = self.current.fetch_max(packed, Ordering::AcqRel) >> INDEX_BITS;
            if epoch > previous {
                self.empty_skipped(previous, epoch);
            }
            return (previous, epoch);
        }
        (seen, epoch)
    }

    fn pack_current(epoch: u64, buckets: u32) -> u64 {
        (epoch << INDEX_BITS) | (epoch % u64::from(buckets))
    }

    /// The current epoch, as last moved forward by anybody.
    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.current.load(Ordering::Acquire) >> INDEX_BITS
    }

    /// Empties the slots of the epochs after `previous` up to `epoch`, which nobody recorded in
    /// yet, so that no slot keeps counts from a full turn (or many turns) ago.
    fn empty_skipped(&self, previous: u64, epoch: u64) {
        let buckets = self.slots.len() as u64;
        let first = (previous + 1).max(epoch.saturating_sub(buckets - 1));
        // Every slot holds one of the last `buckets` epochs before `previous`, so comparing
        // 32-bit tags is exact unless the jump is nearly 2^32 buckets; then empty by force.
        let aliased = epoch - previous >= (1u64 << 32) - buckets;
        for skipped in first..=epoch {
            let slot = self.slot(skipped);
            for (counter, retired) in [
                (&slot.calls, &self.retired_calls),
                (&slot.failures, &self.retired_failures),
                (&slot.slow, &self.retired_slow),
            ] {
                if aliased {
                    let old = counter.swap(tagged(skipped as u32, 0), Ordering::AcqRel);
                    retired.fetch_add(u64::from(count(old)), Ordering::Relaxed);
                } else {
                    renew(counter, skipped, 0, retired);
                }
            }
        }
    }

    #[inline]
    fn slot(&self, epoch: u64) -> &Bucket {
        &self.slots[(epoch % self.slots.len() as u64) as usize]
    }

    /// Records a success in the current epoch, or at `now()` when no ticker keeps the epoch
    /// current. Reads the clock at the sample points of the module docs to notice a stalled
    /// ticker. Returns whether no ticker runs, for the caller to start one.
    #[inline]
    pub(crate) fn record_success(&self, now: impl FnOnce() -> Instant) -> bool {
        if self.ticker.id.load(Ordering::Relaxed) == NO_TICKER {
            let epoch = self.observe(now());
            bump(&self.slot(epoch).calls, epoch, &self.retired_calls);
            return true;
        }
        let current = self.current.load(Ordering::Acquire);
        let slot = &self.slots[(current & INDEX_MASK) as usize];
        let count = bump(&slot.calls, current >> INDEX_BITS, &self.retired_calls);
        if is_sample(count) {
            self.observe(now());
            return self.ticker.id.load(Ordering::Relaxed) == NO_TICKER;
        }
        false
    }

    /// Records a call that failed or was slow (or both) at `now`: its call first, then its
    /// failure and slowness (see [Consistent totals](self#consistent-totals)).
    pub(crate) fn record(&self, now: Instant, sample: Sample) {
        let epoch = self.observe(now);
        let slot = self.slot(epoch);
        bump(&slot.calls, epoch, &self.retired_calls);
        if sample.failure {
            bump(&slot.failures, epoch, &self.retired_failures);
        }
        if sample.slow {
            bump(&slot.slow, epoch, &self.retired_slow);
        }
    }

    /// Sums the buckets of the window that ends in `epoch`.
    pub(crate) fn totals(&self, epoch: u64) -> Totals {
        let buckets = self.slots.len() as u32;
        let live = |word: u64| {
            let age = (epoch as u32).wrapping_sub(tag(word));
            if age < buckets {
                u64::from(count(word))
            } else {
                0
            }
        };
        let mut totals = Totals::default();
        for slot in self.slots.iter() {
            // Failures and slow calls first, then the calls: a failure seen here has its call
            // counted already (see the module docs).
            let slow = slot.slow.load(Ordering::Acquire);
            let failures = slot.failures.load(Ordering::Acquire);
            let calls = slot.calls.load(Ordering::Acquire);
            let within = |word: u64| {
                if tag(word) == tag(calls) {
                    live(word).min(live(calls))
                } else {
                    0
                }
            };
            totals.calls += live(calls);
            totals.failures += within(failures);
            totals.slow += within(slow);
        }
        totals
    }

    /// The window as it stands at `now`.
    pub(crate) fn totals_at(&self, now: Instant) -> Totals {
        self.totals(self.observe(now))
    }

    /// Every call ever recorded, including those that have left the window. The counts of a
    /// bucket being recycled may be missed (or, for calls, seen twice) by a reader that runs at
    /// that moment; failures and slow calls are read first and never exceed the calls.
    pub(crate) fn all_time(&self) -> Totals {
        let in_slots = |pick: fn(&Bucket) -> &AtomicU64| {
            self.slots
                .iter()
                .map(|slot| u64::from(count(pick(slot).load(Ordering::Acquire))))
                .sum::<u64>()
        };
        let slow = in_slots(|s| &s.slow) + self.retired_slow.load(Ordering::Acquire);
        let failures = in_slots(|s| &s.failures) + self.retired_failures.load(Ordering::Acquire);
        let calls = self.retired_calls.load(Ordering::Acquire) + in_slots(|s| &s.calls);
        Totals {
            calls,
            failures: failures.min(calls),
            slow: slow.min(calls),
        }
    }

    /// Empties the window (the breaker closed after a successful probe, or was reset).
    pub(crate) fn clear(&self) {
        for slot in self.slots.iter() {
            retire(&slot.calls, &self.retired_calls);
            retire(&slot.failures, &self.retired_failures);
            retire(&slot.slow, &self.retired_slow);
        }
    }
}

/// Whether a success that brought its bucket's count to `count` reads the clock: the first ones
/// of a bucket often, then one in 64.
#[inline]
fn is_sample(count: u32) -> bool {
    count & (count.wrapping_sub(1)) == 0 || count.is_multiple_of(64)
}

/// Moves a counter's count to the retired total and zeroes it, keeping its epoch.
fn retire(counter: &AtomicU64, retired: &AtomicU64) {
    let mut word = counter.load(Ordering::Relaxed);
    loop {
        if count(word) == 0 {
            return;
        }
        match counter.compare_exchange_weak(
            word,
            tagged(tag(word), 0),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                retired.fetch_add(u64::from(count(word)), Ordering::Relaxed);
                return;
            }
            Err(now) => word = now,
        }
    }
}

/// Adds one to `counter` for `epoch`; returns the count it reached there. Release, so that a
/// reader that sees a failure (added after its call) sees the call too.
#[inline]
fn bump(counter: &AtomicU64, epoch: u64, retired: &AtomicU64) -> u32 {
    let word = counter.load(Ordering::Relaxed);
    if tag(word) == epoch as u32 {
        count(counter.fetch_add(1, Ordering::Release)).wrapping_add(1)
    } else {
        renew(counter, epoch, 1, retired)
    }
}

/// Moves `counter` to `epoch` with `add` counted in it, retiring the counts of an older epoch.
/// If the counter is already at `epoch` (or, for a thread whose epoch went stale, at a newer one),
/// `add` is added there instead: a count is never lost. Returns the count reached.
fn renew(counter: &AtomicU64, epoch: u64, add: u32, retired: &AtomicU64) -> u32 {
    let epoch = epoch as u32;
    let mut word = counter.load(Ordering::Relaxed);
    loop {
        let age = epoch.wrapping_sub(tag(word));
        if age == 0 || age > u32::MAX / 2 {
            return count(counter.fetch_add(u64::from(add), Ordering::Release)).wrapping_add(add);
        }
        match counter.compare_exchange_weak(
            word,
            tagged(epoch, add),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                if count(word) > 0 {
                    retired.fetch_add(u64::from(count(word)), Ordering::Relaxed);
                }
                return add;
            }
            Err(now) => word = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> (Window, Instant) {
        let origin = Origin::now();
        (
            Window::new(origin, Duration::from_secs(10), 10),
            origin.instant(),
        )
    }

    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn counts_within_the_window() {
        let (w, t0) = window();
        for _ in 0..3 {
            w.record_success(|| t0);
        }
        w.record(t0 + secs(1), FAIL);
        let totals = w.totals_at(t0 + secs(1));
        assert_eq!(totals.calls, 4);
        assert_eq!(totals.failures, 1);
    }

    #[test]
    fn old_buckets_slide_out() {
        let (w, t0) = window();
        for _ in 0..100 {
            w.record_success(|| t0);
        }
        w.record(t0 + Duration::from_millis(9_500), FAIL);
        assert_eq!(w.totals_at(t0 + Duration::from_millis(9_500)).calls, 101);
        // Ten seconds after the successes their bucket has left the window.
        let later = t0 + secs(10);
        w.record(later, FAIL);
        assert_eq!(
            w.totals_at(later),
            Totals {
                calls: 2,
                failures: 2,
                slow: 0
            }
        );
        // Nothing is forgotten in the all-time totals.
        assert_eq!(w.all_time().calls, 102);
    }

    #[test]
    fn a_slot_is_recycled_after_a_full_turn() {
        let (w, t0) = window();
        w.record(t0, FAIL);
        // Same slot index, ten buckets later.
        w.record_success(|| t0 + secs(10));
        assert_eq!(
            w.totals_at(t0 + secs(10)),
            Totals {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(
            w.all_time(),
            Totals {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
    }

    #[test]
    fn a_ticking_window_records_successes_in_the_epoch_the_ticker_set() {
        let (w, t0) = window();
        w.observe(t0 + secs(3));
        assert!(w.ticker.claim(7));
        // The first two successes of a bucket are sample points, the third is not.
        w.record_success(|| t0 + secs(3));
        w.record_success(|| t0 + secs(3));
        w.record_success(|| unreachable!("a ticking window does not read the clock here"));
        assert_eq!(w.totals_at(t0 + secs(3)).calls, 3);
        assert_eq!(w.totals_at(t0 + secs(12)).calls, 3);
        assert_eq!(w.totals_at(t0 + secs(13)).calls, 0);
    }

    #[test]
    fn counts_from_whole_turns_ago_never_come_back() {
        let (w, t0) = window();
        for _ in 0..9 {
            w.record(t0, FAIL);
        }
        // 2^32 buckets later the 32-bit tags would match again; the skipped slots were emptied.
        let much_later = t0 + Duration::from_secs(1) * (1u32 << 31) * 2;
        w.record(much_later, FAIL);
        assert_eq!(
            w.totals_at(much_later),
            Totals {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
        assert_eq!(w.all_time().calls, 10);
    }

    #[test]
    fn clear_empties_the_window_but_keeps_all_time_totals() {
        let (w, t0) = window();
        w.record(t0, FAIL);
        w.record_success(|| t0);
        w.clear();
        assert_eq!(w.totals_at(t0), Totals::default());
        assert_eq!(
            w.all_time(),
            Totals {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
    }

    #[test]
    fn concurrent_writers_lose_no_count() {
        let (w, t0) = window();
        let w = std::sync::Arc::new(w);
        let threads: Vec<_> = (0..2u64)
            .map(|k| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        // Both threads cross bucket boundaries while the other writes.
                        let at = t0 + Duration::from_millis((i / 1_000) * 700 + k);
                        if i % 10 == 0 {
                            w.record(at, FAIL);
                        } else {
                            w.record_success(|| at);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            w.all_time(),
            Totals {
                calls: 40_000,
                failures: 4_000,
                slow: 0
            }
        );
    }
}

/// Model checks of the window's lock-free protocol (run by `scripts/loom.sh`): epoch advances
/// racing with writers and readers. The clock is passed in, so loom sees every interleaving of
/// the atomics alone.
#[cfg(all(test, tanker_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };

    fn window() -> (Arc<Window>, Instant) {
        let origin = Origin::now();
        (
            Arc::new(Window::new(origin, Duration::from_secs(2), 2)),
            origin.instant(),
        )
    }

    /// A reader racing a failure and a success never sees more failures than calls.
    #[test]
    fn loom_totals_never_show_a_failure_without_its_call() {
        loom::model(|| {
            let (w, t0) = window();
            let writer = {
                let w = w.clone();
                thread::spawn(move || {
                    w.record(t0, FAIL);
                    w.record_success(|| t0);
                })
            };
            let totals = w.totals(1);
            assert!(totals.failures <= totals.calls, "{totals:?}");
            let all = w.all_time();
            assert!(all.failures <= all.calls, "{all:?}");
            writer.join().unwrap();
            assert_eq!(
                w.totals(1),
                Totals {
                    calls: 2,
                    failures: 1,
                    slow: 0
                }
            );
        });
    }

    /// Two writers, one of them moving the window a full turn on (recycling the slot of the
    /// other's bucket): no count is lost. A writer whose epoch went stale adds to the newer
    /// bucket it finds rather than lose its count (see `renew`).
    #[test]
    fn loom_an_epoch_advance_loses_no_count() {
        loom::model(|| {
            let (w, t0) = window();
            let late = {
                let w = w.clone();
                thread::spawn(move || {
                    // Two buckets later: the same slot, a turn on.
                    w.record(t0 + Duration::from_secs(2), FAIL);
                })
            };
            w.record(t0, FAIL);
            w.record_success(|| t0);
            late.join().unwrap();
            assert_eq!(
                w.all_time(),
                Totals {
                    calls: 3,
                    failures: 2,
                    slow: 0
                }
            );
            let now = w.totals(3);
            assert!(now.failures <= now.calls, "{now:?}");
            assert!(
                now.calls >= 1 && now.failures >= 1,
                "the late failure is there: {now:?}"
            );
        });
    }

    /// A success that finds the epoch moved under it counts once, in the bucket it read.
    #[test]
    fn loom_a_success_racing_an_advance_counts_once() {
        loom::model(|| {
            let (w, t0) = window();
            assert!(w.ticker.claim(1));
            let ticker = {
                let w = w.clone();
                thread::spawn(move || {
                    w.tick(t0 + Duration::from_secs(1));
                })
            };
            w.record_success(|| t0 + Duration::from_secs(1));
            ticker.join().unwrap();
            assert_eq!(w.all_time().calls, 1);
            assert_eq!(w.totals(2).calls, 1);
        });
    }
}
