use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::counts::HandoffCounts;
use super::shared::{Sent, Shared};

/// The front door: puts requests in a bounded queue and returns at once.
///
/// Made by [`HandoffBuilder::spawn`](super::HandoffBuilder::spawn); see the [module docs](super).
/// Cheap to clone; all clones feed the same queue and worker.
pub struct Handoff<Req> {
    shared: Arc<Shared<Req>>,
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
    pub(crate) fn new(shared: Arc<Shared<Req>>) -> Self {
        Self { shared }
    }

    /// Offers a request. Never blocks, never fails, never panics: the request is either
    /// [accepted](Sent::Accepted) whole into the queue or [dropped](Sent::Dropped) and counted.
    ///
    /// Its cost: a few atomic operations on the queue and counters, one load of the coarse
    /// clock and of the worker's state, and, with a byte budget, one call of the weight
    /// function and a compare-and-swap. It never wakes the worker, except when the queue is
    /// half full (or on a runtime without timers, where the worker parks).
    #[inline]
    pub fn send(&self, request: Req) -> Sent {
        self.shared.offer(request)
    }

    /// The counters.
    pub fn counts(&self) -> HandoffCounts {
        self.shared.counts()
    }

    /// The hand-off's name, as given to the builder.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// Whether the hand-off is closed: [`close`](Self::close) was called, or the service broke
    /// for good (see the [module docs](super#panics-and-broken-services)).
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Stops accepting (later sends are dropped and counted), then waits up to `deadline` for
    /// the queue and the calls in flight to finish, and reports what was left.
    ///
    /// # Panics
    ///
    /// The deadline is a tokio timer: like `tokio::time::timeout`, `close` panics on a runtime
    /// built without its time driver (`enable_time`).
    pub async fn close(&self, deadline: Duration) -> CloseReport {
        let shared = &*self.shared;
        shared.close();
        let finished = shared.worker_finished();
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
        self.shared.add_handle();
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<Req> Drop for Handoff<Req> {
    /// When the last handle goes, the hand-off closes: the worker drives what was accepted
    /// through the stack, then ends and drops the service.
    fn drop(&mut self) {
        self.shared.drop_handle();
    }
}

impl<Req> fmt::Debug for Handoff<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handoff")
            .field("name", &self.name())
            .field("capacity", &self.shared.capacity())
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
