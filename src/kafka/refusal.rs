//! librdkafka's refusal of a configuration, explained: the property named as it was set, what
//! to change, and no secret value shown.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::types::RDKafkaConfRes;

use crate::ConfigError;

/// Whether a property's value is a secret that must not be shown.
pub(super) fn is_secret(key: &str) -> bool {
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

/// What `Debug` and errors show instead of a secret value.
pub(super) const REDACTED: &str = "[redacted]";

/// Where librdkafka lists its properties, their types and their ranges.
const PROPERTIES_LIST: &str =
    "https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md";

/// Turns librdkafka's refusal of `properties` into a [`ConfigError`] that names the property as
/// it was set and says what to change, with every secret value taken out.
pub(super) fn explain(error: &RdKafkaError, properties: &BTreeMap<String, String>) -> ConfigError {
    if let RdKafkaError::ClientConfig(result, description, key, value) = error {
        match result {
            RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN => {
                return ConfigError::new(
                    key.clone(),
                    format!(
                        "unknown librdkafka property `{key}`; the properties a producer \
                         takes are listed in librdkafka's CONFIGURATION.md \
                         ({PROPERTIES_LIST})"
                    ),
                );
            }
            RDKafkaConfRes::RD_KAFKA_CONF_INVALID => {
                let shown = if is_secret(key) { REDACTED } else { value };
                let expected = expected_value(key, description);
                return ConfigError::new(
                    key.clone(),
                    format!(
                        "librdkafka refuses the value `{shown}` for `{key}`: expected \
                         {expected} (see librdkafka's CONFIGURATION.md, {PROPERTIES_LIST})"
                    ),
                );
            }
            RDKafkaConfRes::RD_KAFKA_CONF_OK => {}
        }
    }
    let mut message = match error {
        RdKafkaError::ClientCreation(message) => message.clone(),
        other => other.to_string(),
    };
    for (key, value) in properties {
        if is_secret(key) && !value.is_empty() {
            message = message.replace(value.as_str(), REDACTED);
        }
    }
    let property = properties
        .keys()
        .filter(|key| message.contains(&format!("\"{key}\"")) || message.contains(key.as_str()))
        .max_by_key(|key| key.len())
        .cloned()
        .unwrap_or_else(|| "properties".to_owned());
    ConfigError::new(property, message)
}

/// What librdkafka expects for `key`, from its description of a refusal, or found by trying a
/// value no property takes: a range for a number, `true or false` for a flag, or one of the
/// listed values for the rest.
fn expected_value(key: &str, description: &str) -> String {
    let range = |text: &str| {
        text.split_once("allowed range ")
            .map(|(_, range)| range.trim().to_owned())
    };
    if let Some(range) = range(description) {
        return format!("a number in {range}");
    }
    if description.contains("Expected bool") {
        return "`true` or `false`".to_owned();
    }
    // Building a native configuration checks values without creating a client.
    let probe = ClientConfig::new()
        .set(key, "-999999999999999")
        .create_native_config();
    match probe {
        Err(RdKafkaError::ClientConfig(_, probed, _, _)) => {
            if let Some(range) = range(&probed) {
                format!("a number in {range}")
            } else if probed.contains("Expected bool") {
                "`true` or `false`".to_owned()
            } else {
                "one of the values librdkafka lists for it".to_owned()
            }
        }
        _ => "a value of the form librdkafka lists for it".to_owned(),
    }
}
