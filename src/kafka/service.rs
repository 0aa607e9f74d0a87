use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::broker::{Broker, BrokerId, Guards};
use super::classify::FaultClassifier;
use super::domains::{BrokerHandles, DomainLayer, KeyFn};
use super::error::KafkaError;
use super::future::ResponseFuture;
use super::leaders::{LeaderMap, Leaders};
use super::partitioner::{route, Route};
use super::producer::{Producer, Routed};
use super::record::{Delivery, Record};
use crate::keyed::Keyed;

/// A `tower::Service` that produces [`Record`]s to Kafka and resolves with their [`Delivery`].
///
/// Built by [`KafkaService::builder`] (a [`KafkaConfig`](super::KafkaConfig)). See the
/// [module docs](super) for the whole stack.
///
/// - **Never blocks**: `call` hands the record to librdkafka's local queue without waiting. A
///   full queue is an immediate [`QueueFull`](super::KafkaErrorKind::QueueFull) error. The response
///   future resolves on the record's delivery report: its partition and offset, or a
///   [`KafkaError`] that says whose fault the failure is.
/// - **Honest readiness**: `poll_ready` is always ready, unless the producer hit a fatal error,
///   which it returns (the service is then broken for good and must be rebuilt).
/// - **Cheap to clone**: clones share one producer and its connections.
/// - **Shutdown**: [`flush`](Self::flush) waits, up to a deadline, for the records in flight and
///   says how many were not delivered. When the last clone is dropped, records still in flight
///   are purged: their calls fail with [`Closed`](super::KafkaErrorKind::Closed) (so a hand-off counts
///   them as failed) and a warning gives their number. Nothing is dropped silently.
#[derive(Clone)]
pub struct KafkaService {
    producer: Producer,
    /// The per-broker compartments and breakers; `None` when turned off.
    domains: Option<Domains>,
}

/// A service's view of the per-broker domains.
struct Domains {
    /// The compartments and breakers, over the shared producer.
    keyed: Keyed<Producer, BrokerId, KeyFn, FaultClassifier>,
    handles: BrokerHandles,
    leaders: Arc<Leaders>,
    /// The leaders as this handle last saw them; replaced when the table's version moves.
    map: Arc<LeaderMap>,
    /// Whether keys map to partitions as librdkafka's default partitioner maps them.
    by_key: bool,
}

impl Clone for Domains {
    fn clone(&self) -> Self {
        Self {
            keyed: self.keyed.clone(),
            handles: self.handles.clone(),
            leaders: self.leaders.clone(),
            // A stale map is not passed on.
            map: self.leaders.map(),
            by_key: self.by_key,
        }
    }
}

impl Domains {
    fn call(&mut self, record: Record, producer: &mut Producer) -> ResponseFuture {
        if !self.leaders.is_current(&self.map) {
            self.map = self.leaders.map();
        }
        let Self {
            keyed, map, by_key, ..
        } = self;
        let chosen = match map.topic(record.topic()) {
            Some(topic) => match route(topic, &record, *by_key, Broker::takes_keyless) {
                Route::Leader { partition, broker } => Some((partition, broker)),
                Route::Librdkafka => None,
            },
            None => None,
        };
        let Some((partition, broker)) = chosen else {
            return ResponseFuture::direct(producer.call(Routed::unrouted(record)));
        };
        let delivery = keyed.call(Routed::to(record, partition, broker.id()));
        if !broker.has_guards() {
            let broker = broker.clone();
            self.remember_guards(&broker);
        }
        ResponseFuture::broker(delivery)
    }

    /// Keeps the handles of a broker's compartment and breaker with the broker, for routing
    /// and for probing when it comes back up.
    #[cold]
    fn remember_guards(&self, broker: &Broker) {
        broker.set_guards(|| {
            self.handles
                .get(&broker.id())
                .map(|key| Guards::new(key.breaker().clone(), key.bulkhead().clone()))
        });
    }
}

/// What [`KafkaService::flush`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Records still queued or in flight when the flush ended.
    pub undelivered: usize,
}

/// A snapshot of a [`KafkaService`]'s counters, from [`KafkaService::counts`], shared by its
/// clones.
///
/// Each counter is read on its own, so under load they may be a few records apart. Records a
/// broker's compartment or breaker refused never reach the producer: they are counted by that
/// broker's handles ([`KafkaService::brokers`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaCounts {
    /// Records handed to librdkafka whose delivery report has not come back yet.
    pub in_flight: usize,
    /// Records Kafka confirmed.
    pub delivered: u64,
    /// Records librdkafka refused at once (a full queue, a record too large) or reported
    /// failed (timed out, purged at shutdown...).
    pub failed: u64,
}

impl KafkaService {
    /// Creates the producer `name` from librdkafka's `client` configuration, already checked
    /// by [`KafkaConfig::build`](super::KafkaConfig::build), with per-broker domains if
    /// `domains` gives their layer, the leaders table the statistics feed, and whether keys map
    /// as librdkafka's default partitioner maps them.
    pub(super) fn start(
        client: &rdkafka::config::ClientConfig,
        name: Arc<str>,
        domains: Option<(DomainLayer, Arc<Leaders>, bool)>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let leaders = domains.as_ref().map(|(_, leaders, _)| leaders.clone());
        let producer = Producer::start(client, name, leaders)?;
        let domains = domains.map(|(layer, leaders, by_key)| Domains {
            keyed: tower_layer::Layer::layer(&layer, producer.clone()),
            handles: layer.handle(),
            map: leaders.map(),
            leaders,
            by_key,
        });
        Ok(Self { producer, domains })
    }

    /// The producer's name, as given to [`KafkaConfig::name`](super::KafkaConfig::name).
    pub fn name(&self) -> &str {
        self.producer.name()
    }

    /// A snapshot of the producer's counters: records in flight, delivered and failed. Each
    /// broker's own compartment and breaker count in [`brokers`](Self::brokers).
    ///
    /// ```no_run
    /// use tanker::kafka::KafkaService;
    ///
    /// let kafka = KafkaService::builder("127.0.0.1:9092").build()?;
    /// let counts = kafka.counts();
    /// assert_eq!((counts.in_flight, counts.delivered, counts.failed), (0, 0, 0));
    /// # Ok::<_, tanker::ConfigError>(())
    /// ```
    pub fn counts(&self) -> KafkaCounts {
        let in_flight = self.producer.in_flight();
        let (delivered, failed) = self.producer.outcomes();
        KafkaCounts {
            in_flight,
            delivered,
            failed,
        }
    }

    /// The per-broker compartments and breakers (see [`BrokerDomains`](super::BrokerDomains)),
    /// keyed by broker id; `None` when they are turned off. A broker appears after the first
    /// record routed to it.
    pub fn brokers(&self) -> Option<&BrokerHandles> {
        self.domains.as_ref().map(|domains| &domains.handles)
    }

    /// Waits up to `timeout` for every record in flight to be delivered (or to fail), without
    /// blocking the runtime, and reports how many were left. Records keep being accepted while
    /// it waits.
    ///
    /// Each record's own call still resolves with its delivery or error, as usual.
    pub async fn flush(&self, timeout: Duration) -> FlushReport {
        self.producer.flush(timeout).await;
        FlushReport {
            undelivered: self.producer.in_flight(),
        }
    }
}

impl Service<Record> for KafkaService {
    type Response = Delivery;
    type Error = KafkaError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.producer.poll_ready(cx)
    }

    fn call(&mut self, record: Record) -> Self::Future {
        match &mut self.domains {
            Some(domains) => domains.call(record, &mut self.producer),
            None => ResponseFuture::direct(self.producer.call(Routed::unrouted(record))),
        }
    }
}

impl fmt::Debug for KafkaService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The configuration is not shown: it may hold secrets.
        f.debug_struct("KafkaService")
            .field("name", &self.name())
            .field("counts", &self.counts())
            .finish()
    }
}
