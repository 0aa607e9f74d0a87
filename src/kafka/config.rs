//! The producer's configuration: defaults for non-critical writes, raw properties for the rest,
//! and secrets kept out of logs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError as RdKafkaError;

use super::domains::BrokerDomains;
use super::leaders::Leaders;
use super::refusal::{self, is_secret, REDACTED};
use super::service::KafkaService;
use crate::ConfigError;

/// Builds a [`KafkaService`]: a librdkafka producer with defaults for non-critical writes.
///
/// Made by [`KafkaService::builder`], as the layers' builders are made by
/// `BreakerLayer::builder()` and `BulkheadLayer::builder()`.
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
/// | `statistics.interval.ms` | 200, with the per-broker domains (see [`BrokerDomains`]) | the leaders and broker states they route by come from these reports; parsing one costs 64 µs (6 partitions) to 376 µs (100 partitions), 0.2 % or less of librdkafka's polling thread |
/// | `topic.metadata.propagation.max.ms` | 1000 | a record for a topic that does not exist fails as [`UnknownTopic`](super::KafkaErrorKind::UnknownTopic) (the caller's fault) within a second (half the message timeout if that is shorter), instead of waiting 30 s and failing as a timeout that would trip the breaker |
///
/// Any other librdkafka property can be set with [`set`](Self::set). The values of properties
/// that hold secrets (passwords, keys, OAuth secrets) are never shown by `Debug` nor copied into
/// errors or log events.
///
/// ```no_run
/// use std::time::Duration;
/// use tanker::kafka::KafkaService;
///
/// let kafka = KafkaService::builder("127.0.0.1:9092")
///     .message_timeout(Duration::from_secs(2))
///     .set("compression.type", "lz4")
///     .set("sasl.password", "hunter2")
///     .build()?;
/// assert!(!format!("{kafka:?}").contains("hunter2"));
/// # Ok::<_, tanker::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct KafkaConfig {
    properties: BTreeMap<String, String>,
    name: Arc<str>,
    /// One compartment and breaker per broker; `None` when turned off.
    domains: Option<BrokerDomains>,
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

const BOOTSTRAP: &str = "bootstrap.servers";
const MESSAGE_TIMEOUT: &str = "message.timeout.ms";
const QUEUE_CAPACITY: &str = "queue.buffering.max.messages";
const STATISTICS: &str = "statistics.interval.ms";
const LINGER: &str = "linger.ms";
const PARTITIONER: &str = "partitioner";
/// librdkafka's default partitioner, the only one whose key mapping the leaf reproduces.
const DEFAULT_PARTITIONER: &str = "consistent_random";

impl KafkaConfig {
    /// A producer for the cluster at `bootstrap_servers` (`host:port[,host:port...]`), with the
    /// defaults above: see [`KafkaService::builder`].
    fn new(bootstrap_servers: impl Into<String>) -> Self {
        let mut properties: BTreeMap<String, String> = DEFAULTS
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        properties.insert("bootstrap.servers".to_owned(), bootstrap_servers.into());
        Self {
            properties,
            name: Arc::from("kafka"),
            domains: Some(BrokerDomains::new()),
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

    /// The per-broker failure domains: one compartment and one breaker per broker, records
    /// routed by their partition's leader (see [`BrokerDomains`]). On by default, with
    /// [`BrokerDomains::new`]'s settings.
    pub fn broker_domains(mut self, domains: BrokerDomains) -> Self {
        self.domains = Some(domains);
        self
    }

    /// Turns the per-broker failure domains off: every record goes to librdkafka as it comes,
    /// and its partitioner chooses. Put a breaker and a bulkhead of your own above the service
    /// then, as for any dependency.
    pub fn no_broker_domains(mut self) -> Self {
        self.domains = None;
        self
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
    /// Returns a [`ConfigError`] naming the property, as it was set, and saying what to change:
    ///
    /// - settings that would silently break the promises of the stack above: an empty
    ///   `bootstrap.servers` (every record would time out as Kafka's fault and trip the
    ///   breaker), a `message.timeout.ms` of 0 (no timeout at all in librdkafka: a record would
    ///   wait forever) and a `queue.buffering.max.messages` of 0;
    /// - a property librdkafka does not know, with a pointer to its list of properties;
    /// - a value librdkafka refuses, with the type or range it expects;
    /// - values librdkafka finds inconsistent (such as `linger.ms` above `message.timeout.ms`),
    ///   with its reason.
    ///
    /// Secret values (passwords, keys) never appear in the error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tanker::kafka::KafkaService;
    ///
    /// let err = KafkaService::builder("127.0.0.1:9092")
    ///     .message_timeout(Duration::ZERO)
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.setting(), "message.timeout.ms");
    ///
    /// let err = KafkaService::builder("127.0.0.1:9092").set("lingr.ms", "5").build().unwrap_err();
    /// assert!(err.to_string().contains("unknown librdkafka property `lingr.ms`"));
    /// ```
    pub fn build(self) -> Result<KafkaService, ConfigError> {
        self.check()?;
        let mut client = self.client_config();
        let domains = match &self.domains {
            Some(domains) => {
                let layer = domains.layer(&self.name)?;
                if !self.properties.contains_key(STATISTICS) {
                    client.set(STATISTICS, domains.statistics_ms());
                }
                let leaders = Arc::new(Leaders::new(domains.stall_threshold()));
                let by_key = self
                    .properties
                    .get(PARTITIONER)
                    .is_none_or(|p| p.trim() == DEFAULT_PARTITIONER);
                Some((layer, leaders, by_key))
            }
            None => None,
        };
        KafkaService::start(&client, self.name.clone(), domains)
            .map_err(|error| self.refusal(&error))
    }

    /// Refuses the settings librdkafka accepts but that break tanker's promises.
    fn check(&self) -> Result<(), ConfigError> {
        let value = |key: &str| self.properties.get(key).map(|v| v.trim());
        let brokers = value(BOOTSTRAP).unwrap_or("");
        if brokers.split(',').all(|broker| broker.trim().is_empty()) {
            return Err(ConfigError::new(
                BOOTSTRAP,
                "the list of brokers is empty: give at least one `host:port` to \
                 `KafkaService::builder`, e.g. `KafkaService::builder(\"127.0.0.1:9092\")`; without one, \
                 every record would time out as Kafka's fault and trip the breaker",
            ));
        }
        if value(MESSAGE_TIMEOUT) == Some("0") {
            return Err(ConfigError::new(
                MESSAGE_TIMEOUT,
                "must be between 1 and 2147483647 ms: 0 means no timeout at all in librdkafka, \
                 so a record would wait forever and the breaker would never see Kafka fail; \
                 set `message_timeout` to how long a record may wait (default 5 s)",
            ));
        }
        if self.domains.is_some() && value(STATISTICS) == Some("0") {
            return Err(ConfigError::new(
                STATISTICS,
                "must be above 0 with per-broker domains: the producer learns each partition's \
                 leader and each broker's state from librdkafka's statistics; remove the \
                 property (the domains set it), or call `no_broker_domains()`",
            ));
        }
        if let Some(domains) = &self.domains {
            // `queue.buffering.max.ms` is librdkafka's other name for `linger.ms`; set after it
            // (the properties are set in order of their names), it wins.
            let linger = value("queue.buffering.max.ms").or_else(|| value(LINGER));
            if let Some(linger_ms) = linger.and_then(|ms| ms.parse::<f64>().ok()) {
                domains.check_linger(linger_ms)?;
            }
        }
        if value(QUEUE_CAPACITY) == Some("0") {
            return Err(ConfigError::new(
                QUEUE_CAPACITY,
                "must be between 1 and 2147483647 records: with no room in the local queue, \
                 every write would fail; set `queue_capacity` to at least 1 (default 100 000)",
            ));
        }
        Ok(())
    }

    /// librdkafka's configuration: the properties, the propagation wait kept below a short
    /// message timeout, the name as `client.id` unless set, and librdkafka's log level.
    fn client_config(&self) -> ClientConfig {
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

    /// librdkafka's refusal of these properties, as a [`ConfigError`] that names the property
    /// as it was set and says what to change, with every secret value taken out.
    fn refusal(&self, error: &RdKafkaError) -> ConfigError {
        refusal::explain(error, &self.properties)
    }
}

impl KafkaService {
    /// The builder of a producer for the cluster at `bootstrap_servers`
    /// (`host:port[,host:port...]`): a [`KafkaConfig`] with the defaults of its table. The
    /// one entry point, as the layers' `BreakerLayer::builder()` and
    /// `BulkheadLayer::builder()`.
    ///
    /// ```no_run
    /// use tanker::kafka::KafkaService;
    ///
    /// let kafka = KafkaService::builder("127.0.0.1:9092").name("stats").build()?;
    /// # Ok::<_, tanker::ConfigError>(())
    /// ```
    pub fn builder(bootstrap_servers: impl Into<String>) -> KafkaConfig {
        KafkaConfig::new(bootstrap_servers)
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
            .field("domains", &self.domains)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaConfRes;

    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let config = KafkaService::builder("127.0.0.1:9092")
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
        let config = KafkaService::builder("127.0.0.1:9092").set("sasl.password", "hunter2");
        let error = RdKafkaError::ClientCreation(
            "Invalid value \"hunter2\" for configuration property \"sasl.password\"".to_owned(),
        );
        let refusal = config.refusal(&error);
        assert_eq!(refusal.setting(), "sasl.password");
        assert!(!refusal.to_string().contains("hunter2"), "{refusal}");
    }

    fn refused(config: KafkaConfig) -> ConfigError {
        config.build().expect_err("refused")
    }

    #[test]
    fn an_empty_bootstrap_list_is_refused() {
        for brokers in ["", " ", ",", " , "] {
            let error = refused(KafkaService::builder(brokers));
            assert_eq!(error.setting(), "bootstrap.servers", "{error}");
            assert!(
                error.to_string().contains("at least one `host:port`"),
                "{error}"
            );
        }
        let error = refused(KafkaService::builder("127.0.0.1:9092").set("bootstrap.servers", ""));
        assert_eq!(error.setting(), "bootstrap.servers");
    }

    #[test]
    fn a_message_timeout_of_zero_is_refused() {
        for config in [
            KafkaService::builder("127.0.0.1:9092").message_timeout(Duration::ZERO),
            KafkaService::builder("127.0.0.1:9092").message_timeout(Duration::from_micros(999)),
            KafkaService::builder("127.0.0.1:9092").set("message.timeout.ms", "0"),
        ] {
            let error = refused(config);
            assert_eq!(error.setting(), "message.timeout.ms", "{error}");
            let text = error.to_string();
            assert!(text.contains("between 1 and"), "{text}");
            assert!(text.contains("no timeout at all"), "{text}");
        }
    }

    #[test]
    fn a_queue_capacity_of_zero_is_refused() {
        let error = refused(KafkaService::builder("127.0.0.1:9092").queue_capacity(0));
        assert_eq!(error.setting(), "queue.buffering.max.messages", "{error}");
        assert!(error.to_string().contains("at least 1"), "{error}");
    }

    #[test]
    fn a_stall_threshold_the_linger_reaches_is_refused() {
        let stall = |ms| BrokerDomains::new().stall_after(Duration::from_millis(ms));
        for config in [
            KafkaConfig::new("127.0.0.1:9092")
                .linger(Duration::from_millis(500))
                .broker_domains(stall(500)),
            KafkaConfig::new("127.0.0.1:9092")
                .set("queue.buffering.max.ms", "1000")
                .broker_domains(stall(800)),
            KafkaConfig::new("127.0.0.1:9092").set("linger.ms", "600.5"),
        ] {
            let error = refused(config);
            assert_eq!(error.setting(), "stall_after", "{error}");
            assert!(
                error.to_string().contains("longer than `linger.ms`"),
                "{error}"
            );
        }
        // Without the domains, nothing stalls: any linger goes.
        let plain = KafkaConfig::new("127.0.0.1:9092")
            .linger(Duration::from_secs(1))
            .no_broker_domains()
            .build();
        assert!(plain.is_ok(), "{plain:?}");
    }

    #[test]
    fn an_unknown_property_is_named_with_a_pointer_to_the_list() {
        let error = refused(KafkaService::builder("127.0.0.1:9092").set("lingr.ms", "5"));
        assert_eq!(error.setting(), "lingr.ms");
        let text = error.to_string();
        assert!(
            text.contains("unknown librdkafka property `lingr.ms`"),
            "{text}"
        );
        assert!(text.contains("CONFIGURATION.md"), "{text}");
        assert_eq!(
            text.matches("lingr.ms").count(),
            2,
            "said once, not repeated: {text}"
        );
    }

    #[test]
    fn a_bad_value_names_the_property_as_set_and_the_expected_type() {
        // `linger.ms` is an alias of `queue.buffering.max.ms`: the error names what was set.
        for (value, expected) in [
            ("-5", "a number in 0..900000"),
            ("soon", "a number in 0..900000"),
        ] {
            let error = refused(KafkaService::builder("127.0.0.1:9092").set("linger.ms", value));
            assert_eq!(error.setting(), "linger.ms", "{error}");
            let text = error.to_string();
            assert!(
                text.contains(&format!("`{value}` for `linger.ms`")),
                "{text}"
            );
            assert!(text.contains(expected), "{text}");
            assert!(!text.contains("queue.buffering.max.ms"), "{text}");
        }
        let error =
            refused(KafkaService::builder("127.0.0.1:9092").set("enable.idempotence", "maybe"));
        assert_eq!(error.setting(), "enable.idempotence");
        assert!(error.to_string().contains("`true` or `false`"), "{error}");

        let error = refused(KafkaService::builder("127.0.0.1:9092").set("compression.type", "zip"));
        assert_eq!(error.setting(), "compression.type");
        let text = error.to_string();
        assert!(
            text.contains("one of the values librdkafka lists"),
            "{text}"
        );
        assert!(!text.contains("compression.codec"), "{text}");
    }

    #[test]
    fn secrets_never_reach_errors() {
        const SECRET: &str = "hunter2-correct-horse";
        // A secret property with a value librdkafka refuses.
        let error = refused(
            KafkaService::builder("127.0.0.1:9092")
                .set("ssl.key.password", SECRET)
                .set("linger.ms", "-1"),
        );
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        for config in [
            KafkaService::builder("").set("sasl.password", SECRET),
            KafkaService::builder("127.0.0.1:9092")
                .set("sasl.password", SECRET)
                .queue_capacity(0),
            KafkaService::builder("127.0.0.1:9092")
                .set("sasl.password", SECRET)
                .set("nope", "1"),
        ] {
            let error = refused(config);
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains(SECRET), "{shown}");
        }
        // A secret that is itself the refused value.
        let error = RdKafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            format!("Invalid value \"{SECRET}\" for configuration property \"sasl.mechanism\""),
            "sasl.password".to_owned(),
            SECRET.to_owned(),
        );
        let refusal = KafkaService::builder("127.0.0.1:9092").refusal(&error);
        assert!(
            !format!("{refusal} {refusal:?}").contains(SECRET),
            "{refusal}"
        );
    }
}
