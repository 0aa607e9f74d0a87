//! Where one record's delivery report goes: a one-shot slot shared by the record's opaque value
//! in librdkafka and the call's [`DeliveryFuture`](super::future::DeliveryFuture).
//!
//! One allocation per record: librdkafka holds one `Arc` of the slot as the record's opaque
//! value (rdkafka turns an `Arc` into the C pointer and back), the future holds the other. A
//! channel would cost two (the channel, and a box for its sender to become a pointer), and the
//! box would be freed by librdkafka's thread, across threads, on every record. The slot is
//! freed by whichever side lets go last: the waiting call, unless it was dropped first.
//!
//! librdkafka reports every record it accepted exactly once: delivered, failed, or purged when
//! the producer is dropped (a purge is a [`Closed`](super::KafkaErrorKind::Closed) error). The
//! context's `delivery` holds the slot in a [`ReplyGuard`], which fills it with `Closed` if the
//! report panics before it is sent, so a waiting call always ends.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::error::{KafkaError, KafkaErrorKind};
use super::record::Delivery;

/// A record's outcome, as its delivery report says.
pub(super) type Outcome = Result<Delivery, KafkaError>;

/// The slot, shared by librdkafka's side (which fills it once) and the waiting call.
#[derive(Debug)]
pub(super) struct Reply {
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    /// No report yet; the waker of the last poll, if any.
    Waiting(Option<Waker>),
    /// The report, not yet taken.
    Ready(Outcome),
    /// The report was taken: the future resolved.
    Taken,
}

impl Reply {
    /// A new slot: one handle for librdkafka's opaque value, one for the waiting call.
    pub(super) fn pair() -> (Arc<Self>, Arc<Self>) {
        let reply = Arc::new(Self {
            state: Mutex::new(State::Waiting(None)),
        });
        (reply.clone(), reply)
    }

    /// The state; a panic while it was held cannot leave it half written (each change is one
    /// assignment), so a poisoned lock is used as is.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fills the slot with the record's outcome and wakes the call, if it waits; a call that
    /// was dropped is woken for nothing. Only the first outcome counts.
    pub(super) fn send(&self, outcome: Outcome) {
        let waker = {
            let mut state = self.state();
            match &mut *state {
                State::Waiting(waker) => {
                    let waker = waker.take();
                    *state = State::Ready(outcome);
                    waker
                }
                State::Ready(_) | State::Taken => None,
            }
        };
        // Woken outside the lock: the call may run at once on another thread and poll.
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The outcome once it is in; until then, remembers the task to wake.
    pub(super) fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<Outcome>> {
        let mut state = self.state();
        match &mut *state {
            State::Waiting(waker) => {
                match waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Ready(_) => match std::mem::replace(&mut *state, State::Taken) {
                State::Ready(outcome) => Poll::Ready(Some(outcome)),
                _ => unreachable!("the state was just seen ready"),
            },
            // Polled again after it resolved.
            State::Taken => Poll::Ready(None),
        }
    }
}

/// A record's slot while its delivery report is being made: filled with a
/// [`Closed`](KafkaErrorKind::Closed) error if dropped before [`send`](Self::send) (a panic in
/// the report's bookkeeping, a metrics recorder's say), so that the waiting call still ends, as
/// a dropped channel would have ended it.
pub(super) struct ReplyGuard(Option<Arc<Reply>>);

impl ReplyGuard {
    pub(super) fn new(reply: Arc<Reply>) -> Self {
        Self(Some(reply))
    }

    /// Sends the record's outcome.
    pub(super) fn send(mut self, outcome: Outcome) {
        if let Some(reply) = self.0.take() {
            reply.send(outcome);
        }
    }
}

impl Drop for ReplyGuard {
    fn drop(&mut self) {
        if let Some(reply) = self.0.take() {
            reply.send(Err(KafkaError::new(KafkaErrorKind::Closed, None)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn delivery() -> Outcome {
        Ok(Delivery {
            partition: 1,
            offset: 7,
        })
    }

    #[test]
    fn a_waiting_call_is_woken_once_and_gets_the_outcome_once() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let (sender, receiver) = Reply::pair();

        assert!(receiver.poll(&mut cx).is_pending());
        assert!(receiver.poll(&mut cx).is_pending());
        sender.send(delivery());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        sender.send(Err(KafkaError::new(KafkaErrorKind::Closed, None)));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "a second report wakes no one"
        );

        match receiver.poll(&mut cx) {
            Poll::Ready(Some(Ok(d))) => assert_eq!((d.partition, d.offset), (1, 7)),
            other => panic!("expected the first report, got {other:?}"),
        }
        assert!(matches!(receiver.poll(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn an_outcome_in_before_the_first_poll_is_ready_at_once() {
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let (sender, receiver) = Reply::pair();
        sender.send(Err(KafkaError::new(KafkaErrorKind::BrokerDown, None)));
        drop(sender);
        match receiver.poll(&mut cx) {
            Poll::Ready(Some(Err(e))) => assert_eq!(e.kind(), KafkaErrorKind::BrokerDown),
            other => panic!("expected the error, got {other:?}"),
        }
    }

    #[test]
    fn the_last_pollers_waker_is_the_one_woken() {
        let first = Arc::new(Count(AtomicUsize::new(0)));
        let second = Arc::new(Count(AtomicUsize::new(0)));
        let (sender, receiver) = Reply::pair();
        let waker = Waker::from(first.clone());
        assert!(receiver.poll(&mut Context::from_waker(&waker)).is_pending());
        let waker = Waker::from(second.clone());
        assert!(receiver.poll(&mut Context::from_waker(&waker)).is_pending());
        sender.send(delivery());
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_report_that_never_came_ends_the_call_as_closed() {
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let (sender, receiver) = Reply::pair();
        assert!(receiver.poll(&mut cx).is_pending());
        // The report's bookkeeping panicked: the guard is dropped unsent.
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = ReplyGuard::new(sender);
            panic!("a recorder panicked");
        }));
        assert!(unwound.is_err());
        match receiver.poll(&mut cx) {
            Poll::Ready(Some(Err(e))) => assert_eq!(e.kind(), KafkaErrorKind::Closed),
            other => panic!("expected Closed, got {other:?}"),
        }

        // Sent: the guard adds nothing after the outcome.
        let (sender, receiver) = Reply::pair();
        ReplyGuard::new(sender).send(delivery());
        assert!(matches!(receiver.poll(&mut cx), Poll::Ready(Some(Ok(_)))));
    }

    #[test]
    fn a_report_from_another_thread_wakes_the_waiting_task() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (sender, receiver) = Reply::pair();
        let reporter = std::thread::spawn(move || sender.send(delivery()));
        let outcome = runtime.block_on(std::future::poll_fn(|cx| receiver.poll(cx)));
        reporter.join().expect("reporter");
        assert!(matches!(outcome, Some(Ok(_))));
    }
}
