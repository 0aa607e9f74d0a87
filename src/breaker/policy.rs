//! When the breaker trips, how long it stays open, and how it probes: the checked settings.

use std::time::Duration;

use super::window::Totals;
use crate::ConfigError;

/// Why a breaker tripped (or tripped again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TripReason {
    /// [`consecutive_failures`](super::BreakerBuilder::consecutive_failures) failures in a row.
    ConsecutiveFailures,
    /// The window's share of failures reached the failure rate.
    FailureRate,
    /// The window's share of slow calls reached the slow-call rate.
    SlowCallRate,
    /// A probe failed (or was slow).
    ProbeFailed,
    /// A probe did not finish within the probe timeout.
    ProbeTimedOut,
}

impl TripReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ConsecutiveFailures => "consecutive failures",
            Self::FailureRate => "failure rate",
            Self::SlowCallRate => "slow-call rate",
            Self::ProbeFailed => "probe failed",
            Self::ProbeTimedOut => "probe timed out",
        }
    }
}

/// Slow-call detection: a call that takes at least `threshold` counts as slow.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SlowCalls {
    threshold: Duration,
    rate: f64,
}

/// The settings of a breaker, checked by [`Policy::check`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    consecutive_failures: Option<u32>,
    failure_rate: Option<f64>,
    window: Duration,
    buckets: u32,
    minimum_calls: u32,
    slow_calls: Option<SlowCalls>,
    open_for: Duration,
    backoff: f64,
    max_open_for: Duration,
    jitter: f64,
    probes: u32,
    probe_timeout: Duration,
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
            open_for: Duration::from_millis(500),
            backoff: 2.0,
            max_open_for: Duration::from_secs(1),
            jitter: 0.1,
            probes: 1,
            probe_timeout: Duration::from_secs(1),
        }
    }
}

/// The longest duration any setting keeps: longer ones are cut to it, as tokio's `sleep` cuts its
/// own. A hundred years is "never" for a breaker, and far enough from the end of `Instant`'s range
/// that adding it to the clock cannot overflow.
pub(crate) const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The narrowest bucket the window accepts.
const MIN_BUCKET: Duration = Duration::from_millis(1);
/// The most buckets the window accepts (memory is three words per bucket).
const MAX_BUCKETS: u32 = 1_000;

fn rate_ok(rate: f64) -> bool {
    rate > 0.0 && rate <= 1.0
}

impl Policy {
    /// Cuts every duration to [`LONGEST`], so that no sum with an instant can overflow later
    /// (`Duration::MAX` is a legal way to say "forever").
    pub(crate) fn clamp_durations(&mut self) {
        for duration in [
            &mut self.window,
            &mut self.open_for,
            &mut self.max_open_for,
            &mut self.probe_timeout,
        ] {
            *duration = (*duration).min(LONGEST);
        }
        if let Some(slow) = &mut self.slow_calls {
            slow.threshold = slow.threshold.min(LONGEST);
        }
    }

    /// At most `n` failures in a row (`None`: no such threshold).
    pub(crate) fn set_consecutive_failures(&mut self, n: Option<u32>) -> &mut Self {
        self.consecutive_failures = n;
        self
    }

    /// A failure rate over the window (`None`: no such threshold).
    pub(crate) fn set_failure_rate(&mut self, rate: Option<f64>) -> &mut Self {
        self.failure_rate = rate;
        self
    }

    /// The window's length and its number of buckets.
    pub(crate) fn set_window(&mut self, length: Duration, buckets: u32) -> &mut Self {
        self.window = length;
        self.buckets = buckets;
        self
    }

    /// The calls the window needs before a rate can trip the breaker.
    pub(crate) fn set_minimum_calls(&mut self, n: u32) -> &mut Self {
        self.minimum_calls = n;
        self
    }

    /// Slow-call detection: calls of at least `threshold`, tripping at `rate`.
    pub(crate) fn set_slow_calls(&mut self, threshold: Duration, rate: f64) -> &mut Self {
        self.slow_calls = Some(SlowCalls { threshold, rate });
        self
    }

    /// The first cool-down.
    pub(crate) fn set_open_for(&mut self, base: Duration) -> &mut Self {
        self.open_for = base;
        self
    }

    /// How each trip in a row grows the cool-down, and its cap.
    pub(crate) fn set_backoff(&mut self, multiplier: f64, max: Duration) -> &mut Self {
        self.backoff = multiplier;
        self.max_open_for = max;
        self
    }

    /// The share of each cool-down taken off at random.
    pub(crate) fn set_jitter(&mut self, fraction: f64) -> &mut Self {
        self.jitter = fraction;
        self
    }

    /// The probes a half-open breaker lets through, all of which must succeed.
    pub(crate) fn set_probes(&mut self, n: u32) -> &mut Self {
        self.probes = n;
        self
    }

    /// How long a probe may take before it counts as failed.
    pub(crate) fn set_probe_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.probe_timeout = timeout;
        self
    }

    /// Raises the cap of the cool-down to the first cool-down when it is below it (for a long
    /// cool-down with the default back-off, which would otherwise be refused).
    pub(crate) fn cap_at_least_open_for(&mut self) {
        self.max_open_for = self.max_open_for.max(self.open_for);
    }

    /// The window's length.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// The window's number of buckets.
    pub(crate) fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The duration from which a call counts as slow, if slow calls are detected.
    pub(crate) fn slow_threshold(&self) -> Option<Duration> {
        self.slow_calls.map(|slow| slow.threshold)
    }

    /// The most probes a half-open breaker lets through.
    pub(crate) fn probes(&self) -> u32 {
        self.probes
    }

    /// How long a probe may take before it counts as failed.
    pub(crate) fn probe_timeout(&self) -> Duration {
        self.probe_timeout
    }

    /// The cool-down after `trips` trips in a row (1 for the first): the first cool-down grown
    /// by the back-off, capped, then shortened by the jitter's share of `unit` (a number in
    /// `[0, 1)`, asked for only with jitter).
    pub(crate) fn cool_down(&self, trips: u32, unit: impl FnOnce() -> f64) -> Duration {
        let base = self.open_for.as_secs_f64();
        let exponent = trips.saturating_sub(1).min(1_000) as i32;
        let grown = (base * self.backoff.powi(exponent)).min(self.max_open_for.as_secs_f64());
        let jittered = if self.jitter > 0.0 {
            grown * (1.0 - self.jitter * unit())
        } else {
            grown
        };
        Duration::try_from_secs_f64(jittered)
            .unwrap_or(self.max_open_for)
            .min(self.max_open_for)
    }

    /// Whether a closed breaker must trip, given the failures in a row and the window's totals
    /// after a failure or a slow call. Consecutive failures come first: they need no minimum.
    /// The totals are asked for only when the consecutive failures do not decide.
    pub(crate) fn trip_reason(
        &self,
        consecutive: u32,
        totals: impl FnOnce() -> Totals,
    ) -> Option<TripReason> {
        if self.consecutive_failures.is_some_and(|n| consecutive >= n) {
            return Some(TripReason::ConsecutiveFailures);
        }
        let totals = totals();
        if totals.calls < u64::from(self.minimum_calls) {
            return None;
        }
        let reached = |count: u64, rate: f64| count as f64 >= rate * totals.calls as f64;
        if self
            .failure_rate
            .is_some_and(|rate| reached(totals.failures, rate))
        {
            Some(TripReason::FailureRate)
        } else if self
            .slow_calls
            .is_some_and(|slow| reached(totals.slow, slow.rate))
        {
            Some(TripReason::SlowCallRate)
        } else {
            None
        }
    }

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

    fn totals(calls: u64, failures: u64, slow: u64) -> Totals {
        Totals {
            calls,
            failures,
            slow,
        }
    }

    #[test]
    fn trip_reason_follows_each_threshold() {
        let p = Policy {
            slow_calls: Some(SlowCalls {
                threshold: Duration::from_secs(1),
                rate: 0.8,
            }),
            ..Policy::default()
        };
        assert_eq!(p.trip_reason(4, || totals(4, 4, 0)), None, "below both");
        assert_eq!(
            p.trip_reason(5, || totals(5, 5, 0)),
            Some(TripReason::ConsecutiveFailures),
            "no minimum for a run of failures"
        );
        assert_eq!(
            p.trip_reason(1, || totals(19, 19, 19)),
            None,
            "below minimum_calls"
        );
        assert_eq!(p.trip_reason(1, || totals(20, 9, 0)), None);
        assert_eq!(
            p.trip_reason(1, || totals(20, 10, 0)),
            Some(TripReason::FailureRate)
        );
        assert_eq!(
            p.trip_reason(0, || totals(20, 0, 16)),
            Some(TripReason::SlowCallRate)
        );
        assert_eq!(p.trip_reason(0, || totals(20, 0, 15)), None);
        let off = Policy {
            consecutive_failures: None,
            ..Policy::default()
        };
        assert_eq!(off.trip_reason(u32::MAX, || totals(1, 1, 0)), None);
    }

    #[test]
    fn clamps_endless_durations() {
        let mut p = Policy {
            window: Duration::MAX,
            open_for: Duration::MAX,
            max_open_for: Duration::MAX,
            probe_timeout: Duration::MAX,
            slow_calls: Some(SlowCalls {
                threshold: Duration::MAX,
                rate: 0.5,
            }),
            ..Policy::default()
        };
        p.clamp_durations();
        p.check().unwrap();
        assert_eq!(p.open_for, LONGEST);
        assert_eq!(p.slow_calls.unwrap().threshold, LONGEST);
        let now = tokio::time::Instant::now();
        let _ = now + p.open_for + p.probe_timeout + p.window;
    }

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
            ("backoff", |p| p.max_open_for = Duration::from_millis(400)),
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
