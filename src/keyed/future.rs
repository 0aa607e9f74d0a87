//! The response future of [`Keyed`](super::Keyed).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

use crate::breaker::future::ResponseFuture as BreakerFuture;
use crate::breaker::Classify;
use crate::bulkhead::future::ResponseFuture as BulkheadFuture;

pin_project! {
    /// Response future of [`Keyed`](super::Keyed).
    ///
    /// It is the future of a breaker over a bulkhead, those of the call's key: it holds the
    /// key's slot until the inner future completes, then classifies and counts the outcome in
    /// the key's breaker. If it is dropped first, the slot is given back and nothing is counted.
    /// A refused call resolves at once with
    /// [`BreakerOpen`](crate::breaker::BreakerOpen) or
    /// [`BulkheadFull`](crate::bulkhead::BulkheadFull).
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: BreakerFuture<BulkheadFuture<F>, C>,
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn new(inner: BreakerFuture<BulkheadFuture<F>, C>) -> Self {
        Self { inner }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .finish()
    }
}
