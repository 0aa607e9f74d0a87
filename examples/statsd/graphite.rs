//! A `metrics` recorder for plain StatsD in front of Graphite: labels become parts of the name.
//!
//! `metrics-exporter-statsd` sends labels as DogStatsD tags (`name:1|c|#producer:stats`), which
//! Telegraf, the Datadog agent or statsd_exporter keep, but which a plain StatsD daemon feeding
//! Graphite does not understand. [`Flatten`] wraps any recorder and appends each label's value to
//! the metric's name, Graphite's way: `tanker_kafka_errors_total.stats.message_timed_out`.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Wraps a recorder; every metric it registers is named `name.value1.value2...`, in the order
/// of its labels, without labels.
#[derive(Debug)]
pub(crate) struct Flatten<R>(pub(crate) R);

/// `key`'s name with its label values appended; a dot inside a value becomes `_`, so that it
/// does not add a level to Graphite's tree.
pub(crate) fn graphite_name(key: &Key) -> String {
    let mut name = key.name().to_owned();
    for label in key.labels() {
        name.push('.');
        name.extend(
            label
                .value()
                .chars()
                .map(|c| if c == '.' { '_' } else { c }),
        );
    }
    name
}

impl<R: Recorder> Recorder for Flatten<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.0
            .register_counter(&Key::from_name(graphite_name(key)), metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.0
            .register_gauge(&Key::from_name(graphite_name(key)), metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.0
            .register_histogram(&Key::from_name(graphite_name(key)), metadata)
    }
}
