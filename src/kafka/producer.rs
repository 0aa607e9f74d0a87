//! The producer itself: one librdkafka `ThreadedProducer` shared by every clone of a
//! [`KafkaService`](super::KafkaService), and the inner service its per-broker compartments wrap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::producer::{Producer as _, ThreadedProducer};
use tower_service::Service;

use super::broker::BrokerId;
use super::context::ProducerState;
use super::error::{KafkaError, KafkaErrorKind};
use super::future::DeliveryFuture;
use super::leaders::Leaders;
use super::record::Record;
use super::reply::Reply;

/// A record with the partition the leaf chose for it and that partition's leader, the key of
/// its compartment; or neither, for a record left to librdkafka.
pub(super) struct Routed {
    record: Record,
    partition: Option<i32>,
    broker: BrokerId,
}

impl Routed {
    /// A record for `partition`, in the compartment of its leader `broker`.
    pub(super) fn to(record: Record, partition: i32, broker: BrokerId) -> Self {
        Self {
            record,
            partition: Some(partition),
            broker,
        }
    }

    /// The leader of its partition: the key of its compartment.
    pub(super) fn broker(&self) -> BrokerId {
        self.broker
    }

    /// A record left to librdkafka's partitioner, outside any compartment.
    pub(super) fn unrouted(record: Record) -> Self {
        Self {
            record,
            partition: None,
            broker: -1,
        }
    }
}

/// Cheap handle on the shared producer: sends a [`Routed`] record and resolves with its
/// delivery report.
#[derive(Clone)]
pub(super) struct Producer {
    shared: Arc<SharedProducer>,
}

/// What the clones of a producer share.
struct SharedProducer {
    /// `None` only while being dropped.
    producer: Option<ThreadedProducer<ProducerState>>,
    name: Arc<str>,
    /// Whether the producer's fatal error was logged: once is enough, not once per call.
    fatal_logged: AtomicBool,
}

impl Producer {
    /// Creates the producer `name` from librdkafka's `client` configuration; `leaders` is the
    /// table its statistics feed, if the leaf routes by leader.
    pub(super) fn start(
        client: &ClientConfig,
        name: Arc<str>,
        leaders: Option<Arc<Leaders>>,
    ) -> Result<Self, RdKafkaError> {
        let producer: ThreadedProducer<ProducerState> =
            client.create_with_context(ProducerState::new(name.clone(), leaders))?;
        Ok(Self {
            shared: Arc::new(SharedProducer {
                producer: Some(producer),
                name,
                fatal_logged: AtomicBool::new(false),
            }),
        })
    }

    fn producer(&self) -> Result<&ThreadedProducer<ProducerState>, KafkaError> {
        self.shared
            .producer
            .as_ref()
            .ok_or_else(|| KafkaError::new(KafkaErrorKind::Closed, None))
    }

    pub(super) fn name(&self) -> &str {
        &self.shared.name
    }

    pub(super) fn in_flight(&self) -> usize {
        self.producer().map_or(0, |p| p.context().in_flight())
    }

    /// Records Kafka confirmed, and records that failed.
    pub(super) fn outcomes(&self) -> (u64, u64) {
        self.producer().map_or((0, 0), |p| p.context().outcomes())
    }

    /// Waits up to `timeout` for the records in flight, on a blocking thread.
    pub(super) async fn flush(&self, timeout: Duration) {
        let shared = self.shared.clone();
        let waited = tokio::task::spawn_blocking(move || {
            if let Some(producer) = &shared.producer {
                // `Err` means the timeout passed; the caller counts what is left.
                let _ = producer.flush(timeout);
            }
        })
        .await;
        if let Err(error) = waited {
            tracing::warn!(producer = self.name(), %error, "kafka flush did not run");
        }
    }

    fn send(&self, routed: Routed) -> DeliveryFuture {
        let producer = match self.producer() {
            Ok(producer) => producer,
            Err(error) => return DeliveryFuture::failed(error),
        };
        let (reply, delivery) = Reply::pair();
        let Routed {
            record, partition, ..
        } = routed;
        let state = producer.context();
        state.sending();
        match producer.send(record.to_base(partition, reply)) {
            Ok(()) => DeliveryFuture::waiting(delivery),
            Err((error, _record)) => {
                let error = KafkaError::from_rdkafka(error).for_topic(record.topic());
                state.refused(&error);
                DeliveryFuture::failed(error)
            }
        }
    }
}

impl Service<Routed> for Producer {
    type Response = super::record::Delivery;
    type Error = KafkaError;
    type Future = DeliveryFuture;

    /// Ready, unless the producer hit a fatal error, which it returns (the producer is then
    /// broken for good and must be rebuilt). librdkafka is asked only once its context has
    /// seen a sign of one (an error event or a record failed with that kind): until then this
    /// is one load.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let producer = self.producer()?;
        if !producer.context().fatal_raised() {
            return Poll::Ready(Ok(()));
        }
        match producer.client().fatal_error() {
            None => Poll::Ready(Ok(())),
            Some((code, reason)) => {
                if !self.shared.fatal_logged.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        producer = self.name(),
                        ?code,
                        reason,
                        "kafka producer is broken; every call will fail until it is rebuilt"
                    );
                }
                Poll::Ready(Err(KafkaError::from_rdkafka(
                    RdKafkaError::MessageProduction(code),
                )))
            }
        }
    }

    /// Hands the record to librdkafka's queue without waiting; a refusal (a full queue) is an
    /// immediately ready error. Needs no `poll_ready` first.
    fn call(&mut self, routed: Routed) -> Self::Future {
        self.send(routed)
    }
}

impl Drop for SharedProducer {
    fn drop(&mut self) {
        let Some(producer) = self.producer.take() else {
            return;
        };
        let undelivered = producer.context().in_flight();
        if undelivered > 0 {
            tracing::warn!(
                producer = &*self.name,
                undelivered,
                "kafka producer dropped before its records were delivered: they are purged and \
                 their calls fail with `Closed`; call `flush` first to deliver them"
            );
        }
        // Dropping the producer purges its queue and joins its polling thread, which can take a
        // moment: keep that off the async worker threads when there are any.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || drop(producer));
            }
            Err(_) => drop(producer),
        }
    }
}
