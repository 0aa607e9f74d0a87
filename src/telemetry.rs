//! Counters and gauges through the `metrics` facade, and rate-limited reports through `tracing`.
//!
//! With the `metrics` feature, each component resolves its metric handles once, when it is built,
//! and a call only bumps them. Without it, [`Counter`] and [`Gauge`] are empty and every method
//! is an empty inline function, so the compiler removes them: no cost, no dependency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

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

    /// Sets the counter to a total kept elsewhere (by a component that publishes in batches).
    #[inline]
    pub(crate) fn absolute(&self, total: u64) {
        #[cfg(feature = "metrics")]
        self.inner.absolute(total);
        #[cfg(not(feature = "metrics"))]
        let _ = total;
    }
}

impl Gauge {
    #[inline]
    pub(crate) fn increment(&self) {
        #[cfg(feature = "metrics")]
        self.inner.increment(1.0);
    }

    #[inline]
    pub(crate) fn decrement(&self) {
        #[cfg(feature = "metrics")]
        self.inner.decrement(1.0);
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
pub(crate) struct Throttle {
    origin: Instant,
    /// When the next report may go out, in nanoseconds after `origin`.
    next: AtomicU64,
    /// The event count at the last report.
    reported: AtomicU64,
}

/// How often a throttled report may go out.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(1);

impl Throttle {
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
            next: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        }
    }

    /// Given the running total of events, returns how many happened since the last report if
    /// there were any and a report is due now (and claims it), or `None`. Reads the clock, so callers check first that
    /// the report would be logged at all.
    pub(crate) fn due(&self, total: u64) -> Option<u64> {
        if total <= self.reported.load(Ordering::Relaxed) {
            // Nothing new since the last report.
            return None;
        }
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let next = self.next.load(Ordering::Relaxed);
        if now < next {
            return None;
        }
        let until = now.saturating_add(REPORT_EVERY.as_nanos() as u64);
        self.next
            .compare_exchange(next, until, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        let last = self.reported.swap(total, Ordering::Relaxed);
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
        assert_eq!(throttle.due(2), None);
        assert_eq!(throttle.due(50), None);
        tokio::time::advance(REPORT_EVERY - Duration::from_millis(1)).await;
        assert_eq!(throttle.due(80), None, "not before the interval is over");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            throttle.due(81),
            Some(80),
            "events 2..=81 since the first report"
        );
        assert_eq!(throttle.due(82), None);
        tokio::time::advance(REPORT_EVERY * 5).await;
        assert_eq!(
            throttle.due(81),
            None,
            "nothing new: no report, and none claimed"
        );
        assert_eq!(throttle.due(90), Some(9));
    }
}
