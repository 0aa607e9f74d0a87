//! Raw rdkafka, fire-and-forget: a producer with the same librdkafka properties as tanker's
//! [`KafkaConfig`], and a context that counts its delivery reports. Shared by the incident demo
//! and its test (and written so that any other comparison with raw rdkafka can include it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::message::DeliveryResult;
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

/// Delivery reports, counted.
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// A producer context that counts each delivery report. Counting is the measurement, not
/// error handling: whoever sends ignores every error.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counting(pub(crate) Arc<Deliveries>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = match result {
            Ok(_) => &self.0.delivered,
            Err(_) => &self.0.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
