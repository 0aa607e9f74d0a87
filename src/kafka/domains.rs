//! The producer's failure domains: a compartment and a breaker per broker, their settings, and
//! the keyed layer they are built into.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::broker::{BrokerId, NO_LEADER};
use super::classify::FaultClassifier;
use super::producer::Routed;
use crate::breaker::{BreakerBuilder, BreakerLayer};
use crate::bulkhead::{BulkheadBuilder, BulkheadLayer};
use crate::keyed::{KeyedHandle, KeyedLayer};
use crate::ConfigError;

/// The settings of a [`KafkaService`](super::KafkaService)'s failure domains: one compartment
/// and one breaker per broker, on by default.
///
/// A Kafka cluster fails broker by broker: one slow disk or long pause, and the partitions that
/// broker leads stop taking records while the others are fine. The leaf learns which broker
/// leads each partition from librdkafka's statistics, and sends every record through its
/// leader's compartment and breaker, copied from the templates below and named
/// `producer/broker-ID`:
///
/// - a record **without a key** goes to a partition whose leader is healthy (breaker closed,
///   compartment not full, not stalled), a batch at a time as librdkafka's sticky partitioner
///   does, so a sick broker costs nothing but its share of the spread;
/// - a record **with a key** keeps its partition (librdkafka's default mapping, the CRC-32 of
///   the key), and is refused with [`BreakerOpen`](crate::breaker::BreakerOpen) or
///   [`BulkheadFull`](crate::bulkhead::BulkheadFull) only when its own leader is sick, so a
///   [hand-off](crate::handoff) parks it;
/// - a record for a partition **without a leader** (an election under way) goes through one
///   more compartment and breaker, `producer/no-leader`, shared by every such partition: at most
///   its capacity of records wait in librdkafka for a leader, holding no more of a hand-off's
///   concurrency than a broker may; records without a key never go there;
/// - a broker **stalls** when it has records in flight and confirmed none for
///   [`stall_after`](Self::stall_after): a frozen broker is avoided long before its records
///   time out;
/// - a broker whose connection **comes back up** makes its breaker probe at once, so delivery
///   resumes within a statistics interval of the heal;
/// - more than [`max_open`](Self::max_open) brokers open at once is one outage of the cluster:
///   every record is refused until a broker heals. The shared compartment of the partitions
///   without a leader does not count: it is not a broker.
///
/// | setting | default | why |
/// |---|---|---|
/// | [`bulkhead`](Self::bulkhead) | 256 records in flight per broker | a frozen broker holds at most this many records (its share of a hand-off's 1024), the others keep flowing |
/// | [`breaker`](Self::breaker) | [`BreakerLayer::builder()`]'s defaults, with [`FaultClassifier`] | a broker's own timeouts and connection failures open its breaker; a bad record does not |
/// | [`max_open`](Self::max_open) | 2 | three brokers or more sick at once is a cluster outage, seen as one |
/// | [`stall_after`](Self::stall_after) | 500 ms | a healthy broker confirms records within milliseconds; a frozen one would hold them until `message.timeout.ms` (5 s) |
/// | [`statistics_interval`](Self::statistics_interval) | 200 ms | how often librdkafka reports leaders and broker states (`statistics.interval.ms`): a moved leader is followed, and a healed broker probed, within that. Each report is parsed on librdkafka's polling thread, which also hands out the delivery reports: 64 µs for 3 brokers and 6 partitions, 376 µs for 100 partitions (median, `cargo bench --bench statistics`), so 0.03 % and 0.19 % of that thread at 200 ms. A longer default would delay every heal for no gain worth having; with thousands of partitions (by extrapolation, about 4 ms a report per 1000), set 1 s |
///
/// ```no_run
/// use std::time::Duration;
/// use tanker::breaker::BreakerLayer;
/// use tanker::bulkhead::BulkheadLayer;
/// use tanker::kafka::{BrokerDomains, KafkaService};
///
/// let kafka = KafkaService::builder("127.0.0.1:9092")
///     .broker_domains(
///         BrokerDomains::new()
///             .bulkhead(BulkheadLayer::builder().max_in_flight(512))
///             .breaker(BreakerLayer::builder().consecutive_failures(10))
///             .stall_after(Duration::from_secs(1)),
///     )
///     .build()?;
/// # Ok::<_, tanker::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct BrokerDomains {
    bulkhead: BulkheadBuilder,
    breaker: BreakerBuilder<FaultClassifier>,
    max_open: Option<usize>,
    stall_after: Duration,
    statistics_interval: Duration,
}

/// The key of a routed record: its leader's id.
pub(super) type KeyFn = fn(&Routed) -> BrokerId;

/// The per-broker keyed layer of a producer.
pub(super) type DomainLayer = KeyedLayer<BrokerId, KeyFn, FaultClassifier>;

impl Default for BrokerDomains {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerDomains {
    /// The defaults of the table above.
    pub fn new() -> Self {
        Self {
            bulkhead: BulkheadLayer::builder().max_in_flight(256),
            breaker: BreakerLayer::builder().classify(FaultClassifier),
            max_open: Some(2),
            stall_after: Duration::from_millis(500),
            statistics_interval: Duration::from_millis(200),
        }
    }

    /// The compartment each broker gets (its name is replaced by `producer/broker-ID`). It must
    /// have no waiting room.
    pub fn bulkhead(mut self, template: BulkheadBuilder) -> Self {
        self.bulkhead = template;
        self
    }

    /// The breaker each broker gets, with its thresholds and cool-down; its classifier is
    /// replaced by [`FaultClassifier`], so that only Kafka's own faults count.
    pub fn breaker<C>(mut self, template: BreakerBuilder<C>) -> Self {
        self.breaker = template.classify(FaultClassifier);
        self
    }

    /// At most `max` brokers open at once, each on its own; one more is an outage of the
    /// cluster (see [`KeyedBuilder::max_open`](crate::keyed::KeyedBuilder::max_open)).
    pub fn max_open(mut self, max: usize) -> Self {
        self.max_open = Some(max);
        self
    }

    /// Any number of brokers may be open at once, each on its own.
    pub fn no_max_open(mut self) -> Self {
        self.max_open = None;
        self
    }

    /// How long a broker may hold records without confirming any before records without a
    /// key avoid it.
    pub fn stall_after(mut self, threshold: Duration) -> Self {
        self.stall_after = threshold;
        self
    }

    /// How often librdkafka reports the partitions' leaders and the brokers' states
    /// (`statistics.interval.ms`), unless that property is set on the
    /// [`KafkaConfig`](super::KafkaConfig) itself.
    pub fn statistics_interval(mut self, interval: Duration) -> Self {
        self.statistics_interval = interval;
        self
    }

    pub(super) fn stall_threshold(&self) -> Duration {
        self.stall_after
    }

    /// Refuses a stall threshold that the producer's `linger.ms` (in milliseconds, as
    /// librdkafka takes it) would reach: librdkafka holds a record that long before sending it,
    /// so a broker with few records would count as stalled while it is fine.
    pub(super) fn check_linger(&self, linger_ms: f64) -> Result<(), ConfigError> {
        let stall_ms = self.stall_after.as_secs_f64() * 1000.0;
        if stall_ms > linger_ms {
            return Ok(());
        }
        Err(ConfigError::new(
            "stall_after",
            format!(
                "must be longer than `linger.ms` ({linger_ms} ms): librdkafka holds each record \
                 that long before sending it, so every broker with little traffic would count \
                 as stalled; set `stall_after` above the linger plus the brokers' usual round \
                 trip (defaults: 500 ms and 5 ms), or lower the linger"
            ),
        ))
    }

    /// `statistics.interval.ms` as librdkafka takes it.
    pub(super) fn statistics_ms(&self) -> String {
        self.statistics_interval.as_millis().to_string()
    }

    /// Checks the settings and builds the keyed layer of the producer `name`.
    pub(super) fn layer(&self, name: &Arc<str>) -> Result<DomainLayer, ConfigError> {
        if self.stall_after.is_zero() {
            return Err(ConfigError::new(
                "stall_after",
                "must be above zero: every broker with a record in flight would count as \
                 stalled; set it above the brokers' usual round trip (default 500 ms)",
            ));
        }
        if self.statistics_interval < Duration::from_millis(1) {
            return Err(ConfigError::new(
                "statistics_interval",
                "must be at least 1 ms (0 turns librdkafka's statistics off, and the producer \
                 would never learn the leaders); default 200 ms",
            ));
        }
        let key: KeyFn = Routed::broker;
        let builder = KeyedLayer::builder_with_label(key, label)
            .name(name.clone())
            .bulkhead(self.bulkhead.clone())
            .breaker(self.breaker.clone())
            .exempt_from_max_open(|broker: &BrokerId| *broker == NO_LEADER);
        let builder = match self.max_open {
            Some(max) => builder.max_open(max),
            None => builder.no_max_open(),
        };
        builder.build()
    }
}

impl fmt::Debug for BrokerDomains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerDomains")
            .field("bulkhead", &self.bulkhead)
            .field("max_open", &self.max_open)
            .field("stall_after", &self.stall_after)
            .field("statistics_interval", &self.statistics_interval)
            .finish_non_exhaustive()
    }
}

/// The label of a broker's compartment and breaker: `broker-ID`, or `no-leader` for the
/// partitions without one.
fn label(id: &BrokerId) -> String {
    match *id {
        NO_LEADER => "no-leader".to_owned(),
        id => format!("broker-{id}"),
    }
}

/// The handles of a producer's per-broker compartments and breakers.
pub type BrokerHandles = KeyedHandle<BrokerId, FaultClassifier>;

#[cfg(test)]
mod tests {
    use tower::{Layer, Service, ServiceExt};

    use super::*;
    use crate::kafka::{KafkaError, KafkaErrorKind, Record};

    /// The partitions without a leader share a compartment that is not a broker: with it open,
    /// two brokers may still be open each on its own; a third is the cluster's outage.
    #[tokio::test(start_paused = true)]
    async fn the_no_leader_compartment_does_not_count_as_an_open_broker() {
        async fn fail<S: Service<Routed>>(service: &mut S, broker: BrokerId) {
            let routed = Routed::to(Record::new("t", "x"), 0, broker);
            let ready = service.ready().await.ok().expect("always ready");
            assert!(ready.call(routed).await.is_err());
        }

        let domains = BrokerDomains::new().breaker(
            BreakerLayer::builder()
                .classify(FaultClassifier)
                .consecutive_failures(1),
        );
        let layer = domains.layer(&Arc::from("test")).expect("valid settings");
        let handle = layer.handle();
        let down = tower::service_fn(|_: Routed| async {
            Err::<(), _>(KafkaError::new(KafkaErrorKind::BrokerDown, None))
        });
        let mut service = layer.layer(down);
        for broker in [NO_LEADER, 1, 2] {
            fail(&mut service, broker).await;
        }
        assert_eq!(handle.counts().open_keys, 0, "nothing was refused yet");
        for broker in [NO_LEADER, 1, 2] {
            fail(&mut service, broker).await;
        }
        assert_eq!(
            handle.counts().open_keys,
            2,
            "brokers 1 and 2, not no-leader"
        );
        assert!(!handle.outage(), "two open brokers are within max_open (2)");
        fail(&mut service, 3).await;
        fail(&mut service, 3).await;
        assert!(
            handle.outage(),
            "a third open broker is the cluster's outage"
        );
    }
}
