//! The response future of [`KafkaService`](super::KafkaService): waits for a record's delivery
//! report, through the record's broker compartment when it has one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

use super::classify::FaultClassifier;
use super::error::{KafkaError, KafkaErrorKind};
use super::record::Delivery;
use super::reply::Reply;
use crate::keyed::future::ResponseFuture as KeyedFuture;

pin_project! {
    /// Response future of [`KafkaService`](super::KafkaService): resolves on the record's
    /// delivery report, or at once with a [`KafkaError`] of kind
    /// [`Refused`](KafkaErrorKind::Refused) when its broker's compartment refused it.
    pub struct ResponseFuture {
        #[pin]
        path: Path,
    }
}

pin_project! {
    #[project = PathProj]
    enum Path {
        /// Straight to librdkafka: no broker domains, or a topic whose partitions are not known yet.
        Direct { #[pin] delivery: DeliveryFuture },
        /// Through the leader's compartment and breaker.
        Broker { #[pin] delivery: KeyedFuture<DeliveryFuture, FaultClassifier> },
    }
}

impl ResponseFuture {
    pub(super) fn direct(delivery: DeliveryFuture) -> Self {
        Self {
            path: Path::Direct { delivery },
        }
    }

    pub(super) fn broker(delivery: KeyedFuture<DeliveryFuture, FaultClassifier>) -> Self {
        Self {
            path: Path::Broker { delivery },
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Delivery, KafkaError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().path.project() {
            PathProj::Direct { delivery } => delivery.poll(cx),
            PathProj::Broker { delivery } => match delivery.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(delivery)) => Poll::Ready(Ok(delivery)),
                Poll::Ready(Err(error)) => Poll::Ready(Err(unbox(error))),
            },
        }
    }
}

/// The leaf's own error back from the compartment's box, or the compartment's refusal.
fn unbox(error: BoxError) -> KafkaError {
    match error.downcast::<KafkaError>() {
        Ok(error) => *error,
        Err(refusal) => KafkaError::refused(refusal),
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Path::Direct { delivery } => fmt::Debug::fmt(delivery, f),
            Path::Broker { delivery } => fmt::Debug::fmt(delivery, f),
        }
    }
}

/// Waits for one record's delivery report.
pub(super) struct DeliveryFuture {
    state: DeliveryState,
}

enum DeliveryState {
    Waiting(Arc<Reply>),
    /// Boxed: every call's future would otherwise carry the error's room (a hand-off keeps
    /// thousands of them in flight), while a record refused at once (a full librdkafka queue,
    /// which a hand-off's concurrency keeps far away) pays an allocation.
    Failed(Option<Box<KafkaError>>),
}

impl DeliveryFuture {
    /// Waits for the delivery report `delivery` will bring.
    pub(super) fn waiting(delivery: Arc<Reply>) -> Self {
        Self {
            state: DeliveryState::Waiting(delivery),
        }
    }

    /// Resolves at once with `error`: the record never reached librdkafka's queue.
    pub(super) fn failed(error: KafkaError) -> Self {
        Self {
            state: DeliveryState::Failed(Some(Box::new(error))),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery, KafkaError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            DeliveryState::Waiting(delivery) => match delivery.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(outcome)) => Poll::Ready(outcome),
                // Polled after it resolved, which a caller should not do.
                Poll::Ready(None) => {
                    Poll::Ready(Err(KafkaError::new(KafkaErrorKind::Closed, None)))
                }
            },
            DeliveryState::Failed(error) => Poll::Ready(Err(error
                .take()
                .map_or_else(|| KafkaError::new(KafkaErrorKind::Closed, None), |e| *e))),
        }
    }
}

impl fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            DeliveryState::Waiting(_) => "waiting for delivery",
            DeliveryState::Failed(_) => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
