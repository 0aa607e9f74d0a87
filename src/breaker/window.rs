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
//! move it forward from the clock they read anyway, and while no ticker runs (no runtime yet, or
//! its runtime shut down) successes read the clock themselves. The ticker sleeps on tokio's
//! clock, so paused time drives it in tests. Whenever the epoch moves forward, the slots it
//! skipped are emptied, so a slot never holds counts older than the window.

use crate::sync::{AtomicU64, Ordering};
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

#[inline]
fn pack(epoch: u32, count: u32) -> u64 {
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

#[derive(Default)]
struct Slot {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

pub(crate) struct Window {
    origin: Instant,
    bucket_nanos: u64,
    slots: Box<[Slot]>,
    /// The newest epoch seen by anybody, shifted left by [`INDEX_BITS`], with its slot's index in
    /// the low bits, so that a success finds its slot with one load and no division. Epochs
    /// start at 1 so that a zero tag means "empty".
    current: AtomicU64,
    /// Counts of buckets that were recycled, for the all-time totals.
    retired_calls: AtomicU64,
    retired_failures: AtomicU64,
    retired_slow: AtomicU64,
}

impl Window {
    pub(crate) fn new(origin: Instant, width: Duration, buckets: u32) -> Self {
        let bucket_nanos = (width.as_nanos() / u128::from(buckets)).max(1);
        Self {
            origin,
            bucket_nanos: u64::try_from(bucket_nanos).unwrap_or(u64::MAX),
            slots: (0..buckets).map(|_| Slot::default()).collect(),
            current: AtomicU64::new(Self::pack_current(1, buckets)),
            retired_calls: AtomicU64::new(0),
            retired_failures: AtomicU64::new(0),
            retired_slow: AtomicU64::new(0),
        }
    }

    /// When the bucket after `epoch` begins.
    pub(crate) fn next_boundary(&self, epoch: u64) -> Instant {
        let nanos = epoch.saturating_mul(self.bucket_nanos);
        self.origin + Duration::from_nanos(nanos)
    }

    /// The epoch of `now`, and remembers it if it is the newest seen.
    #[inline]
    pub(crate) fn observe(&self, now: Instant) -> u64 {
        let nanos = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        let epoch = nanos / self.bucket_nanos + 1;
        if epoch > self.epoch() {
            let packed = Self::pack_current(epoch, self.slots.len() as u32);
            let previous = self.current.fetch_max(packed, Ordering::AcqRel) >> INDEX_BITS;
            if epoch > previous {
                self.empty_skipped(previous, epoch);
            }
        }
        epoch
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
                    let old = counter.swap(pack(skipped as u32, 0), Ordering::Relaxed);
                    retired.fetch_add(u64::from(count(old)), Ordering::Relaxed);
                } else {
                    renew(counter, skipped, 0, retired);
                }
            }
        }
    }

    #[inline]
    fn slot(&self, epoch: u64) -> &Slot {
        &self.slots[(epoch % self.slots.len() as u64) as usize]
    }

    /// Records a success in the current epoch, or at `now()` when the epoch is not kept current
    /// by a ticker.
    #[inline]
    pub(crate) fn record_success(&self, ticking: bool, now: impl FnOnce() -> Instant) {
        if ticking {
            let current = self.current.load(Ordering::Acquire);
            let slot = &self.slots[(current & INDEX_MASK) as usize];
            bump(&slot.calls, current >> INDEX_BITS, &self.retired_calls);
        } else {
            let epoch = self.observe(now());
            bump(&self.slot(epoch).calls, epoch, &self.retired_calls);
        }
    }

    /// Records a call that failed or was slow (or both) at `now`.
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
            totals.calls += live(slot.calls.load(Ordering::Relaxed));
            totals.failures += live(slot.failures.load(Ordering::Relaxed));
            totals.slow += live(slot.slow.load(Ordering::Relaxed));
        }
        totals
    }

    /// The window as it stands at `now`.
    pub(crate) fn totals_at(&self, now: Instant) -> Totals {
        self.totals(self.observe(now))
    }

    /// Every call ever recorded, including those that have left the window.
    pub(crate) fn all_time(&self) -> Totals {
        let sum = |retired: &AtomicU64, pick: fn(&Slot) -> &AtomicU64| {
            retired.load(Ordering::Relaxed)
                + self
                    .slots
                    .iter()
                    .map(|slot| u64::from(count(pick(slot).load(Ordering::Relaxed))))
                    .sum::<u64>()
        };
        Totals {
            calls: sum(&self.retired_calls, |s| &s.calls),
            failures: sum(&self.retired_failures, |s| &s.failures),
            slow: sum(&self.retired_slow, |s| &s.slow),
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

/// Moves a counter's count to the retired total and zeroes it, keeping its epoch.
fn retire(counter: &AtomicU64, retired: &AtomicU64) {
    let mut word = counter.load(Ordering::Relaxed);
    loop {
        if count(word) == 0 {
            return;
        }
        match counter.compare_exchange_weak(
            word,
            pack(tag(word), 0),
            Ordering::Relaxed,
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

/// Adds one to `counter` for `epoch`.
#[inline]
fn bump(counter: &AtomicU64, epoch: u64, retired: &AtomicU64) {
    let word = counter.load(Ordering::Relaxed);
    if tag(word) == epoch as u32 {
        counter.fetch_add(1, Ordering::Relaxed);
    } else {
        renew(counter, epoch, 1, retired);
    }
}

/// Moves `counter` to `epoch` with `add` counted in it, retiring the counts of an older epoch.
/// If the counter is already at `epoch` (or, for a thread whose epoch went stale, at a newer one),
/// `add` is added there instead: a count is never lost.
fn renew(counter: &AtomicU64, epoch: u64, add: u32, retired: &AtomicU64) {
    let epoch = epoch as u32;
    let mut word = counter.load(Ordering::Relaxed);
    loop {
        let age = epoch.wrapping_sub(tag(word));
        if age == 0 || age > u32::MAX / 2 {
            if add > 0 {
                counter.fetch_add(u64::from(add), Ordering::Relaxed);
            }
            return;
        }
        match counter.compare_exchange_weak(
            word,
            pack(epoch, add),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                if count(word) > 0 {
                    retired.fetch_add(u64::from(count(word)), Ordering::Relaxed);
                }
                return;
            }
            Err(now) => word = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> (Window, Instant) {
        let origin = Instant::now();
        (Window::new(origin, Duration::from_secs(10), 10), origin)
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
            w.record_success(false, || t0);
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
            w.record_success(false, || t0);
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
        w.record_success(false, || t0 + secs(10));
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
        w.record_success(true, || {
            unreachable!("a ticking window does not read the clock")
        });
        assert_eq!(w.totals_at(t0 + secs(3)).calls, 1);
        assert_eq!(w.totals_at(t0 + secs(12)).calls, 1);
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
        w.record_success(false, || t0);
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
                            w.record_success(false, || at);
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
