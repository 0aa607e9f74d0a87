//! The response future of [`Bulkhead`](super::Bulkhead).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

use super::compartment::Compartment;
use super::error::BulkheadFull;
use crate::Domain;

/// A slot of the compartment, given back when dropped.
///
/// Made before the inner service's `call` runs (or by `poll_ready`, for a slot held for a caller
/// until its call), so that a panic unwinding through `call` still gives the slot back.
pub(crate) struct Slot {
    compartment: Arc<Compartment>,
}

impl Slot {
    /// The guard of a slot just taken from `compartment`.
    #[inline]
    pub(crate) fn taken(compartment: Arc<Compartment>) -> Self {
        Self { compartment }
    }
}

impl Drop for Slot {
    #[inline]
    fn drop(&mut self) {
        self.compartment.release();
    }
}

pin_project! {
    /// Response future of [`Bulkhead`](super::Bulkhead).
    ///
    /// Holds the call's slot until the inner future completes, and gives it back at that moment
    /// (or when this future is dropped, if that comes first). A shed call resolves at once with
    /// [`BulkheadFull`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
            slot: Option<Slot>,
        },
        Shed { domain: Domain },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F, slot: Slot) -> Self {
        Self {
            kind: Kind::Called {
                future,
                slot: Some(slot),
            },
        }
    }

    /// A call `domain` shed.
    pub(crate) fn shed(domain: Domain) -> Self {
        Self {
            kind: Kind::Shed { domain },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, slot } => {
                let output = ready!(future.poll(cx));
                // Free the slot the moment the call is over, not when the future is dropped.
                drop(slot.take());
                Poll::Ready(output.map_err(Into::into))
            }
            KindProj::Shed { domain } => Poll::Ready(Err(BulkheadFull::new(*domain).into())),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Called { .. } => "called",
            Kind::Shed { .. } => "shed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
