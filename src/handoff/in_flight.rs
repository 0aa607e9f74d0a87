//! The worker's calls in flight: each call's future with its record, polled when it was woken,
//! and no allocation per call.
//!
//! `futures_util`'s `FuturesUnordered` allocates a task for every future pushed into it, links
//! it into a list, and unlinks and frees it when the future ends: in a profile of the Kafka
//! throughput benchmark (`cargo bench --bench kafka -- throughput`) its own code and the
//! allocating and freeing of its tasks took about a fifth of the worker's thread, and each
//! ended call woke the worker's task. Here a call goes into a *berth* that is kept: each berth
//! owns, for good, the box its futures are pinned in and the waker they are polled with. The
//! set grows to the most calls ever in flight at once (at most the hand-off's concurrency),
//! then allocates nothing; a wake sets the berth's mark ([`WakeMarks`]), and the worker's task
//! is woken once for many ended calls.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::wake_marks::WakeMarks;

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
    marks: WakeMarks,
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
            marks: WakeMarks::new(),
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

    /// A new, empty berth; returns its index.
    fn add_berth(&mut self) -> u32 {
        let index = self.berths.len();
        let waker = self.marks.add_berth();
        self.berths.push(Berth {
            future: Box::pin(None),
            value: None,
            waker,
        });
        u32::try_from(index).expect("at most u32::MAX calls in flight")
    }

    /// The output of a call that ended, with its value; `Ready(None)` when no call is in
    /// flight; `Pending` when none of the new calls nor of those woken has ended (the task is
    /// then woken when one of them is woken again).
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
        let mut looked = false;
        loop {
            let Some(index) = self.fresh.pop().or_else(|| self.due.pop()) else {
                if looked {
                    return Poll::Pending;
                }
                // Only a poll that returns `Pending` needs the task's waker registered: the
                // look does it first.
                looked = true;
                let due = &mut self.due;
                self.marks.look(cx, |index| {
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
            // The set is consistent before the future is dropped, in case its `Drop` panics.
            let value = berth
                .value
                .take()
                .expect("a berth with a call has its value");
            self.free.push(index);
            self.len -= 1;
            berth.future.as_mut().set(None);
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
    use std::sync::{Arc, Mutex};

    use crate::handoff::wake_marks::tests::Counting;

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
        // The worker on a thread of its own, so that a lost wake fails the test, not hangs it.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
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
            let _ = done_tx.send((seen, set.is_empty()));
        });
        let (seen, empty) = done_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a call's end was lost: the worker waits for a wake that never came");
        worker.join().unwrap();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(seen.iter().all(|&seen| seen));
        assert!(empty);
    }
}
