//! The response future of [`KafkaService`](super::KafkaService): waits for a record's delivery
//! report.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::error::{KafkaError, KafkaErrorKind};
use super::record::Delivery;

/// Response future of [`KafkaService`](super::KafkaService): resolves on the record's delivery
/// report.
pub struct ResponseFuture {
    state: DeliveryState,
}

enum DeliveryState {
    Waiting(oneshot::Receiver<Result<Delivery, KafkaError>>),
    Failed(Option<KafkaError>),
}

impl ResponseFuture {
    /// Waits for the delivery report `delivery` will bring.
    pub(super) fn waiting(delivery: oneshot::Receiver<Result<Delivery, KafkaError>>) -> Self {
        Self {
            state: DeliveryState::Waiting(delivery),
        }
    }

    /// Resolves at once with `error`: the record never reached librdkafka's queue.
    pub(super) fn failed(error: KafkaError) -> Self {
        Self {
            state: DeliveryState::Failed(Some(error)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Delivery, KafkaError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            DeliveryState::Waiting(delivery) => match Pin::new(delivery).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(outcome)) => Poll::Ready(outcome),
                // The producer went away without reporting: it was dropped.
                Poll::Ready(Err(_closed)) => {
                    Poll::Ready(Err(KafkaError::new(KafkaErrorKind::Closed, None)))
                }
            },
            DeliveryState::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| KafkaError::new(KafkaErrorKind::Closed, None)))),
        }
    }
}

impl fmt::Debug for ResponseFuture {
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
