//! One clock origin: an instant as the nanoseconds after it, so that a time fits in an atomic
//! word.
//!
//! The breaker's cool-down and sliding window and the log throttle keep their times as `u64`
//! nanoseconds after an [`Origin`] taken when they are built, so that deciding "is it time yet"
//! is one atomic load and a compare, without a lock. Times come from `tokio::time`, so they
//! follow a test's paused clock.

use std::time::Duration;

use tokio::time::Instant;

/// The instant that times are counted from, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin(Instant);

impl Origin {
    /// An origin at tokio's now: the paused clock's in a test whose time is paused.
    pub(crate) fn now() -> Self {
        Self(Instant::now())
    }

    /// An origin at the real clock's now, even on a runtime whose time is paused or advanced:
    /// for times read on threads outside tokio (librdkafka's), which see the real clock.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // only the Kafka leaf uses it so far
    pub(crate) fn real_time() -> Self {
        Self(Instant::from_std(std::time::Instant::now()))
    }

    /// The origin itself.
    pub(crate) fn instant(self) -> Instant {
        self.0
    }

    /// `at` as nanoseconds after the origin: 0 for an instant before it, `u64::MAX` for one more
    /// than 584 years after it.
    #[inline]
    pub(crate) fn nanos(self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.0))
    }

    /// Nanoseconds since the origin, by tokio's clock.
    #[inline]
    pub(crate) fn elapsed(self) -> u64 {
        self.nanos(Instant::now())
    }

    /// The instant `nanos` nanoseconds after the origin.
    pub(crate) fn at(self, nanos: u64) -> Instant {
        self.0 + Duration::from_nanos(nanos)
    }
}

/// `duration` in whole nanoseconds, `u64::MAX` if it does not fit (more than 584 years).
#[inline]
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_nanoseconds_after_the_origin_on_tokios_clock() {
        let origin = Origin::now();
        assert_eq!(origin.elapsed(), 0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(origin.elapsed(), 1_500_000_000);
        assert_eq!(origin.at(origin.elapsed()), Instant::now());
    }

    #[test]
    fn saturates_at_both_ends() {
        let origin = Origin(Instant::now() + Duration::from_secs(1));
        assert_eq!(origin.nanos(origin.instant() - Duration::from_secs(1)), 0);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_nanos(u64::MAX)), u64::MAX);
        assert_eq!(nanos(Duration::from_micros(3)), 3_000);
    }
}
