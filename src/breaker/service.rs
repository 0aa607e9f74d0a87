use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::futures::OwnedNotified;

use tower::BoxError;
use tower_service::Service;

use super::classify::{Classify, ErrorsAsFailures};
use super::engine::Engine;
use super::error::BreakerOpen;
use super::future::ResponseFuture;
use super::handle::BreakerHandle;
use super::state::{Admission, BreakerState};
use super::ticket::Ticket;
use super::word::Word;

/// Counts the outcomes of calls to the inner service, and stops calling it while it fails.
///
/// Built by [`BreakerLayer`](super::BreakerLayer); see the [module docs](super) for the states,
/// the thresholds and an example. Every `Breaker` built from one layer value, and every clone of
/// it, shares one state.
///
/// `poll_ready` checks the state before it touches the inner service: when the breaker is open it
/// returns `Ready(Ok(()))` at once, without polling the inner service, and the following `call`
/// fails with [`BreakerOpen`]. A probe place taken by `poll_ready` belongs to this handle: a clone
/// starts without one, and dropping the handle gives it back.
pub struct Breaker<S, C = ErrorsAsFailures> {
    inner: S,
    engine: Arc<Engine>,
    classifier: C,
    /// What `poll_ready` decided, for `call`.
    ready: Ready,
    /// The state word that decision was made on (for a call, a probe or a bypass): `call` checks
    /// that it still holds, and decides again if the breaker changed in between.
    word: Word,
    /// The time to the next probe, for a rejection.
    retry_after: Option<Duration>,
    /// A probe's place, held from `poll_ready` to `call` and given back if this handle is
    /// dropped first.
    probe: Option<Ticket>,
    /// Registered while the inner service is not ready, to be woken if the breaker opens.
    parked: Option<Pin<Box<OwnedNotified>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    /// Nothing decided since the last `call`.
    Idle,
    /// An ordinary call, while closed.
    Call,
    /// A probe, whose place is in `probe`.
    Probe,
    /// The breaker is forced closed.
    Bypass,
    /// Rejected, with `retry_after`.
    Reject,
}

impl<S, C> Breaker<S, C> {
    pub(crate) fn from_parts(inner: S, engine: Arc<Engine>, classifier: C) -> Self {
        Self {
            inner,
            engine,
            classifier,
            ready: Ready::Idle,
            word: Word::new(0, BreakerState::Closed),
            retry_after: None,
            probe: None,
            parked: None,
        }
    }

    /// The state and counters this service shares with its layer.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.engine.clone())
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the breaker, giving back any probe place it holds, and returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Whether the admission held from an earlier `poll_ready` still stands: no transition since
    /// it was decided. Anything else is decided again, so a caller never acts on a stale
    /// decision.
    #[inline]
    fn holds_admission(&self) -> bool {
        match self.ready {
            Ready::Call | Ready::Probe | Ready::Bypass => self.engine.holds(self.word),
            Ready::Idle | Ready::Reject => false,
        }
    }

    #[inline]
    fn admit(&mut self) {
        self.probe = None;
        self.ready = match self.engine.admit() {
            Admission::Call { generation } => {
                self.word = Word::new(generation, BreakerState::Closed);
                Ready::Call
            }
            Admission::Probe { generation, id } => {
                self.word = Word::new(generation, BreakerState::HalfOpen);
                self.probe = Some(Ticket::probe(self.engine.clone(), generation, id));
                Ready::Probe
            }
            Admission::Bypass { generation } => {
                self.word = Word::new(generation, BreakerState::ForcedClosed);
                Ready::Bypass
            }
            Admission::Reject { retry_after } => {
                self.retry_after = retry_after;
                Ready::Reject
            }
        };
    }

    /// Registers to be woken when the breaker opens. Returns `true` if it already happened.
    fn park(&mut self, cx: &mut Context<'_>) -> bool {
        let opened = self.engine.opened();
        let parked = self
            .parked
            .get_or_insert_with(|| Box::pin(opened.clone().notified_owned()));
        if parked.as_mut().poll(cx).is_ready() {
            // Consumed; register afresh next time, reusing the allocation.
            parked.set(opened.clone().notified_owned());
            return true;
        }
        false
    }
}

impl<S, C, Request> Service<Request> for Breaker<S, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            // Decide before touching the inner service, so a hung dependency cannot stall a
            // breaker that should fail fast.
            if !self.holds_admission() {
                self.admit();
            }
            if self.ready == Ready::Reject {
                return Poll::Ready(Ok(()));
            }
            match self.inner.poll_ready(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(err)) => {
                    // The inner service is broken for good; a probe place held here is given
                    // back without an outcome.
                    self.ready = Ready::Idle;
                    self.probe = None;
                    return Poll::Ready(Err(err.into()));
                }
                Poll::Pending => {
                    // If the breaker opens while this caller waits for the inner service, wake
                    // up and reject instead of waiting on a dependency that is failing.
                    if !self.park(cx) && self.holds_admission() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Checks that the decision of `poll_ready` still holds (one atomic load): if the breaker
    /// opened, was forced, or changed period since, the call is decided again, and rejected with
    /// [`BreakerOpen`] without reaching the inner service if the breaker no longer lets it
    /// through.
    ///
    /// # Panics
    ///
    /// Panics if called without a preceding `poll_ready` that returned `Ready(Ok(()))`, as the
    /// tower contract allows.
    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        let ready = mem::replace(&mut self.ready, Ready::Idle);
        if ready == Ready::Call && self.engine.holds(self.word) {
            return self.call_closed(request);
        }
        self.call_other(ready, request)
    }
}

impl<S, C> Breaker<S, C> {
    /// An ordinary call while closed: the hot path.
    #[inline]
    fn call_closed<Request>(&mut self, request: Request) -> ResponseFuture<S::Future, C>
    where
        S: Service<Request>,
        C: Clone,
    {
        let future = self.inner.call(request);
        if self.engine.times_calls() {
            let mut ticket = Ticket::call(self.engine.clone(), self.word);
            ticket.start();
            return ResponseFuture::called(future, ticket, self.classifier.clone());
        }
        ResponseFuture::closed(
            future,
            self.engine.clone(),
            self.word,
            self.classifier.clone(),
        )
    }

    /// Everything but a held ordinary call: a probe, a bypass, a rejection, or a decision that
    /// no longer holds.
    #[cold]
    fn call_other<Request>(
        &mut self,
        ready: Ready,
        request: Request,
    ) -> ResponseFuture<S::Future, C>
    where
        S: Service<Request>,
        C: Clone,
    {
        let ready = match ready {
            Ready::Idle => panic!(
                "Breaker::call without a successful poll_ready: poll_ready must be called first"
            ),
            Ready::Reject => Ready::Reject,
            held if self.engine.holds(self.word) => held,
            _ => {
                // The breaker changed since `poll_ready`: decide again. The inner service is
                // ready, so whatever the new decision lets through may go.
                self.admit();
                mem::replace(&mut self.ready, Ready::Idle)
            }
        };
        match ready {
            Ready::Call => self.call_closed(request),
            Ready::Probe => match self.probe.take() {
                Some(mut ticket) => {
                    ticket.start();
                    ResponseFuture::called(
                        self.inner.call(request),
                        ticket,
                        self.classifier.clone(),
                    )
                }
                None => self.reject(),
            },
            Ready::Bypass => ResponseFuture::bypass(self.inner.call(request)),
            Ready::Reject | Ready::Idle => self.reject(),
        }
    }

    #[cold]
    fn reject<F>(&self) -> ResponseFuture<F, C> {
        self.engine.count_rejection();
        ResponseFuture::rejected(BreakerOpen::new(self.retry_after, self.engine.domain))
    }
}

impl<S: Clone, C: Clone> Clone for Breaker<S, C> {
    /// The clone shares the breaker's state but not this handle's admission: it starts fresh.
    fn clone(&self) -> Self {
        Self::from_parts(
            self.inner.clone(),
            self.engine.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Breaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("inner", &self.inner)
            .field("ready", &self.ready)
            .field("breaker", &self.handle())
            .finish()
    }
}
