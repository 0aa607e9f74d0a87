//! The breaker's state word: its state and generation packed in one atomic, so that every call
//! decides from one load.
//!
//! The word is `generation << STATE_BITS | state`. The generation grows by one on every
//! transition, so a word compared with an earlier one says both "same state" and "nothing
//! happened in between": a call admitted in one closed period is not counted in the next, and a
//! handle readied in a period that has ended decides again.

use crate::sync::{AtomicU64, Ordering};

use super::state::BreakerState;

/// Bits of the word that hold the state.
const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

/// One value of the state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word(u64);

impl Word {
    #[inline]
    pub(crate) const fn new(generation: u64, state: BreakerState) -> Self {
        Self((generation << STATE_BITS) | state.bits())
    }

    #[inline]
    pub(crate) const fn state(self) -> BreakerState {
        BreakerState::from_bits(self.0 & STATE_MASK)
    }

    #[inline]
    pub(crate) const fn generation(self) -> u64 {
        self.0 >> STATE_BITS
    }

    #[inline]
    pub(crate) const fn is_closed(self) -> bool {
        self.0 & STATE_MASK == BreakerState::Closed.bits()
    }
}

/// The shared state word. Written only with the state machine locked, in transition order; read
/// without a lock by every call.
#[derive(Debug)]
pub(crate) struct StateWord(AtomicU64);

impl StateWord {
    pub(crate) fn new() -> Self {
        Self(AtomicU64::new(Word::new(0, BreakerState::Closed).0))
    }

    #[inline]
    pub(crate) fn load(&self) -> Word {
        Word(self.0.load(Ordering::Acquire))
    }

    /// Whether the word still is `word`: no transition since it was read.
    #[inline]
    pub(crate) fn is(&self, word: Word) -> bool {
        self.0.load(Ordering::Acquire) == word.0
    }

    pub(crate) fn store(&self, word: Word) {
        self.0.store(word.0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_every_state_with_its_generation() {
        for state in BreakerState::ALL {
            for generation in [0, 1, 7, u64::MAX >> STATE_BITS] {
                let word = Word::new(generation, state);
                assert_eq!((word.generation(), word.state()), (generation, state));
                assert_eq!(word.is_closed(), state == BreakerState::Closed);
            }
        }
    }
}

/// Model checks of the state word (run by `scripts/loom.sh`): transitions published in order
/// under the machine's lock, and callers that check a word they read before.
#[cfg(all(test, tanker_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    /// Two publishers move the word through their transitions under one lock (as the engine
    /// does); a caller that admitted on the first word, and still holds it when it checks again,
    /// saw no transition in between; the generations it sees never go back.
    #[test]
    fn loom_a_held_word_means_no_transition_in_between() {
        loom::model(|| {
            let word = Arc::new(StateWord::new());
            let lock = Arc::new(Mutex::new(0u64));
            let publisher = |to: BreakerState| {
                let (word, lock) = (word.clone(), lock.clone());
                thread::spawn(move || {
                    let mut generation = lock.lock().unwrap();
                    *generation += 1;
                    word.store(Word::new(*generation, to));
                })
            };
            let open = publisher(BreakerState::Open);
            let forced = publisher(BreakerState::ForcedOpen);

            let admitted = word.load();
            let held = word.is(admitted);
            let later = word.load();
            assert!(later.generation() >= admitted.generation());
            if held && later == admitted {
                assert!(admitted.is_closed() || admitted.generation() > 0);
            }
            open.join().unwrap();
            forced.join().unwrap();
            let last = word.load();
            assert_eq!(last.generation(), 2);
            assert!(
                !word.is(Word::new(0, BreakerState::Closed)),
                "a stale word never holds"
            );
        });
    }
}
