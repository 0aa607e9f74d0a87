//! Counters and gauges through the `metrics` facade, and rate-limited reports through `tracing`.
//!
//! With the `metrics` feature, each component resolves its metric handles once, when it is built,
//! and a call only bumps them. Without it, [`Counter`] and [`Gauge`] are empty and every method
//! is an empty inline function, so the compiler removes them: no cost, no dependency.

use crate::clock::{nanos, Origin};
use crate::sync::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic counter, labelled with the component it belongs to.
#[derive(Clone)]
pub(crate) struct Counter {
    #[cfg(feature = "metrics")]
    inner: ::metrics::Counter,
}

/// A gauge, labelled with the component it belongs to.
#[derive(Clone)]
pub(crate) struct Gauge {
    #[cfg(feature = "metrics")]
    inner: ::metrics::Gauge,
}

/// The labels of one component's metrics: its kind (the label's key) and its name.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct Labels<'a> {
    key: &'static str,
    name: &'a str,
}

impl<'a> Labels<'a> {
    pub(crate) fn new(key: &'static str, name: &'a str) -> Self {
        Self { key, name }
    }

    #[cfg(feature = "metrics")]
    fn with(self, extra: Option<(&'static str, &'static str)>) -> Vec<::metrics::Label> {
        let mut labels = vec![::metrics::Label::new(self.key, self.name.to_owned())];
        if let Some((key, value)) = extra {
            labels.push(::metrics::Label::new(key, value));
        }
        labels
    }

    /// A counter of this component, described once for exporters that show help texts.
    pub(crate) fn counter(self, name: &'static str, help: &'static str) -> Counter {
        self.counter_with(name, help, None)
    }

    /// A counter of this component with one more label, such as an outcome or a reason.
    pub(crate) fn counter_with(
        self,
        name: &'static str,
        help: &'static str,
        extra: Option<(&'static str, &'static str)>,
    ) -> Counter {
        #[cfg(feature = "metrics")]
        {
            ::metrics::describe_counter!(name, help);
            Counter {
                inner: ::metrics::counter!(name, self.with(extra)),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, help, extra);
            Counter {}
        }
    }

    /// A gauge of this component.
    pub(crate) fn gauge(self, name: &'static str, help: &'static str) -> Gauge {
        self.gauge_with(name, help, None)
    }

    /// A gauge of this component with one more label.
    pub(crate) fn gauge_with(
        self,
        name: &'static str,
        help: &'static str,
        extra: Option<(&'static str, &'static str)>,
    ) -> Gauge {
        #[cfg(feature = "metrics")]
        {
            ::metrics::describe_gauge!(name, help);
            Gauge {
                inner: ::metrics::gauge!(name, self.with(extra)),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, help, extra);
            Gauge {}
        }
    }
}

impl Counter {
    #[inline]
    pub(crate) fn increment(&self) {
        #[cfg(feature = "metrics")]
        self.inner.increment(1);
    }

    /// Adds `n` at once (for a component that publishes in batches).
    #[cfg(feature = "metrics")]
    pub(crate) fn add(&self, n: u64) {
        self.inner.increment(n);
    }
}

impl Gauge {
    /// Publishes the value `read` returns, as an absolute value (exporters such as StatsD drop a
    /// gauge's increments and decrements). Reads again after publishing, and publishes again
    /// until the two agree: when two threads race, the one that publishes last has read the
    /// latest value, so the gauge settles on the true value once updates stop.
    #[inline]
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // only the Kafka leaf uses it so far
    pub(crate) fn track(&self, read: impl Fn() -> usize) {
        #[cfg(feature = "metrics")]
        {
            let mut value = read();
            loop {
                self.inner.set(value as f64);
                let now = read();
                if now == value {
                    break;
                }
                value = now;
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = read;
    }

    #[inline]
    pub(crate) fn set(&self, value: u64) {
        #[cfg(feature = "metrics")]
        self.inner.set(value as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = value;
    }
}

/// Lets a repeated event through at most once per interval, and says how many happened since the
/// last one that went through: one warning a second instead of one per shed call.
///
/// Reading the clock for every event would cost more than the event itself when a bulkhead sheds
/// millions of calls a second, so the clock is read only at check points: the first event after
/// a report, then after twice as many events as the last check saw, at most [`CHECK_EVERY`]
/// apart. A report may thus come up to [`CHECK_EVERY`] events after it is due.
pub(crate) struct Throttle {
    origin: Origin,
    /// When the next report may go out, in nanoseconds after `origin`.
    next: AtomicU64,
    /// The event count at the last report.
    reported: AtomicU64,
    /// The event count at which to read the clock next.
    check_at: AtomicU64,
}

/// How often a throttled report may go out.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The most events between two readings of the clock.
pub(crate) const CHECK_EVERY: u64 = 64;

impl Throttle {
    pub(crate) fn new() -> Self {
        Self::starting_at(Origin::now())
    }

    /// For events that come from threads outside tokio (librdkafka's), which read the real
    /// clock: its origin is the real clock's now, even when built on a runtime whose time is
    /// paused (or advanced) in a test.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // only the Kafka leaf uses it so far
    pub(crate) fn real_time() -> Self {
        Self::starting_at(Origin::real_time())
    }

    fn starting_at(origin: Origin) -> Self {
        Self {
            origin,
            next: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            check_at: AtomicU64::new(1),
        }
    }

    /// For a caller that sees each event: given the running total of events, returns how many
    /// happened since the last report if a report is due (and claims it), or `None`. Reads the
    /// clock only at check points, so callers check first that the report would be logged at all.
    pub(crate) fn due(&self, total: u64) -> Option<u64> {
        if total < self.check_at.load(Ordering::Relaxed) {
            return None;
        }
        let due = self.poll(total);
        if due.is_none() {
            let since = total.saturating_sub(self.reported.load(Ordering::Relaxed));
            self.check_at
                .store(total + since.clamp(1, CHECK_EVERY), Ordering::Relaxed);
        }
        due
    }

    /// For a caller that runs on its own schedule (the hand-off's worker): like
    /// [`due`](Self::due), but reads the clock at every call that has something new to report.
    pub(crate) fn poll(&self, total: u64) -> Option<u64> {
        let reported = self.reported.load(Ordering::Relaxed);
        if total <= reported {
            // Nothing new since the last report.
            return None;
        }
        let now = self.origin.elapsed();
        let next = self.next.load(Ordering::Relaxed);
        if now < next {
            return None;
        }
        let until = now.saturating_add(nanos(REPORT_EVERY));
        self.next
            .compare_exchange(next, until, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        let last = self.reported.swap(total, Ordering::Relaxed);
        self.check_at.store(total + 1, Ordering::Relaxed);
        Some(total.saturating_sub(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn throttle_reports_once_per_interval_with_the_count_since_the_last() {
        let throttle = Throttle::new();
        assert_eq!(
            throttle.due(1),
            Some(1),
            "the first event is reported at once"
        );
        for total in 2..=200 {
            assert_eq!(throttle.due(total), None, "within the interval");
        }
        tokio::time::advance(REPORT_EVERY).await;
        // Due now, and reported at the next check point: at most `CHECK_EVERY` events later.
        let report = (201..=200 + CHECK_EVERY)
            .find_map(|total| throttle.due(total).map(|since| (total, since)));
        let (at, since) = report.expect("a report within CHECK_EVERY events");
        assert_eq!(since, at - 1, "every event since the first report");
        assert_eq!(throttle.due(at), None, "nothing new: no report");

        // A trickle after a quiet interval is reported at its first event.
        tokio::time::advance(REPORT_EVERY * 5).await;
        assert_eq!(throttle.due(at + 1), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_polled_throttle_reports_as_soon_as_the_interval_is_over() {
        let throttle = Throttle::new();
        assert_eq!(throttle.poll(0), None, "nothing to report");
        assert_eq!(throttle.poll(996), Some(996));
        assert_eq!(throttle.poll(1095), None);
        tokio::time::advance(REPORT_EVERY).await;
        assert_eq!(throttle.poll(1095), Some(99));
        tokio::time::advance(REPORT_EVERY).await;
        assert_eq!(throttle.poll(1095), None, "nothing new");
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_reads_the_clock_at_most_once_per_check_every_events_in_a_burst() {
        let throttle = Throttle::new();
        assert_eq!(throttle.due(1), Some(1));
        let mut checks = 0;
        let mut last_check = throttle.check_at.load(Ordering::Relaxed);
        for total in 2..=10_000 {
            assert_eq!(throttle.due(total), None);
            let check_at = throttle.check_at.load(Ordering::Relaxed);
            if check_at != last_check {
                checks += 1;
                assert!(check_at - total <= CHECK_EVERY);
                last_check = check_at;
            }
        }
        assert!(
            checks <= 10_000 / CHECK_EVERY + 8,
            "{checks} clock readings"
        );
    }
}
