//! The count of open keys: one word per key says whether the key is counted, so that a key is
//! counted at most once, leaves the count at most once, and an evicted key is never counted.
//!
//! A key enters the count when a call sees its breaker open (a rejection or a probe) and leaves
//! it when a call goes through as an ordinary call again, or when eviction finds it idle. Calls
//! on one key race each other and the eviction; each move of the key's word is one
//! compare-and-swap, and only the thread whose swap succeeded changes the count, so at
//! quiescence the count equals the number of keys whose word says "counted".

use crate::sync::{AtomicU32, AtomicUsize, Ordering};

/// Not counted: the key's breaker was last seen letting ordinary calls through.
const CLOSED: u32 = 0;
/// Counted among the open keys.
const OPEN: u32 = 1;
/// Evicted: never counted again.
const RETIRED: u32 = 2;

/// Where one key stands in the count.
pub(crate) struct Ejection {
    word: AtomicU32,
}

impl Ejection {
    pub(crate) fn new() -> Self {
        Self {
            word: AtomicU32::new(CLOSED),
        }
    }

    /// Whether the key is counted open: one load, for the closed path.
    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        self.word.load(Ordering::Relaxed) == OPEN
    }

    fn swap(&self, from: u32, to: u32) -> bool {
        self.word
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

/// How many keys are counted open.
pub(crate) struct OpenKeys {
    count: AtomicUsize,
}

impl OpenKeys {
    pub(crate) fn new() -> Self {
        Self {
            count: AtomicUsize::new(0),
        }
    }

    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Counts `key` if it is not counted yet (nor evicted). Returns the new count if this call
    /// counted it.
    pub(crate) fn open(&self, key: &Ejection) -> Option<usize> {
        if key.word.load(Ordering::Relaxed) != CLOSED || !key.swap(CLOSED, OPEN) {
            return None;
        }
        Some(self.count.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Stops counting `key` if it is counted. Returns the new count if this call uncounted it.
    pub(crate) fn close(&self, key: &Ejection) -> Option<usize> {
        if !key.swap(OPEN, CLOSED) {
            return None;
        }
        Some(self.count.fetch_sub(1, Ordering::AcqRel) - 1)
    }

    /// Takes an uncounted `key` out of the count for good, for its eviction. Fails if a call
    /// counted it open in the meantime.
    pub(crate) fn retire(&self, key: &Ejection) -> bool {
        key.swap(CLOSED, RETIRED)
    }
}

/// Model checks of the count (run by `scripts/loom.sh`).
#[cfg(all(test, tanker_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Two calls see the key open, one sees it closed, and the eviction tries to retire it,
    /// all at once: the count ends equal to whether the key's word says "counted", and a
    /// retired key is not counted.
    #[test]
    fn loom_count_matches_the_keys_word() {
        loom::model(|| {
            let keys = Arc::new(OpenKeys::new());
            let key = Arc::new(Ejection::new());
            let spawn = |f: fn(&OpenKeys, &Ejection)| {
                let (keys, key) = (keys.clone(), key.clone());
                thread::spawn(move || f(&keys, &key))
            };
            let threads = [
                spawn(|keys, key| {
                    keys.open(key);
                }),
                spawn(|keys, key| {
                    keys.open(key);
                    keys.close(key);
                }),
                spawn(|keys, key| {
                    keys.retire(key);
                }),
            ];
            for thread in threads {
                thread.join().unwrap();
            }
            let counted = usize::from(key.is_open());
            assert_eq!(keys.get(), counted);
            if key.word.load(Ordering::Relaxed) == RETIRED {
                assert_eq!(keys.get(), 0);
            }
        });
    }
}
