//! The compartment's one atomic word: the slots taken and the calls admitted.
//!
//! Every admission decision reads this single word, so that a preemption between two loads can
//! never make the compartment look fuller than it is (two monotonic counters read one after the
//! other did, and shed about 50 calls in a million with four threads on two cores). Admission is
//! one compare-and-swap that takes a slot and counts the call at once; release is one
//! fetch-sub. The count of slots taken never exceeds the capacity, not even for a moment.

use crate::sync::{AtomicU64, Ordering};

/// One slot taken: the low 32 bits of the word count the slots taken.
const SLOT: u64 = 1;
/// One call admitted: the high 32 bits count the calls admitted, modulo 2^32.
const ADMISSION: u64 = 1 << 32;
const TAKEN_MASK: u64 = ADMISSION - 1;
/// The admission count crosses into a new half of its 32-bit range every 2^31 calls.
const HALF_MASK: u64 = (1 << 31) - 1;

/// The largest capacity the word can count.
pub(crate) const MAX_SLOTS: usize = u32::MAX as usize;

/// Slots taken, and calls admitted, in one atomic word.
///
/// The admission count in the word wraps every 2^32 calls. To report the exact total, the caller
/// whose admission moves the count into a new half of its range (every 2^31 calls, off the fast
/// path) bumps `halves` just after. A reader that sees the word's half disagree with the parity of
/// `halves` knows that bump is still to come, and adds it (see [`admissions`]).
pub(crate) struct Slots {
    word: AtomicU64,
    halves: AtomicU64,
    max: u64,
}

impl Slots {
    /// A word for `max` slots; `max` is at most [`MAX_SLOTS`] (checked by the builder).
    pub(crate) fn new(max: usize) -> Self {
        debug_assert!((1..=MAX_SLOTS).contains(&max));
        Self {
            word: AtomicU64::new(0),
            halves: AtomicU64::new(0),
            max: max as u64,
        }
    }

    /// Takes a slot for a call made now and counts the call as admitted. Returns the slots taken
    /// afterwards, or `None` when all of them were taken (read from the same word).
    #[inline]
    pub(crate) fn admit(&self) -> Option<u64> {
        self.take(SLOT + ADMISSION)
    }

    /// Takes a slot held for a caller that waited for it; its call is counted by
    /// [`count_admission`](Self::count_admission) when it is made.
    #[inline]
    pub(crate) fn reserve(&self) -> Option<u64> {
        self.take(SLOT)
    }

    #[inline]
    fn take(&self, add: u64) -> Option<u64> {
        // SeqCst throughout: a caller entering the waiting room increments the room's count and
        // then tries here, while a releaser decrements here and then reads the room's count;
        // either the caller sees the free slot or the releaser sees the caller (a store-load
        // pair, which needs SeqCst on both sides). On x86 these are the same instructions as
        // weaker orders.
        let mut word = self.word.load(Ordering::SeqCst);
        loop {
            if word & TAKEN_MASK >= self.max {
                return None;
            }
            let next = word.wrapping_add(add);
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    if add & ADMISSION != 0 {
                        self.note_half(next);
                    }
                    return Some(next & TAKEN_MASK);
                }
                Err(now) => word = now,
            }
        }
    }

    /// Counts the call made with a reserved slot.
    pub(crate) fn count_admission(&self) {
        let next = self
            .word
            .fetch_add(ADMISSION, Ordering::SeqCst)
            .wrapping_add(ADMISSION);
        self.note_half(next);
    }

    #[inline]
    fn note_half(&self, word: u64) {
        if (word >> 32) & HALF_MASK == 0 {
            self.record_half();
        }
    }

    #[cold]
    fn record_half(&self) {
        self.halves.fetch_add(1, Ordering::Release);
    }

    /// Gives a slot back. Returns the slots still taken.
    #[inline]
    pub(crate) fn release(&self) -> u64 {
        (self.word.fetch_sub(SLOT, Ordering::SeqCst) - SLOT) & TAKEN_MASK
    }

    /// Slots taken now. Never more than the capacity.
    #[inline]
    pub(crate) fn taken(&self) -> u64 {
        self.word.load(Ordering::SeqCst) & TAKEN_MASK
    }

    /// Whether every slot is taken now.
    #[inline]
    pub(crate) fn full(&self) -> bool {
        self.taken() >= self.max
    }

    /// Calls admitted since the word was made. Never goes backwards.
    pub(crate) fn admitted(&self) -> u64 {
        // `halves` first: a bump it shows was made after its admission reached the word
        // (release/acquire), so the word read next is at least that new. The other way round,
        // the word may be ahead of `halves` by one bump, which `admissions` makes up for.
        let halves = self.halves.load(Ordering::Acquire);
        let word = self.word.load(Ordering::SeqCst);
        admissions(halves, word)
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }
}

/// The exact admission total from the word and the count of halves recorded.
///
/// The word's admission count `c` (32 bits) is in half `c >> 31` of its range. When every
/// crossing has been recorded, `halves` is `2 × wraps + (c >> 31)`, so its parity matches the
/// half; when it does not, the crossing that brought `c` into its half is not recorded yet, and
/// `halves` is one short. (It can be two short only if the caller that crossed a half was stopped
/// between two instructions for 2^31 admissions.)
fn admissions(halves: u64, word: u64) -> u64 {
    let count = word >> 32;
    let half = count >> 31;
    let halves = if halves & 1 == half {
        halves
    } else {
        halves + 1
    };
    ((halves - half) / 2) << 32 | count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word and `halves` after `n` admissions, with the last crossing recorded or not.
    fn state(n: u64, recorded: bool) -> (u64, u64) {
        let word = (n % (1 << 32)) << 32;
        let mut halves = n >> 31;
        if !recorded && n & HALF_MASK == 0 && n > 0 {
            halves -= 1;
        }
        (halves, word)
    }

    #[test]
    fn admissions_are_exact_across_wraps_whether_the_crossing_is_recorded_or_not() {
        for base in [
            0u64,
            1 << 31,
            1 << 32,
            3 << 31,
            5 << 32,
            (7 << 32) + (1 << 31),
        ] {
            for n in base.saturating_sub(3)..base + 3 {
                for recorded in [true, false] {
                    let (halves, word) = state(n, recorded);
                    assert_eq!(
                        admissions(halves, word | 7),
                        n,
                        "n = {n}, recorded = {recorded}"
                    );
                }
            }
        }
    }

    #[cfg(not(tanker_loom))]
    #[test]
    fn the_word_never_counts_more_slots_than_its_capacity() {
        let slots = Slots::new(2);
        assert_eq!(slots.admit(), Some(1));
        assert_eq!(slots.reserve(), Some(2));
        assert_eq!(slots.admit(), None);
        assert_eq!(slots.reserve(), None);
        assert!(slots.full());
        assert_eq!(slots.admitted(), 1);
        slots.count_admission();
        assert_eq!(slots.admitted(), 2);
        assert_eq!(slots.release(), 1);
        assert_eq!(slots.release(), 0);
        assert_eq!(slots.taken(), 0);
        assert_eq!(slots.admitted(), 2);
    }

    #[cfg(not(tanker_loom))]
    #[test]
    fn admissions_carry_past_the_words_32_bits() {
        let slots = Slots::new(MAX_SLOTS);
        // Start just before the first wrap, as if 2^32 - 2 calls had been made.
        slots
            .word
            .store((u32::MAX as u64 - 1) << 32, Ordering::SeqCst);
        slots.halves.store(1, Ordering::SeqCst);
        for expected in (1u64 << 32) - 1..(1 << 32) + 3 {
            slots.admit();
            slots.release();
            assert_eq!(slots.admitted(), expected);
        }
        assert_eq!(slots.halves.load(Ordering::SeqCst), 2);
    }
}
