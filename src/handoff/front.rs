use crate::sync::Ordering;
use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::shared::{HandoffCounts, Shared};

/// What became of a record handed off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sent {
    /// The record is in the queue; the worker will drive it through the stack and count its
    /// outcome.
    Accepted,
    /// The queue was full (or the hand-off closed): the record was counted as dropped and
    /// discarded. [`HandoffCounts::dropped_closed`] tells the two apart.
    Dropped,
}

/// The front door: puts requests in a bounded queue and returns at once.
///
/// Made by [`HandoffBuilder::spawn`](super::HandoffBuilder::spawn); see the [module docs](super).
/// Cheap to clone; all clones feed the same queue and worker.
pub struct Handoff<Req> {
    pub(crate) shared: Arc<Shared<Req>>,
}

/// What [`Handoff::close`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// Whether every accepted record finished before the deadline.
    pub drained: bool,
    /// Records still queued or in flight at the deadline. The worker keeps driving them (the
    /// stack's own timeouts bound how long), and they keep being counted.
    pub left: u64,
    /// The counters when `close` returned.
    pub counts: HandoffCounts,
}

impl<Req> Handoff<Req> {
    /// Offers a request. Never blocks, never fails, never panics: the request is either
    /// [accepted](Sent::Accepted) whole into the queue or [dropped](Sent::Dropped) and counted.
    #[inline]
    pub fn send(&self, request: Req) -> Sent {
        let shared = &*self.shared;
        if shared.queue.is_full() {
            if shared.front.closed.load(Ordering::Relaxed) {
                return shared.drop_closed();
            }
            // Overloaded: one atomic add, nothing else.
            shared.front.dropped_full.fetch_add(1, Ordering::Relaxed);
            return Sent::Dropped;
        }
        // Reserve before looking at `closed`: a worker that saw `closed` and then finds
        // `accepted` above what it finished waits for this push (or its undoing) before it ends.
        shared.front.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.front.closed.load(Ordering::SeqCst) {
            shared.front.accepted.fetch_sub(1, Ordering::SeqCst);
            return shared.drop_closed();
        }
        if shared.queue.push(request).is_err() {
            // Another sender took the last place since `is_full`.
            shared.front.accepted.fetch_sub(1, Ordering::SeqCst);
            shared.front.dropped_full.fetch_add(1, Ordering::Relaxed);
            return Sent::Dropped;
        }
        // The worker drains on its own clock; ring it early only when a backlog builds, so a
        // send almost never has to wake a thread.
        if shared.front.sleeping.load(Ordering::Relaxed)
            && shared.queue.len() * 2 >= shared.queue.capacity()
            && shared.front.sleeping.swap(false, Ordering::AcqRel)
        {
            shared.doorbell.notify_one();
        }
        Sent::Accepted
    }

    /// The counters.
    pub fn counts(&self) -> HandoffCounts {
        self.shared.counts()
    }

    /// The hand-off's name, as given to the builder.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.front.closed.load(Ordering::Acquire)
    }

    /// Stops accepting (later sends are dropped and counted), then waits up to `deadline` for
    /// the queue and the calls in flight to finish, and reports what was left.
    pub async fn close(&self, deadline: Duration) -> CloseReport {
        let shared = &*self.shared;
        shared.front.closed.store(true, Ordering::Release);
        shared.wake_worker();
        let finished = async {
            loop {
                let drained = shared.drained.notified();
                if shared.finished.load(Ordering::Acquire) {
                    return;
                }
                drained.await;
            }
        };
        let drained = tokio::time::timeout(deadline, finished).await.is_ok();
        let counts = shared.counts();
        if !drained {
            tracing::warn!(
                handoff = self.name(),
                left = counts.pending(),
                "hand-off closed with records still pending"
            );
        }
        CloseReport {
            drained,
            left: counts.pending(),
            counts,
        }
    }
}

impl<Req> Clone for Handoff<Req> {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<Req> Drop for Handoff<Req> {
    /// When the last handle goes, the hand-off closes: the worker drives what was accepted
    /// through the stack, then ends and drops the service.
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.front.closed.store(true, Ordering::SeqCst);
            self.shared.wake_worker();
        }
    }
}

impl<Req> fmt::Debug for Handoff<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handoff")
            .field("name", &self.name())
            .field("capacity", &self.shared.queue.capacity())
            .field("counts", &self.counts())
            .finish()
    }
}

/// The hand-off as a `tower::Service`: always ready, never fails; the response says whether
/// the request was accepted or dropped.
impl<Req> Service<Req> for Handoff<Req> {
    type Response = Sent;
    type Error = Infallible;
    type Future = Ready<Result<Sent, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        ready(Ok(self.send(request)))
    }
}
