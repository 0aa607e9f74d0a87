//! The producer's configuration: defaults for non-critical writes, raw properties for the rest,
//! and secrets kept out of logs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError as RdKafkaError;

use super::service::KafkaService;
use crate::ConfigError;

/// Builds a [`KafkaService`]: a librdkafka producer with defaults for non-critical writes.
///
/// | property | default | why |
/// |---|---|---|
/// | `message.timeout.ms` | 5000 | a record that could not be delivered in 5 s fails, so the breaker sees the outage quickly; stats that old are rarely worth more |
/// | `queue.buffering.max.messages` | 100 000 | the local queue is bounded: beyond it, a write fails at once with `QueueFull` instead of blocking |
/// | `queue.buffering.max.kbytes` | 65 536 | bounds the queue's memory to 64 MiB whatever Kafka does |
/// | `linger.ms` | 5 | batches records for throughput at a small latency cost nobody waits for |
/// | `reconnect.backoff.ms` / `reconnect.backoff.max.ms` | 100 / 1000 | with librdkafka's 10 s maximum, a broker that comes back is noticed late and timeouts fire late |
/// | `socket.connection.setup.timeout.ms` | 5000 | a broker that black-holes connections is given up on in 5 s, not 30 |
/// | `request.timeout.ms` | 5000 | a frozen broker's requests time out with the records |
/// | `topic.metadata.propagation.max.ms` | 1000 | a record for a topic that does not exist fails as [`UnknownTopic`](super::KafkaErrorKind::UnknownTopic) (the caller's fault) within a second (half the message timeout if that is shorter), instead of waiting 30 s and failing as a timeout that would trip the breaker |
///
/// Any other librdkafka property can be set with [`set`](Self::set). The values of properties
/// that hold secrets (passwords, keys, OAuth secrets) are never shown by `Debug` nor copied into
/// errors or log events.
///
/// ```no_run
/// use std::time::Duration;
/// use tanker::kafka::KafkaConfig;
///
/// let kafka = KafkaConfig::new("127.0.0.1:9092")
///     .message_timeout(Duration::from_secs(2))
///     .set("compression.type", "lz4")
///     .set("sasl.password", "hunter2")
///     .build()?;
/// assert!(!format!("{kafka:?}").contains("hunter2"));
/// # Ok::<_, tanker::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct KafkaConfig {
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) name: Arc<str>,
}

const DEFAULTS: &[(&str, &str)] = &[
    ("message.timeout.ms", "5000"),
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "65536"),
    ("linger.ms", "5"),
    ("reconnect.backoff.ms", "100"),
    ("reconnect.backoff.max.ms", "1000"),
    ("socket.connection.setup.timeout.ms", "5000"),
    ("request.timeout.ms", "5000"),
    (PROPAGATION, "1000"),
];

const PROPAGATION: &str = "topic.metadata.propagation.max.ms";
const DEFAULT_PROPAGATION_MS: u64 = 1000;

/// Whether a property's value is a secret that must not be shown.
pub(crate) fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.contains("sasl.oauthbearer.config")
        || key.contains("sasl.jaas.config")
        || key.contains("sasl.kerberos.keytab")
        || key == "ssl.key.pem"
        || key.ends_with(".key.pem")
        || key.contains("token")
}

const REDACTED: &str = "[redacted]";

impl KafkaConfig {
    /// A producer for the cluster at `bootstrap_servers` (`host:port[,host:port...]`), with the
    /// defaults above.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        let mut properties: BTreeMap<String, String> = DEFAULTS
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        properties.insert("bootstrap.servers".to_owned(), bootstrap_servers.into());
        Self {
            properties,
            name: Arc::from("kafka"),
        }
    }

    /// Names this producer: the `producer` field of its log events, the `producer` label of its
    /// metrics (see [`crate::metrics`]) and its librdkafka `client.id`. Default: `kafka`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets any librdkafka property (see librdkafka's `CONFIGURATION.md`). Checked by
    /// [`build`](Self::build).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// How long a record may wait for delivery before it fails with
    /// [`MessageTimedOut`](super::KafkaErrorKind::MessageTimedOut) (`message.timeout.ms`).
    pub fn message_timeout(self, timeout: Duration) -> Self {
        let ms = timeout.as_millis().to_string();
        self.set("message.timeout.ms", ms)
    }

    /// The most records waiting in the producer's local queue (`queue.buffering.max.messages`).
    /// Beyond it, writes fail at once with [`QueueFull`](super::KafkaErrorKind::QueueFull).
    pub fn queue_capacity(self, records: usize) -> Self {
        self.set("queue.buffering.max.messages", records.to_string())
    }

    /// How long the producer waits to fill a batch (`linger.ms`).
    pub fn linger(self, linger: Duration) -> Self {
        let ms = linger.as_millis().to_string();
        self.set("linger.ms", ms)
    }

    /// The longest wait between reconnection attempts (`reconnect.backoff.max.ms`).
    pub fn reconnect_backoff_max(self, backoff: Duration) -> Self {
        let ms = backoff.as_millis().to_string();
        self.set("reconnect.backoff.max.ms", ms)
    }

    /// The value of a property, or `None` if it is unset or holds a secret.
    pub fn get(&self, key: &str) -> Option<&str> {
        if is_secret(key) {
            return None;
        }
        self.properties.get(key).map(String::as_str)
    }

    /// Checks the properties with librdkafka and creates the producer.
    ///
    /// Must be called within a tokio runtime only if you use the service there; creating the
    /// producer does not block on the network (connections are made in the background).
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] naming the property librdkafka refused (unknown property, bad
    /// value, or inconsistent values such as `linger.ms` above `message.timeout.ms`), with
    /// librdkafka's reason; secret values are redacted from it.
    pub fn build(self) -> Result<KafkaService, ConfigError> {
        KafkaService::from_config(self)
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        // An unknown topic must fail as such before the record times out; keep the default
        // propagation wait below a short message timeout unless it was set by hand.
        let millis = |key: &str| self.properties.get(key).and_then(|v| v.parse::<u64>().ok());
        if let (Some(timeout), Some(propagation)) =
            (millis("message.timeout.ms"), millis(PROPAGATION))
        {
            if propagation == DEFAULT_PROPAGATION_MS && propagation * 2 > timeout {
                config.set(PROPAGATION, (timeout / 2).max(1).to_string());
            }
        }
        if !self.properties.contains_key("client.id") {
            config.set("client.id", &*self.name);
        }
        config.set_log_level(RDKafkaLogLevel::Warning);
        config
    }

    /// Turns librdkafka's refusal into a [`ConfigError`] that names the property, with every
    /// secret value taken out.
    pub(crate) fn refusal(&self, error: &RdKafkaError) -> ConfigError {
        let mut message = match error {
            RdKafkaError::ClientCreation(message) => message.clone(),
            other => other.to_string(),
        };
        for (key, value) in &self.properties {
            if is_secret(key) && !value.is_empty() {
                message = message.replace(value.as_str(), REDACTED);
            }
        }
        let property = self
            .properties
            .keys()
            .filter(|key| message.contains(&format!("\"{key}\"")) || message.contains(key.as_str()))
            .max_by_key(|key| key.len())
            .cloned()
            .unwrap_or_else(|| "properties".to_owned());
        ConfigError::new(property, message)
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret(k) { REDACTED } else { v.as_str() };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("name", &self.name)
            .field("properties", &shown)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let config = KafkaConfig::new("127.0.0.1:9092")
            .set("sasl.password", "hunter2")
            .set("ssl.key.password", "s3cret-key")
            .set("sasl.oauthbearer.client.secret", "oauth-secret")
            .set("ssl.key.pem", "-----BEGIN PRIVATE KEY-----");
        let shown = format!("{config:?}");
        for secret in ["hunter2", "s3cret-key", "oauth-secret", "BEGIN PRIVATE KEY"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains("sasl.password"));
        assert!(shown.contains("127.0.0.1:9092"));
        assert_eq!(config.get("sasl.password"), None);
        assert_eq!(config.get("linger.ms"), Some("5"));
    }

    #[test]
    fn refusals_name_the_property_and_hide_secrets() {
        let config = KafkaConfig::new("127.0.0.1:9092").set("sasl.password", "hunter2");
        let error = RdKafkaError::ClientCreation(
            "Invalid value \"hunter2\" for configuration property \"sasl.password\"".to_owned(),
        );
        let refusal = config.refusal(&error);
        assert_eq!(refusal.setting(), "sasl.password");
        assert!(!refusal.to_string().contains("hunter2"), "{refusal}");
    }
}
