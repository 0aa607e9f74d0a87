//! When the breaker trips, how long it stays open, and how it probes: the checked settings.

use std::time::Duration;

use crate::ConfigError;

/// Slow-call detection: a call that takes at least `threshold` counts as slow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SlowCalls {
    pub(crate) threshold: Duration,
    pub(crate) rate: f64,
}

/// The settings of a breaker, checked by [`Policy::check`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) window: Duration,
    pub(crate) buckets: u32,
    pub(crate) minimum_calls: u32,
    pub(crate) slow_calls: Option<SlowCalls>,
    pub(crate) open_for: Duration,
    pub(crate) backoff: f64,
    pub(crate) max_open_for: Duration,
    pub(crate) jitter: f64,
    pub(crate) probes: u32,
    pub(crate) probe_timeout: Duration,
}

impl Default for Policy {
    /// The defaults of [`BreakerBuilder`](super::BreakerBuilder); its docs give the reasons.
    fn default() -> Self {
        Self {
            consecutive_failures: Some(5),
            failure_rate: Some(0.5),
            window: Duration::from_secs(10),
            buckets: 10,
            minimum_calls: 20,
            slow_calls: None,
            open_for: Duration::from_secs(5),
            backoff: 2.0,
            max_open_for: Duration::from_secs(60),
            jitter: 0.1,
            probes: 1,
            probe_timeout: Duration::from_secs(10),
        }
    }
}

/// The narrowest bucket the window accepts.
const MIN_BUCKET: Duration = Duration::from_millis(1);
/// The most buckets the window accepts (memory is three words per bucket).
const MAX_BUCKETS: u32 = 1_000;

fn rate_ok(rate: f64) -> bool {
    rate > 0.0 && rate <= 1.0
}

impl Policy {
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1; call `no_consecutive_failures()` to turn it off",
            ));
        }
        if let Some(rate) = self.failure_rate {
            if !rate_ok(rate) {
                return Err(ConfigError::new(
                    "failure_rate",
                    format!(
                        "must be above 0 and at most 1 (got {rate}); 0.5 trips when half the calls fail"
                    ),
                ));
            }
        }
        if let Some(slow) = self.slow_calls {
            if slow.threshold.is_zero() {
                return Err(ConfigError::new(
                    "slow_calls",
                    "the threshold must be longer than zero; every call would be slow",
                ));
            }
            if !rate_ok(slow.rate) {
                return Err(ConfigError::new(
                    "slow_calls",
                    format!("the rate must be above 0 and at most 1 (got {})", slow.rate),
                ));
            }
        }
        if self.consecutive_failures.is_none()
            && self.failure_rate.is_none()
            && self.slow_calls.is_none()
        {
            return Err(ConfigError::new(
                "failure_rate",
                "every trip condition is turned off, so the breaker could never open; set \
                 consecutive_failures, failure_rate or slow_calls",
            ));
        }
        if self.buckets == 0 || self.buckets > MAX_BUCKETS {
            return Err(ConfigError::new(
                "window",
                format!(
                    "the number of buckets must be 1 to {MAX_BUCKETS} (got {})",
                    self.buckets
                ),
            ));
        }
        if self.window.is_zero() || self.window / self.buckets < MIN_BUCKET {
            return Err(ConfigError::new(
                "window",
                format!(
                    "each bucket must span at least 1ms (got a {:?} window in {} buckets); widen \
                     the window or use fewer buckets",
                    self.window, self.buckets
                ),
            ));
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new(
                "minimum_calls",
                "must be at least 1 so that one failed call cannot make a 100% failure rate",
            ));
        }
        if self.open_for.is_zero() {
            return Err(ConfigError::new(
                "open_for",
                "must be longer than zero: an open breaker needs a cool-down before it probes",
            ));
        }
        if !(self.backoff >= 1.0 && self.backoff.is_finite()) {
            return Err(ConfigError::new(
                "backoff",
                format!(
                    "the multiplier must be a finite number of at least 1 (got {}); use 1 for a \
                     constant cool-down",
                    self.backoff
                ),
            ));
        }
        if self.max_open_for < self.open_for {
            return Err(ConfigError::new(
                "backoff",
                format!(
                    "the cap ({:?}) is below the base cool-down ({:?}); raise the cap or lower \
                     open_for",
                    self.max_open_for, self.open_for
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(ConfigError::new(
                "jitter",
                format!(
                    "must be at least 0 and below 1 (got {}); 0.1 shortens each cool-down by up \
                     to 10%",
                    self.jitter
                ),
            ));
        }
        if self.probes == 0 {
            return Err(ConfigError::new(
                "probes",
                "must be at least 1: a half-open breaker closes only after a probe succeeds",
            ));
        }
        if self.probe_timeout.is_zero() {
            return Err(ConfigError::new(
                "probe_timeout",
                "must be longer than zero: probes need time to finish",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Policy::default().check().unwrap();
    }

    #[test]
    fn refuses_each_bad_setting_by_name() {
        type Spoil = fn(&mut Policy);
        let cases: Vec<(&str, Spoil)> = vec![
            ("consecutive_failures", |p| p.consecutive_failures = Some(0)),
            ("failure_rate", |p| p.failure_rate = Some(0.0)),
            ("failure_rate", |p| p.failure_rate = Some(1.5)),
            ("failure_rate", |p| p.failure_rate = Some(f64::NAN)),
            ("slow_calls", |p| {
                p.slow_calls = Some(SlowCalls {
                    threshold: Duration::ZERO,
                    rate: 0.5,
                })
            }),
            ("slow_calls", |p| {
                p.slow_calls = Some(SlowCalls {
                    threshold: Duration::from_secs(1),
                    rate: -1.0,
                })
            }),
            ("failure_rate", |p| {
                p.consecutive_failures = None;
                p.failure_rate = None;
            }),
            ("window", |p| p.window = Duration::ZERO),
            ("window", |p| p.buckets = 0),
            ("window", |p| p.buckets = 5_000),
            ("window", |p| {
                p.window = Duration::from_millis(5);
                p.buckets = 10;
            }),
            ("minimum_calls", |p| p.minimum_calls = 0),
            ("open_for", |p| p.open_for = Duration::ZERO),
            ("backoff", |p| p.backoff = 0.5),
            ("backoff", |p| p.backoff = f64::INFINITY),
            ("backoff", |p| p.max_open_for = Duration::from_secs(1)),
            ("jitter", |p| p.jitter = 1.0),
            ("jitter", |p| p.jitter = -0.1),
            ("probes", |p| p.probes = 0),
            ("probe_timeout", |p| p.probe_timeout = Duration::ZERO),
        ];
        for (setting, spoil) in cases {
            let mut policy = Policy::default();
            spoil(&mut policy);
            let err = policy.check().expect_err(setting);
            assert_eq!(err.setting(), setting, "{err}");
        }
    }
}
