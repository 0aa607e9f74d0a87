//! Raw rdkafka, fire-and-forget: a producer with the same librdkafka properties as tanker's
//! [`KafkaConfig`], and a context that counts its delivery reports. Shared by the incident demo
//! and its test (and written so that any other comparison with raw rdkafka can include it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::ProducerContext;
use rdkafka::ClientContext;
use tanker::kafka::KafkaConfig;

/// The librdkafka properties `KafkaConfig` sets by default, read back with `KafkaConfig::get`
/// so that the raw producer cannot drift from tanker's values.
pub(crate) const PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "message.timeout.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "linger.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "socket.connection.setup.timeout.ms",
    "request.timeout.ms",
    "topic.metadata.propagation.max.ms",
];

/// A raw producer's configuration with `tanker`'s values of [`PROPERTIES`].
pub(crate) fn client_config(tanker: &KafkaConfig, client_id: &str) -> Result<ClientConfig, String> {
    let mut config = ClientConfig::new();
    for &key in PROPERTIES {
        let value = tanker
            .get(key)
            .ok_or_else(|| format!("KafkaConfig has no value for `{key}`"))?;
        config.set(key, value);
    }
    config.set("client.id", client_id);
    config.set_log_level(RDKafkaLogLevel::Error);
    Ok(config)
}

/// The partitions [`Deliveries`] counts one by one; deliveries to others count in the totals
/// only.
pub(crate) const TALLIED_PARTITIONS: usize = 16;

/// Delivery reports, counted, in all and per partition (all records, and those with a key).
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) by_partition: [AtomicU64; TALLIED_PARTITIONS],
    pub(crate) keyed_by_partition: [AtomicU64; TALLIED_PARTITIONS],
}

impl Deliveries {
    /// Counts one delivery report: delivered to `partition` (a record with a key or not), or
    /// failed.
    #[allow(dead_code)] // the incident demo counts totals only
    pub(crate) fn count(&self, delivered: Option<(i32, bool)>) {
        let Some((partition, keyed)) = delivered else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = usize::try_from(partition)
            .ok()
            .filter(|&p| p < TALLIED_PARTITIONS)
        {
            self.by_partition[slot].fetch_add(1, Ordering::Relaxed);
            if keyed {
                self.keyed_by_partition[slot].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records delivered to `partitions` so far (all, or only those with a key).
    #[allow(dead_code)] // the incident demo counts totals only
    pub(crate) fn to_partitions(&self, partitions: impl Iterator<Item = i32>, keyed: bool) -> u64 {
        let counts = if keyed {
            &self.keyed_by_partition
        } else {
            &self.by_partition
        };
        partitions
            .filter_map(|p| counts.get(usize::try_from(p).ok()?))
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }
}

/// A producer context that counts each delivery report. Counting is the measurement, not
/// error handling: whoever sends ignores every error.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counting(pub(crate) Arc<Deliveries>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let delivered = result
            .as_ref()
            .ok()
            .map(|message| (message.partition(), message.key().is_some()));
        self.0.count(delivered);
    }
}
