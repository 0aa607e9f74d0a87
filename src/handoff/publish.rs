//! What a hand-off tells the metrics recorder: its metric handles, and the worker's batches of
//! differences since the last one.

#[cfg(feature = "metrics")]
use super::counts::HandoffCounts;
use crate::metrics as names;
use crate::telemetry::{Counter, Gauge, Labels};

/// The hand-off's metric handles (empty without the `metrics` feature). The worker publishes the
/// counters into them in batches, so that `send` does no more work with metrics on; only a drop
/// after `close`, which the worker may not live to see, is recorded where it happens.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(super) struct HandoffMetrics {
    accepted: Counter,
    dropped_full: Counter,
    dropped_closed: Counter,
    delivered: Counter,
    shed: Counter,
    rejected: Counter,
    failed: Counter,
    expired: Counter,
    queued: Gauge,
    in_flight: Gauge,
    parked: Gauge,
}

/// What the worker last published to the metrics recorder, to publish the differences: counters
/// of hand-offs that share a name add up, and a value is never published before it has settled.
#[cfg(feature = "metrics")]
#[derive(Default)]
pub(super) struct Published {
    accepted: u64,
    dropped_full: u64,
    delivered: u64,
    shed: u64,
    rejected: u64,
    failed: u64,
    expired: u64,
}

/// Adds to `counter` what `now` grew by since `then`, and remembers `now`.
#[cfg(feature = "metrics")]
fn add_since(counter: &Counter, now: u64, then: &mut u64) {
    if now > *then {
        counter.add(now - *then);
        *then = now;
    }
}

impl HandoffMetrics {
    pub(super) fn new(name: &str) -> Self {
        let labels = Labels::new("handoff", name);
        let dropped = |reason| {
            labels.counter_with(
                names::HANDOFF_DROPPED,
                "records a hand-off refused",
                Some(("reason", reason)),
            )
        };
        let failed = |reason| {
            labels.counter_with(
                names::HANDOFF_FAILED,
                "accepted records a hand-off's stack did not deliver",
                Some(("reason", reason)),
            )
        };
        Self {
            accepted: labels.counter(names::HANDOFF_ACCEPTED, "records a hand-off queued"),
            dropped_full: dropped("full"),
            dropped_closed: dropped("closed"),
            delivered: labels.counter(
                names::HANDOFF_DELIVERED,
                "records a hand-off's stack delivered",
            ),
            shed: failed("shed"),
            rejected: failed("rejected"),
            failed: failed("error"),
            expired: failed("expired"),
            queued: labels.gauge(names::HANDOFF_QUEUED, "records in a hand-off's queue"),
            in_flight: labels.gauge(names::HANDOFF_IN_FLIGHT, "records in a hand-off's stack"),
            parked: labels.gauge(
                names::HANDOFF_PARKED,
                "records parked in a hand-off, waiting for the stack",
            ),
        }
    }

    /// A record refused after `close`: counted where it happens.
    pub(super) fn dropped_closed(&self) {
        self.dropped_closed.increment();
    }

    /// Publishes a snapshot: the counters by what they grew since `last`, the gauges as
    /// absolute values (which every exporter keeps). `queued` is the queue's own length:
    /// `counts.accepted` is not used, since a sender reserves there before it knows whether its
    /// record gets in; only the worker takes records out and finishes them, so from the worker
    /// the sum is exact.
    #[cfg(feature = "metrics")]
    pub(super) fn publish(&self, counts: &HandoffCounts, queued: u64, last: &mut Published) {
        let accepted = counts.finished() + counts.parked + counts.in_flight + queued;
        for (counter, now, then) in [
            (&self.accepted, accepted, &mut last.accepted),
            (
                &self.dropped_full,
                counts.dropped - counts.dropped_closed,
                &mut last.dropped_full,
            ),
            (&self.delivered, counts.delivered, &mut last.delivered),
            (&self.shed, counts.shed, &mut last.shed),
            (&self.rejected, counts.rejected, &mut last.rejected),
            (&self.failed, counts.failed, &mut last.failed),
            (&self.expired, counts.expired, &mut last.expired),
        ] {
            add_since(counter, now, then);
        }
        self.queued.set(counts.queued);
        self.in_flight.set(counts.in_flight);
        self.parked.set(counts.parked);
    }
}
