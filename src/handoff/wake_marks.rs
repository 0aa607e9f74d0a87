//! Which of the worker's calls in flight were woken since it last looked: a bit per call, and one
//! wake-up of the worker for many calls.
//!
//! Each call's place (a *berth* of [`InFlight`](super::in_flight::InFlight)) has one bit in a
//! word of 64 berths, and each word one bit in a summary word (word `w` in bit `w % 64`, so that
//! any number of words fits). A berth's waker sets its bit; if its word had no bit set, it then
//! sets the word's summary bit; and if the summary was empty, it wakes the worker's task.
//!
//! The worker [looks](WakeMarks::look): it registers its task's waker, swaps the summary to zero,
//! then swaps to zero each word the summary named. A mark the look missed was made after the
//! look swapped its word, or its summary bit was set after the look swapped the summary: in both
//! cases the first mark of its word since that swap set the summary bit, and the first summary
//! bit since the look found the summary empty and woke the worker, whose waker was registered
//! before the look. So no wake is lost, and a busy worker is woken once for many ended calls
//! rather than once per call.
//!
//! Every swap and `fetch_or` is `AcqRel`: a look that reads a summary bit must then see the mark
//! of the berth behind it (the mark comes before the summary bit in the waker's program order),
//! and the call's own state, written before its wake, must be visible when it is polled. loom
//! (`loom_tests` below, with loom's `AtomicWaker`) checks the handshake in every interleaving of
//! two wakers and a worker's looks; its read-modify-writes always read the latest value, so it
//! cannot check these orderings, which rest on the argument above.
//!
//! A mark can outlive its call (a waker kept after the call ended, say): the next call in that
//! berth is then polled once for nothing, which a future allows.

use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use crate::sync::{AtomicU64, AtomicWaker, Ordering};

/// Berths per word, and bits of the summary.
pub(super) const WORD_BITS: usize = 64;

/// Which words have a berth marked since the worker last looked, and the worker's waker.
#[derive(Debug)]
struct WakeSummary {
    /// Bit `w % 64` for word `w`.
    words: AtomicU64,
    worker: AtomicWaker,
}

/// Which of 64 berths were marked since the worker last looked.
#[derive(Debug)]
struct WakeWord {
    berths: AtomicU64,
    /// This word's bit in the summary.
    summary_bit: u64,
    summary: Arc<WakeSummary>,
}

impl WakeWord {
    /// Marks the berths of `bits`, and wakes the worker if this is the first mark since it
    /// looked.
    fn mark(&self, bits: u64) {
        if self.berths.fetch_or(bits, Ordering::AcqRel) != 0 {
            // A mark of this word since the worker swapped it sets (or did set) the summary bit
            // after its own mark; the worker looks at the whole word when it sees that bit.
            return;
        }
        if self
            .summary
            .words
            .fetch_or(self.summary_bit, Ordering::AcqRel)
            == 0
        {
            // The summary was empty: the worker may have looked for the last time before this
            // mark.
            self.summary.worker.wake();
        }
    }
}

/// The waker of one berth.
#[derive(Debug)]
struct BerthWaker {
    word: Arc<WakeWord>,
    bit: u64,
}

impl Wake for BerthWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.word.mark(self.bit);
    }
}

/// The marks of every berth, and the wakers that set them. See the [module docs](self).
#[derive(Debug)]
pub(super) struct WakeMarks {
    summary: Arc<WakeSummary>,
    words: Vec<Arc<WakeWord>>,
    berths: usize,
}

impl WakeMarks {
    pub(super) fn new() -> Self {
        Self {
            summary: Arc::new(WakeSummary {
                words: AtomicU64::new(0),
                worker: AtomicWaker::new(),
            }),
            words: Vec::new(),
            berths: 0,
        }
    }

    /// Adds a berth, numbered from 0 in the order they are added, and returns its waker.
    pub(super) fn add_berth(&mut self) -> Waker {
        let berth = self.berths;
        self.berths += 1;
        if berth.is_multiple_of(WORD_BITS) {
            self.words.push(Arc::new(WakeWord {
                berths: AtomicU64::new(0),
                summary_bit: 1 << (self.words.len() % WORD_BITS),
                summary: self.summary.clone(),
            }));
        }
        Waker::from(Arc::new(BerthWaker {
            word: self.words[berth / WORD_BITS].clone(),
            bit: 1 << (berth % WORD_BITS),
        }))
    }

    /// Registers the task of `cx` as the one to wake, then takes every mark: calls `woken` with
    /// each berth marked since the last look. A mark made after this look wakes the task.
    pub(super) fn look(&self, cx: &Context<'_>, mut woken: impl FnMut(usize)) {
        self.summary.worker.register(cx.waker());
        let mut named = self.summary.words.swap(0, Ordering::AcqRel);
        while named != 0 {
            let first = named.trailing_zeros() as usize;
            named &= named - 1;
            // Beyond 64 words, a summary bit names every 64th word from `first`: those with no
            // mark are read, not written.
            for (index, word) in self.words.iter().enumerate().skip(first).step_by(WORD_BITS) {
                if word.berths.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let mut berths = word.berths.swap(0, Ordering::AcqRel);
                while berths != 0 {
                    woken(index * WORD_BITS + berths.trailing_zeros() as usize);
                    berths &= berths - 1;
                }
            }
        }
    }
}

#[cfg(all(test, not(tanker_loom)))]
pub(super) mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A waker that counts its wakes (the worker's task, in these tests and `in_flight`'s).
    #[derive(Default)]
    pub(in crate::handoff) struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Counting {
        pub(in crate::handoff) fn wakes(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn marks(berths: usize) -> (WakeMarks, Vec<Waker>) {
        let mut marks = WakeMarks::new();
        let wakers = (0..berths).map(|_| marks.add_berth()).collect();
        (marks, wakers)
    }

    fn look(marks: &WakeMarks, cx: &Context<'_>) -> Vec<usize> {
        let mut found = Vec::new();
        marks.look(cx, |berth| found.push(berth));
        found.sort_unstable();
        found
    }

    #[test]
    fn the_first_mark_since_a_look_wakes_the_worker_and_the_next_look_finds_them_all() {
        let (marks, wakers) = marks(3 * WORD_BITS);
        let worker = Arc::new(Counting::default());
        let waker = Waker::from(worker.clone());
        let cx = Context::from_waker(&waker);
        assert!(look(&marks, &cx).is_empty());
        for berth in [5, 70, 71, 130, 5] {
            wakers[berth].wake_by_ref();
        }
        assert_eq!(worker.wakes(), 1);
        assert_eq!(look(&marks, &cx), vec![5, 70, 71, 130]);
        assert!(look(&marks, &cx).is_empty(), "a look takes the marks");
        wakers[71].wake_by_ref();
        assert_eq!(worker.wakes(), 2);
        assert_eq!(look(&marks, &cx), vec![71]);
    }

    #[test]
    fn words_past_the_sixty_fourth_share_summary_bits_and_are_all_seen() {
        // Word 64 shares summary bit 0 with word 0.
        let (marks, wakers) = marks(65 * WORD_BITS);
        let waker = Waker::from(Arc::new(Counting::default()));
        let cx = Context::from_waker(&waker);
        let last = 65 * WORD_BITS - 1;
        wakers[last].wake_by_ref();
        wakers[0].wake_by_ref();
        assert_eq!(look(&marks, &cx), vec![0, last]);
    }

    /// More waking threads than cores against a worker that keeps looking: every berth marked
    /// is found, and a look that misses marks is always followed by a wake.
    #[test]
    fn stress_every_mark_from_many_threads_is_found() {
        const THREADS: usize = 8;
        const BERTHS: usize = 4 * WORD_BITS;
        const ROUNDS: usize = 200;
        let (marks, wakers) = marks(BERTHS);
        let wakers = Arc::new(wakers);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                let wakers = wakers.clone();
                std::thread::spawn(move || {
                    for round in 0..ROUNDS {
                        for berth in (thread..BERTHS).step_by(THREADS) {
                            if (berth + round) % 3 != 0 {
                                wakers[berth].wake_by_ref();
                            }
                        }
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        let looker = std::thread::spawn(move || {
            let woken = Arc::new(Counting::default());
            let waker = Waker::from(woken.clone());
            let cx = Context::from_waker(&waker);
            let mut found = vec![false; BERTHS];
            let mut seen_wakes = 0;
            loop {
                for berth in look(&marks, &cx) {
                    found[berth] = true;
                }
                if found.iter().all(|&f| f) {
                    break;
                }
                // Wait for a wake, as the worker's task would.
                while woken.wakes() == seen_wakes {
                    std::thread::yield_now();
                }
                seen_wakes = woken.wakes();
            }
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a mark was lost: the looker waits for a wake that never came");
        looker.join().unwrap();
        for thread in threads {
            thread.join().unwrap();
        }
    }
}

#[cfg(all(test, tanker_loom))]
mod loom_tests {
    use super::*;
    use std::collections::HashMap;
    use std::future::poll_fn;
    use std::task::Poll;

    /// Two wakers mark berths (two of one word, one in each of two words, or the same berth
    /// twice) while the worker, in loom's `block_on`, looks until it has found every berth
    /// marked. A lost wake would leave it waiting for ever, which loom reports as a deadlock;
    /// and no berth is found more often than it was marked.
    #[test]
    fn loom_every_mark_is_found_or_wakes_the_worker() {
        for berths in [[0, 1], [0, WORD_BITS], [1, 1]] {
            loom::model(move || {
                let mut marks = WakeMarks::new();
                let wakers: Vec<Waker> = (0..=WORD_BITS).map(|_| marks.add_berth()).collect();
                let threads: Vec<_> = berths
                    .iter()
                    .map(|&berth| {
                        let waker = wakers[berth].clone();
                        loom::thread::spawn(move || waker.wake())
                    })
                    .collect();
                let mut found: HashMap<usize, usize> = HashMap::new();
                loom::future::block_on(poll_fn(|cx| {
                    marks.look(cx, |berth| *found.entry(berth).or_default() += 1);
                    if berths.iter().all(|berth| found.contains_key(berth)) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                }));
                for thread in threads {
                    thread.join().unwrap();
                }
                // Anything left is found by one more look.
                marks.look(&Context::from_waker(&wakers[0]), |berth| {
                    *found.entry(berth).or_default() += 1;
                });
                for (berth, times) in found {
                    let marked = berths.iter().filter(|&&b| b == berth).count();
                    assert!(
                        (1..=marked).contains(&times),
                        "berth {berth}: marked {marked} times, found {times} times"
                    );
                }
            });
        }
    }
}
