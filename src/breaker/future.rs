//! The response future of [`Breaker`](super::Breaker).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

use super::classify::{Classify, Outcome};
use super::engine::Engine;
use super::error::BreakerOpen;
use super::ticket::Ticket;
use super::word::Word;
use crate::Rejection;

pin_project! {
    /// Response future of [`Breaker`](super::Breaker).
    ///
    /// When the inner future completes, its result is classified and counted. If this future is
    /// dropped first, nothing is counted, and a probe's place is given back. A rejected call
    /// resolves at once with [`BreakerOpen`].
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: CallState<F, C>,
    }
}

pin_project! {
    #[project = CallStateProj]
    enum CallState<F, C> {
        // An ordinary call while closed, without slow-call timing: the lightest state, as the
        // closed path is the hot one.
        Closed {
            #[pin]
            future: F,
            engine: Option<Arc<Engine>>,
            word: Word,
            classifier: C,
        },
        Called {
            #[pin]
            future: F,
            ticket: Option<Ticket>,
            classifier: C,
        },
        Bypass {
            #[pin]
            future: F,
        },
        Rejected {
            error: BreakerOpen,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn closed(future: F, engine: Arc<Engine>, word: Word, classifier: C) -> Self {
        Self {
            kind: CallState::Closed {
                future,
                engine: Some(engine),
                word,
                classifier,
            },
        }
    }

    pub(crate) fn called(future: F, ticket: Ticket, classifier: C) -> Self {
        Self {
            kind: CallState::Called {
                future,
                ticket: Some(ticket),
                classifier,
            },
        }
    }

    pub(crate) fn bypass(future: F) -> Self {
        Self {
            kind: CallState::Bypass { future },
        }
    }

    pub(crate) fn rejected(error: BreakerOpen) -> Self {
        Self {
            kind: CallState::Rejected { error },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            CallStateProj::Closed {
                future,
                engine,
                word,
                classifier,
            } => {
                let result = ready!(future.poll(cx));
                let outcome = classifier.classify(result.as_ref());
                let result = result.map_err(Into::into);
                if let Some(engine) = engine.take() {
                    engine.record(*word, None, not_a_refusal(outcome, &result));
                }
                Poll::Ready(result)
            }
            CallStateProj::Called {
                future,
                ticket,
                classifier,
            } => {
                let result = ready!(future.poll(cx));
                let outcome = classifier.classify(result.as_ref());
                let result = result.map_err(Into::into);
                if let Some(ticket) = ticket.take() {
                    ticket.finish(not_a_refusal(outcome, &result));
                }
                Poll::Ready(result)
            }
            CallStateProj::Bypass { future } => future.poll(cx).map_err(Into::into),
            CallStateProj::Rejected { error } => Poll::Ready(Err((*error).into())),
        }
    }
}

/// A failure that is a refusal by an inner tanker layer ([`Rejection::find`]) is ignored: the
/// dependency was not called, so it says nothing about it. Looked for only in failures, so
/// successes pay nothing.
#[inline]
fn not_a_refusal<T>(outcome: Outcome, result: &Result<T, BoxError>) -> Outcome {
    match result {
        Err(err) if outcome == Outcome::Failure && Rejection::find(err.as_ref()).is_some() => {
            Outcome::Ignore
        }
        _ => outcome,
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            CallState::Closed { .. } | CallState::Called { .. } => "called",
            CallState::Bypass { .. } => "bypass",
            CallState::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
