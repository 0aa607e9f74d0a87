use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::producer::{Producer as _, ThreadedProducer};
use tokio::sync::oneshot;
use tower_service::Service;

use super::context::ProducerState;
use super::error::{KafkaError, KafkaErrorKind};
use super::future::ResponseFuture;
use super::record::{Delivery, Record};

/// A `tower::Service` that produces [`Record`]s to Kafka and resolves with their [`Delivery`].
///
/// Built by [`KafkaService::builder`] (a [`KafkaConfig`](super::KafkaConfig)). See the
/// [module docs](super) for the whole stack.
///
/// - **Never blocks**: `call` hands the record to librdkafka's local queue without waiting. A
///   full queue is an immediate [`QueueFull`](KafkaErrorKind::QueueFull) error. The response
///   future resolves on the record's delivery report: its partition and offset, or a
///   [`KafkaError`] that says whose fault the failure is.
/// - **Honest readiness**: `poll_ready` is always ready, unless the producer hit a fatal error,
///   which it returns (the service is then broken for good and must be rebuilt).
/// - **Cheap to clone**: clones share one producer and its connections.
/// - **Shutdown**: [`flush`](Self::flush) waits, up to a deadline, for the records in flight and
///   says how many were not delivered. When the last clone is dropped, records still in flight
///   are purged: their calls fail with [`Closed`](KafkaErrorKind::Closed) (so a hand-off counts
///   them as failed) and a warning gives their number. Nothing is dropped silently.
#[derive(Clone)]
pub struct KafkaService {
    shared: Arc<SharedProducer>,
}

/// What the clones of a [`KafkaService`] share: one producer.
struct SharedProducer {
    /// `None` only while being dropped.
    producer: Option<ThreadedProducer<ProducerState>>,
    name: Arc<str>,
    /// Whether the producer's fatal error was logged: once is enough, not once per call.
    fatal_logged: AtomicBool,
}

/// What [`KafkaService::flush`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Records still queued or in flight when the flush ended.
    pub undelivered: usize,
}

impl KafkaService {
    /// Creates the producer `name` from librdkafka's `client` configuration, already checked
    /// by [`KafkaConfig::build`](super::KafkaConfig::build), which explains librdkafka's refusal.
    pub(super) fn start(client: &ClientConfig, name: Arc<str>) -> Result<Self, RdKafkaError> {
        let producer: ThreadedProducer<ProducerState> =
            client.create_with_context(ProducerState::new(name.clone()))?;
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

    /// The producer's name, as given to [`KafkaConfig::name`](super::KafkaConfig::name).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Records handed to the producer whose delivery report has not come back yet.
    pub fn in_flight(&self) -> usize {
        self.producer().map_or(0, |p| p.context().in_flight())
    }

    /// Waits up to `timeout` for every record in flight to be delivered (or to fail), without
    /// blocking the runtime, and reports how many were left. Records keep being accepted while
    /// it waits.
    ///
    /// Each record's own call still resolves with its delivery or error, as usual.
    pub async fn flush(&self, timeout: Duration) -> FlushReport {
        let shared = self.shared.clone();
        let waited = tokio::task::spawn_blocking(move || {
            if let Some(producer) = &shared.producer {
                // `Err` means the timeout passed; what is left is counted below either way.
                let _ = producer.flush(timeout);
            }
        })
        .await;
        if let Err(error) = waited {
            tracing::warn!(producer = self.name(), %error, "kafka flush did not run");
        }
        FlushReport {
            undelivered: self.in_flight(),
        }
    }

    fn send(
        &self,
        record: &Record,
    ) -> Result<oneshot::Receiver<Result<Delivery, KafkaError>>, KafkaError> {
        let producer = self.producer()?;
        let (reply, delivery) = oneshot::channel();
        let base = record.to_base(Box::new(reply));
        let state = producer.context();
        state.sending();
        match producer.send(base) {
            Ok(()) => Ok(delivery),
            Err((error, _record)) => {
                let error = KafkaError::from_rdkafka(error).for_topic(record.topic());
                state.refused(&error);
                Err(error)
            }
        }
    }
}

impl Service<Record> for KafkaService {
    type Response = Delivery;
    type Error = KafkaError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let producer = self.producer()?;
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

    fn call(&mut self, record: Record) -> Self::Future {
        match self.send(&record) {
            Ok(delivery) => ResponseFuture::waiting(delivery),
            Err(error) => ResponseFuture::failed(error),
        }
    }
}

impl fmt::Debug for KafkaService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The configuration is not shown: it may hold secrets.
        f.debug_struct("KafkaService")
            .field("name", &self.name())
            .field("in_flight", &self.in_flight())
            .finish()
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
