//! Errors shared by every part of the crate.

use std::borrow::Cow;
use std::fmt;

/// A configuration was refused when it was built.
///
/// Every builder in tanker checks its values in `build()` and returns this error instead of
/// building something that would misbehave at run time. The message names the setting and says
/// what to change.
///
/// ```
/// use tanker::bulkhead::BulkheadLayer;
///
/// let err = BulkheadLayer::new(0).unwrap_err();
/// assert_eq!(err.setting(), "max_in_flight");
/// assert!(err.to_string().contains("at least 1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: Cow<'static, str>,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(setting: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            message: message.into(),
        }
    }

    /// The name of the builder method (or, for Kafka, of the librdkafka property) whose value
    /// was refused.
    pub fn setting(&self) -> &str {
        &self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}
