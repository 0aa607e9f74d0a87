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
//! Reading the clock costs more than the rest of a call, so a success does not always read it.
//! The window keeps the newest epoch anybody has seen. Failures and slow calls always read the
//! clock; a success reads it only while the bucket it would land in has fewer than
//! [`SAMPLE_BELOW`] calls, and then once every [`SAMPLE_EVERY`] calls. Under light traffic every
//! call reads the clock, so attribution is exact. Under heavy traffic at most `SAMPLE_EVERY - 1`
//! successes land in the previous bucket after a boundary, which is less than one bucket's worth
//! of calls: the window stays accurate to within one bucket, its own granularity. Time comes from
//! the caller, so paused tokio time drives it in tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// While a bucket holds fewer calls than this, every success reads the clock.
pub(crate) const SAMPLE_BELOW: u32 = 64;
/// Beyond [`SAMPLE_BELOW`], one success in this many reads the clock.
pub(crate) const SAMPLE_EVERY: u32 = 64;

const COUNT_MASK: u64 = 0xFFFF_FFFF;

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
    /// The newest epoch seen by anybody; epochs start at 1 so that 0 means "empty".
    epoch: AtomicU64,
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
            epoch: AtomicU64::new(1),
            retired_calls: AtomicU64::new(0),
            retired_failures: AtomicU64::new(0),
            retired_slow: AtomicU64::new(0),
        }
    }

    /// The epoch of `now`, and remembers it if it is the newest seen.
    #[inline]
    pub(crate) fn observe(&self, now: Instant) -> u64 {
        let nanos = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        let epoch = nanos / self.bucket_nanos + 1;
        if epoch > self.epoch.load(Ordering::Relaxed) {
            self.epoch.fetch_max(epoch, Ordering::Relaxed);
        }
        epoch
    }

    #[inline]
    fn slot(&self, epoch: u64) -> &Slot {
        &self.slots[(epoch % self.slots.len() as u64) as usize]
    }

    /// Records a success, reading the clock through `now` only when the bucket needs it.
    #[inline]
    pub(crate) fn record_success(&self, now: impl FnOnce() -> Instant) {
        let mut epoch = self.epoch.load(Ordering::Relaxed);
        let word = self.slot(epoch).calls.load(Ordering::Relaxed);
        let seen = if tag(word) == epoch as u32 {
            count(word)
        } else {
            0
        };
        if seen < SAMPLE_BELOW || (seen + 1) % SAMPLE_EVERY == 0 {
            epoch = self.observe(now());
        }
        bump(&self.slot(epoch).calls, epoch, &self.retired_calls);
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

    /// The window as of the newest epoch seen.
    pub(crate) fn current_totals(&self) -> Totals {
        self.totals(self.epoch.load(Ordering::Relaxed))
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

/// Adds one to `counter` for `epoch`, recycling the slot if it still holds an older epoch.
#[inline]
fn bump(counter: &AtomicU64, epoch: u64, retired: &AtomicU64) {
    let epoch = epoch as u32;
    let mut word = counter.load(Ordering::Relaxed);
    loop {
        let age = epoch.wrapping_sub(tag(word));
        if age == 0 || age > u32::MAX / 2 {
            // Same epoch, or the slot already moved to a newer one (this thread's epoch is stale
            // by a whole window): count the call there rather than lose it.
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match counter.compare_exchange_weak(
            word,
            pack(epoch, 1),
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

    #[test]
    fn counts_within_the_window() {
        let (w, t0) = window();
        for _ in 0..3 {
            w.record_success(|| t0);
        }
        w.record(t0 + Duration::from_secs(1), FAIL);
        let totals = w.totals(w.observe(t0 + Duration::from_secs(1)));
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
        assert_eq!(w.current_totals().calls, 101);
        // Ten seconds after the successes their bucket has left the window.
        let later = t0 + Duration::from_millis(10_000);
        w.record(later, FAIL);
        let totals = w.current_totals();
        assert_eq!(totals.calls, 2);
        assert_eq!(totals.failures, 2);
        // Nothing is forgotten in the all-time totals.
        assert_eq!(w.all_time().calls, 102);
    }

    #[test]
    fn a_slot_is_recycled_after_a_full_turn() {
        let (w, t0) = window();
        w.record(t0, FAIL);
        // Same slot index, ten buckets later.
        w.record_success(|| t0 + Duration::from_secs(10));
        let totals = w.current_totals();
        assert_eq!(
            totals,
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
    fn sparse_successes_read_the_clock_every_time() {
        let (w, t0) = window();
        let mut reads = 0;
        for i in 0..SAMPLE_BELOW {
            w.record_success(|| {
                reads += 1;
                t0 + Duration::from_millis(u64::from(i))
            });
        }
        assert_eq!(reads, SAMPLE_BELOW);
    }

    #[test]
    fn dense_successes_read_the_clock_rarely_and_stay_within_one_bucket() {
        let (w, t0) = window();
        let mut reads = 0u32;
        let calls = 10_000u32;
        // All the calls happen in the second bucket, but the window last saw the first.
        w.observe(t0);
        let t1 = t0 + Duration::from_millis(1_500);
        for _ in 0..calls {
            w.record_success(|| {
                reads += 1;
                t1
            });
        }
        assert!(
            reads <= SAMPLE_BELOW + calls / SAMPLE_EVERY + 1,
            "{reads} clock reads"
        );
        // The very first call read the clock, so every call landed in the right bucket.
        let epoch_1 = w.observe(t1);
        assert_eq!(count(w.slot(epoch_1).calls.load(Ordering::Relaxed)), calls);
    }

    #[test]
    fn after_a_boundary_at_most_one_sample_period_lands_late() {
        let (w, t0) = window();
        for _ in 0..1_000 {
            w.record_success(|| t0);
        }
        // Time moves to the next bucket; nobody has read the clock yet.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..1_000 {
            w.record_success(|| t1);
        }
        let late = count(w.slot(w.observe(t0)).calls.load(Ordering::Relaxed)) - 1_000;
        assert!(late < SAMPLE_EVERY, "{late} calls landed in the old bucket");
        assert_eq!(w.current_totals().calls, 2_000);
    }

    #[test]
    fn clear_empties_the_window_but_keeps_all_time_totals() {
        let (w, t0) = window();
        w.record(t0, FAIL);
        w.record_success(|| t0);
        w.clear();
        assert_eq!(w.current_totals(), Totals::default());
        assert_eq!(
            w.all_time(),
            Totals {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
    }
}
