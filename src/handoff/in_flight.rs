//! The worker's calls in flight: each call's future with its record, polled when it was woken,
//! and no allocation per call.
//!
//! `futures_util`'s `FuturesUnordered` allocates a task for every future pushed into it, links
//! it into a list, and unlinks and frees it when the future ends. At hundreds of thousands of
//! records a second that was a fifth of the worker's time in the Kafka throughput benchmark
//! (`cargo bench --bench kafka -- throughput`). Here a call goes into a berth that is kept: each
//! berth owns, for good, the box its futures are pinned in and the waker they are polled with.
//! The set grows to the most calls ever in flight at once (at most the hand-off's
//! concurrency), then allocates nothing.
//!
//! # Waking
//!
//! Each berth has one bit in a [`WakeWord`] of 64 berths, and each word one bit in the
//! [`WakeSummary`] (word `w` in bit `w % 64`, so that any number of words fits). A berth's waker
//! sets its bit, then its word's summary bit, and wakes the worker's task only if the summary was
//! empty. The worker registers its waker, then swaps the summary to zero and swaps to zero each
//! word it names: whatever it did not see set a summary bit after that swap, and the first such
//! bit found the summary empty and woke the worker. So no wake is lost, and a busy worker is
//! woken once for many calls rather than once per call. The `loom_` tests below check this
//! handshake in every interleaving.
//!
//! A bit can outlive its call (a waker kept after the call ended, say): the next call in that
//! berth is then polled once for nothing, which a future allows.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use crate::sync::{AtomicU64, Ordering};

/// Berths per [`WakeWord`], and summary bits.
const WORD_BITS: usize = 64;

/// Which words have a berth woken since the worker last looked, and the worker's waker.
#[derive(Debug)]
struct WakeSummary {
    /// Bit `w % 64` for word `w`.
    words: AtomicU64,
    worker: AtomicWaker,
}

/// Which of 64 berths were woken since the worker last looked.
#[derive(Debug)]
struct WakeWord {
    berths: AtomicU64,
    /// This word's bit in the summary.
    summary_bit: u64,
    summary: Arc<WakeSummary>,
}

impl WakeWord {
    /// Marks the berths of `bits` woken. Returns whether the worker must be woken: the summary
    /// was empty, so the worker may have looked at it for the last time before this mark.
    fn mark(&self, bits: u64) -> bool {
        if self.berths.fetch_or(bits, Ordering::AcqRel) & bits == bits {
            // Marked already, by a waker that sets the summary after its mark (or did).
            return false;
        }
        self.summary
            .words
            .fetch_or(self.summary_bit, Ordering::AcqRel)
            == 0
    }
}

/// Takes every mark: the summary, then each word it names. Calls `woken` with each berth found
/// woken (numbered from 0 across the words).
fn take_marks(summary: &WakeSummary, words: &[Arc<WakeWord>], mut woken: impl FnMut(usize)) {
    let mut named = summary.words.swap(0, Ordering::AcqRel);
    while named != 0 {
        let first = named.trailing_zeros() as usize;
        named &= named - 1;
        for (index, word) in words.iter().enumerate().skip(first).step_by(WORD_BITS) {
            let mut berths = word.berths.swap(0, Ordering::AcqRel);
            while berths != 0 {
                woken(index * WORD_BITS + berths.trailing_zeros() as usize);
                berths &= berths - 1;
            }
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
        if self.word.mark(self.bit) {
            self.word.summary.worker.wake();
        }
    }
}

/// One place for a call: its future, pinned in a box kept for the next call, the value that
/// comes back with its output, and its waker.
struct Berth<F, T> {
    future: Pin<Box<Option<F>>>,
    value: Option<T>,
    waker: Waker,
}

/// The calls in flight. See the [module docs](self).
pub(super) struct InFlight<F, T> {
    berths: Vec<Berth<F, T>>,
    /// Berths with no call.
    free: Vec<u32>,
    /// Berths given a call since the last poll: polled without waiting for a wake.
    fresh: Vec<u32>,
    /// Berths found woken and not polled yet.
    due: Vec<u32>,
    words: Vec<Arc<WakeWord>>,
    summary: Arc<WakeSummary>,
    len: usize,
}

impl<F, T> InFlight<F, T>
where
    F: Future,
{
    pub(super) fn new() -> Self {
        Self {
            berths: Vec::new(),
            free: Vec::new(),
            fresh: Vec::new(),
            due: Vec::new(),
            words: Vec::new(),
            summary: Arc::new(WakeSummary {
                words: AtomicU64::new(0),
                worker: AtomicWaker::new(),
            }),
            len: 0,
        }
    }

    /// Calls in flight.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a call, whose output comes back with `value`. It is first polled by the next
    /// [`poll_next`](Self::poll_next).
    ///
    /// At most `u32::MAX` calls may be in flight at once (the worker caps its concurrency
    /// there).
    pub(super) fn push(&mut self, future: F, value: T) {
        let index = match self.free.pop() {
            Some(index) => index,
            None => self.add_berth(),
        };
        let berth = &mut self.berths[index as usize];
        berth.future.as_mut().set(Some(future));
        berth.value = Some(value);
        self.fresh.push(index);
        self.len += 1;
    }

    /// A new, empty berth (and its word if it starts one); returns its index.
    fn add_berth(&mut self) -> u32 {
        let index = self.berths.len();
        if index.is_multiple_of(WORD_BITS) {
            self.words.push(Arc::new(WakeWord {
                berths: AtomicU64::new(0),
                summary_bit: 1 << (self.words.len() % WORD_BITS),
                summary: self.summary.clone(),
            }));
        }
        let waker = Waker::from(Arc::new(BerthWaker {
            word: self.words[index / WORD_BITS].clone(),
            bit: 1 << (index % WORD_BITS),
        }));
        self.berths.push(Berth {
            future: Box::pin(None),
            value: None,
            waker,
        });
        u32::try_from(index).expect("at most u32::MAX calls in flight")
    }

    /// The output of a call that ended, with its value; `Ready(None)` when no call is in
    /// flight; `Pending` when none of the new calls nor of those woken has ended (the task is
    /// then woken when one is).
    ///
    /// Looks for wakes at most once per poll, when the new and woken calls found so far are
    /// all polled: a call that wakes itself whenever it is polled cannot keep this poll from
    /// returning.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(F::Output, T)>> {
        if self.len == 0 {
            // Stale marks only.
            self.fresh.clear();
            self.due.clear();
            return Poll::Ready(None);
        }
        // Before the look: a wake after it finds the summary as the look left it, empty, and
        // wakes this waker.
        self.summary.worker.register(cx.waker());
        let mut looked = false;
        loop {
            let Some(index) = self.fresh.pop().or_else(|| self.due.pop()) else {
                if looked {
                    return Poll::Pending;
                }
                looked = true;
                let due = &mut self.due;
                take_marks(&self.summary, &self.words, |index| {
                    // At most `u32::MAX` berths (see `push`).
                    due.push(index as u32);
                });
                continue;
            };
            let berth = &mut self.berths[index as usize];
            // A stale mark, or a berth both new and woken.
            let Some(future) = berth.future.as_mut().as_pin_mut() else {
                continue;
            };
            let output = match future.poll(&mut Context::from_waker(&berth.waker)) {
                Poll::Ready(output) => output,
                Poll::Pending => continue,
            };
            berth.future.as_mut().set(None);
            let value = berth
                .value
                .take()
                .expect("a berth with a call has its value");
            self.free.push(index);
            self.len -= 1;
            return Poll::Ready(Some((output, value)));
        }
    }
}

#[cfg(all(test, not(tanker_loom)))]
mod tests {
    use super::*;
    use futures::channel::oneshot;
    use futures::task::noop_waker_ref;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Counting {
        fn wakes(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    type Set = InFlight<oneshot::Receiver<u32>, &'static str>;

    fn drain_ready(set: &mut Set, cx: &mut Context<'_>) -> Vec<(u32, &'static str)> {
        let mut out = Vec::new();
        while let Poll::Ready(Some((output, value))) = set.poll_next(cx) {
            out.push((output.expect("sent"), value));
        }
        out
    }

    #[test]
    fn outputs_come_back_with_their_values_in_the_order_they_end() {
        let mut set = Set::new();
        let worker = Arc::new(Counting::default());
        let waker = Waker::from(worker.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(None));

        let (a_tx, a) = oneshot::channel();
        let (b_tx, b) = oneshot::channel();
        let (c_tx, c) = oneshot::channel();
        set.push(a, "a");
        set.push(b, "b");
        set.push(c, "c");
        assert_eq!(set.len(), 3);
        assert!(set.poll_next(&mut cx).is_pending(), "nothing has ended yet");
        assert_eq!(worker.wakes(), 0);

        b_tx.send(2).unwrap();
        assert_eq!(
            worker.wakes(),
            1,
            "the first wake since the look wakes the worker"
        );
        c_tx.send(3).unwrap();
        assert_eq!(worker.wakes(), 1, "later ones before the next look do not");
        assert_eq!(drain_ready(&mut set, &mut cx).len(), 2);
        assert_eq!(set.len(), 1);

        a_tx.send(1).unwrap();
        assert_eq!(worker.wakes(), 2);
        assert_eq!(drain_ready(&mut set, &mut cx), vec![(1, "a")]);
        assert!(set.is_empty());
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn a_call_that_is_ready_at_once_ends_on_the_next_poll() {
        let mut set = InFlight::new();
        set.push(std::future::ready(7), 'x');
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(Some((7, 'x'))));
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn berths_are_kept_and_reused() {
        let mut set = InFlight::new();
        let mut cx = Context::from_waker(noop_waker_ref());
        for round in 0..100 {
            for i in 0..70 {
                set.push(std::future::ready(round * 100 + i), i);
            }
            let mut ended = 0;
            while let Poll::Ready(Some((output, value))) = set.poll_next(&mut cx) {
                assert_eq!(output % 100, value);
                ended += 1;
            }
            assert_eq!(ended, 70);
        }
        assert_eq!(
            set.berths.len(),
            70,
            "no more berths than calls ever in flight at once"
        );
        assert_eq!(set.words.len(), 2);
    }

    #[test]
    fn a_call_that_always_wakes_itself_does_not_hold_the_poll() {
        /// Pending for ever, waking itself at every poll.
        struct Restless(Arc<AtomicUsize>);
        impl Future for Restless {
            type Output = ();
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
        let polls = Arc::new(AtomicUsize::new(0));
        let mut set = InFlight::new();
        set.push(Restless(polls.clone()), ());
        let worker = Arc::new(Counting::default());
        let waker = Waker::from(worker.clone());
        let mut cx = Context::from_waker(&waker);
        for turn in 1..=3 {
            assert!(set.poll_next(&mut cx).is_pending());
            // Once as new, then once per poll: after the one look, which finds its last wake.
            assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), turn + 1);
            // Woken once per poll: the waker is spent until the next poll registers it again.
            assert_eq!(
                worker.wakes(),
                turn,
                "its wakes wake the worker for the next poll"
            );
        }
    }

    #[test]
    fn a_stale_wake_polls_the_next_call_in_its_berth_once_for_nothing() {
        /// Ends at its second poll, and counts its polls.
        struct Second(Arc<AtomicUsize>);
        impl Future for Second {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                let polls = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if polls >= 2 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }
        }
        let kept: Arc<Mutex<Option<Waker>>> = Arc::default();
        let mut set = InFlight::new();
        let mut cx = Context::from_waker(noop_waker_ref());
        let keep = kept.clone();
        set.push(
            Box::pin(std::future::poll_fn(move |cx| {
                *keep.lock().unwrap() = Some(cx.waker().clone());
                Poll::Ready(())
            })) as Pin<Box<dyn Future<Output = ()> + Send>>,
            0,
        );
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(Some(((), 0))));
        let polls = Arc::new(AtomicUsize::new(0));
        set.push(Box::pin(Second(polls.clone())), 1);
        assert!(set.poll_next(&mut cx).is_pending());
        assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The first call's waker, kept past its end, wakes the berth the second call now holds.
        kept.lock().unwrap().take().unwrap().wake();
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(Some(((), 1))));
        assert_eq!(set.berths.len(), 1);
    }

    #[test]
    fn words_past_the_sixty_fourth_share_summary_bits_and_are_all_seen() {
        // 64 × 65 berths: word 64 shares summary bit 0 with word 0.
        let mut set = Set::new();
        let mut senders = Vec::new();
        for _ in 0..WORD_BITS * 65 {
            let (tx, rx) = oneshot::channel();
            set.push(rx, "");
            senders.push(tx);
        }
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(set.poll_next(&mut cx).is_pending());
        // The last berth of word 64, and the first of word 0.
        senders.pop().unwrap().send(64).unwrap();
        senders.swap_remove(0).send(0).unwrap();
        let mut got: Vec<u32> = drain_ready(&mut set, &mut cx)
            .into_iter()
            .map(|(output, _)| output)
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 64]);
    }

    /// More waking threads than cores, each ending its calls in its own order, while the set
    /// is polled by a real executor: every call ends, none twice, and the set is left empty.
    #[test]
    fn stress_calls_ended_from_many_threads_all_come_back() {
        const THREADS: usize = 8;
        const CALLS: usize = 2_000;
        let mut set = InFlight::new();
        let mut senders: Vec<Vec<oneshot::Sender<usize>>> =
            (0..THREADS).map(|_| Vec::new()).collect();
        for call in 0..CALLS {
            let (tx, rx) = oneshot::channel();
            set.push(rx, call);
            senders[call % THREADS].push(tx);
        }
        let threads: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(thread, mut senders)| {
                std::thread::spawn(move || {
                    if thread % 2 == 1 {
                        senders.reverse();
                    }
                    for tx in senders {
                        let _ = tx.send(thread);
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        let mut seen = vec![false; CALLS];
        futures::executor::block_on(std::future::poll_fn(|cx| loop {
            match set.poll_next(cx) {
                Poll::Ready(Some((output, call))) => {
                    assert_eq!(output.expect("sent"), call % THREADS);
                    assert!(
                        !std::mem::replace(&mut seen[call], true),
                        "call {call} twice"
                    );
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }));
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(seen.iter().all(|&seen| seen));
        assert!(set.is_empty());
    }
}

#[cfg(all(test, tanker_loom))]
mod loom_tests {
    use super::*;
    use crate::sync::AtomicBool;
    use loom::thread;

    /// Two words (summary bits 0 and 1) with no worker waker: the model's worker is a flag.
    fn words(summary: &Arc<WakeSummary>) -> Vec<Arc<WakeWord>> {
        (0..2)
            .map(|w| {
                Arc::new(WakeWord {
                    berths: AtomicU64::new(0),
                    summary_bit: 1 << w,
                    summary: summary.clone(),
                })
            })
            .collect()
    }

    /// Two wakers mark berths (two in one word, or one in each) while the worker registers and
    /// looks once. When the wakers are done, a mark the look missed must have woken the worker
    /// after it registered; and every marked berth is found, no more often than it was marked.
    #[test]
    fn loom_a_mark_the_look_missed_wakes_the_worker() {
        for (first, second) in [((0, 1), (0, 2)), ((0, 1), (1, 1)), ((0, 1), (0, 1))] {
            loom::model(move || {
                let summary = Arc::new(WakeSummary {
                    words: AtomicU64::new(0),
                    worker: AtomicWaker::new(),
                });
                let words = Arc::new(words(&summary));
                let woken = Arc::new(AtomicBool::new(false));
                let wakers: Vec<_> = [first, second]
                    .into_iter()
                    .map(|(word, bit)| {
                        let (words, woken) = (words.clone(), woken.clone());
                        thread::spawn(move || {
                            if words[word].mark(bit) {
                                woken.swap(true, Ordering::AcqRel);
                            }
                        })
                    })
                    .collect();
                // The worker: register (the flag is its waker), then look. Both sides swap, as
                // `AtomicWaker`'s register and wake both read-modify-write its state.
                woken.swap(false, Ordering::AcqRel);
                let mut found = Vec::new();
                take_marks(&summary, &words, |berth| found.push(berth));
                for waker in wakers {
                    waker.join().unwrap();
                }
                let mut missed = Vec::new();
                take_marks(&summary, &words, |berth| missed.push(berth));
                if !missed.is_empty() {
                    assert!(
                        woken.load(Ordering::Acquire),
                        "marks {missed:?} were missed and the worker was not woken"
                    );
                }
                let marked: Vec<usize> = [first, second]
                    .into_iter()
                    .map(|(word, bit)| word * WORD_BITS + bit.trailing_zeros() as usize)
                    .collect();
                for berth in [0, 1, WORD_BITS] {
                    let marks = marked.iter().filter(|&&b| b == berth).count();
                    let taken = found.iter().chain(&missed).filter(|&&b| b == berth).count();
                    // Two marks of one berth may be found together or apart.
                    assert!(
                        (marks.min(1)..=marks).contains(&taken),
                        "berth {berth}: marked {marks} times, found {taken} times"
                    );
                }
            });
        }
    }
}
