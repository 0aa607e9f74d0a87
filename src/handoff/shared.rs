//! The queue and counters shared by the senders and the worker of one hand-off.

use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use tokio::sync::Notify;

use super::front::Sent;
use crate::metrics as names;
use crate::telemetry::{Counter, Gauge, Labels};

pub(crate) struct Shared<Req> {
    pub(crate) queue: ArrayQueue<Req>,
    pub(crate) name: Arc<str>,
    /// What every `send` touches, on cache lines of its own so that the worker's counting does
    /// not take them away from senders.
    pub(crate) front: CachePadded<Front>,
    /// What the worker writes for every record.
    pub(crate) back: CachePadded<Back>,
    pub(crate) doorbell: Arc<Notify>,
    /// Rung by the worker when it has nothing left to do after `close`.
    pub(crate) drained: Notify,
    pub(crate) finished: AtomicBool,
    /// Live [`Handoff`](super::Handoff) handles; the last one to go closes the hand-off.
    pub(crate) handles: AtomicUsize,
    pub(crate) metrics: Metrics,
}

/// The hand-off's metric handles (empty without the `metrics` feature). The worker publishes the
/// counters into them in batches, so that `send` does no more work with metrics on; only a drop
/// after `close`, which the worker may not live to see, is recorded where it happens.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct Metrics {
    pub(crate) accepted: Counter,
    pub(crate) dropped_full: Counter,
    dropped_closed: Counter,
    pub(crate) delivered: Counter,
    pub(crate) shed: Counter,
    pub(crate) rejected: Counter,
    pub(crate) failed: Counter,
    pub(crate) queued: Gauge,
    pub(crate) in_flight: Gauge,
}

impl Metrics {
    fn new(name: &str) -> Self {
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
            queued: labels.gauge(names::HANDOFF_QUEUED, "records in a hand-off's queue"),
            in_flight: labels.gauge(names::HANDOFF_IN_FLIGHT, "records in a hand-off's stack"),
        }
    }
}

pub(crate) struct Front {
    pub(crate) closed: AtomicBool,
    /// Set by the worker before it sleeps; a sender that finds the queue half full rings it.
    pub(crate) sleeping: AtomicBool,
    pub(crate) accepted: AtomicU64,
    /// Records refused because the queue was full.
    pub(crate) dropped_full: AtomicU64,
    /// Records refused because the hand-off was closed.
    pub(crate) dropped_closed: AtomicU64,
}

pub(crate) struct Back {
    pub(crate) delivered: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) in_flight: AtomicU64,
}

impl<Req> Shared<Req> {
    pub(crate) fn new(capacity: usize, name: Arc<str>) -> Self {
        Self {
            queue: ArrayQueue::new(capacity),
            metrics: Metrics::new(&name),
            name,
            front: CachePadded::new(Front {
                closed: AtomicBool::new(false),
                sleeping: AtomicBool::new(false),
                accepted: AtomicU64::new(0),
                dropped_full: AtomicU64::new(0),
                dropped_closed: AtomicU64::new(0),
            }),
            back: CachePadded::new(Back {
                delivered: AtomicU64::new(0),
                shed: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
            }),
            doorbell: Arc::new(Notify::new()),
            drained: Notify::new(),
            finished: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
        }
    }

    /// Counts a record refused because the hand-off was closed. Recorded here, not by the
    /// worker: it may have ended already.
    #[cold]
    pub(crate) fn drop_closed(&self) -> Sent {
        self.front.dropped_closed.fetch_add(1, Ordering::Relaxed);
        self.metrics.dropped_closed.increment();
        Sent::Dropped
    }

    /// Records refused so far, for any reason.
    pub(crate) fn dropped(&self) -> u64 {
        self.front.dropped_full.load(Ordering::Acquire)
            + self.front.dropped_closed.load(Ordering::Acquire)
    }

    pub(crate) fn wake_worker(&self) {
        self.front.sleeping.store(false, Ordering::Relaxed);
        self.doorbell.notify_one();
    }

    /// Records accepted and finished, one way or another.
    pub(crate) fn finished(&self) -> u64 {
        self.back.delivered.load(Ordering::SeqCst)
            + self.back.shed.load(Ordering::SeqCst)
            + self.back.rejected.load(Ordering::SeqCst)
            + self.back.failed.load(Ordering::SeqCst)
    }

    pub(crate) fn counts(&self) -> HandoffCounts {
        // Outcomes are read before `accepted`, and `in_flight` and the queue in between, so a
        // snapshot taken while records move never shows more finished records than accepted.
        let delivered = self.back.delivered.load(Ordering::Acquire);
        let shed = self.back.shed.load(Ordering::Acquire);
        let rejected = self.back.rejected.load(Ordering::Acquire);
        let failed = self.back.failed.load(Ordering::Acquire);
        let in_flight = self.back.in_flight.load(Ordering::Acquire);
        let queued = self.queue.len() as u64;
        let accepted = self.front.accepted.load(Ordering::Acquire);
        let dropped_closed = self.front.dropped_closed.load(Ordering::Acquire);
        let dropped = self.front.dropped_full.load(Ordering::Acquire) + dropped_closed;
        HandoffCounts {
            offered: accepted + dropped,
            accepted,
            dropped,
            dropped_closed,
            delivered,
            shed,
            rejected,
            failed,
            queued,
            in_flight,
        }
    }
}

/// A snapshot of a hand-off's counters, from [`Handoff::counts`](super::Handoff::counts).
///
/// Every record offered is counted exactly once: `offered = accepted + dropped`, and
/// `accepted = delivered + shed + rejected + failed + pending`, where `pending = queued +
/// in_flight`. At a quiescent moment (nothing being sent or finishing) both identities hold
/// exactly; [`is_balanced`](Self::is_balanced) checks them. A snapshot taken while records move
/// may be a few records apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandoffCounts {
    /// Records offered with `send` (or `call`).
    pub offered: u64,
    /// Records put in the queue.
    pub accepted: u64,
    /// Records refused because the queue was full or the hand-off closed.
    pub dropped: u64,
    /// Of `dropped`, the records refused because the hand-off had closed; the others found the
    /// queue full.
    pub dropped_closed: u64,
    /// Records the stack handled successfully.
    pub delivered: u64,
    /// Records the stack shed ([`BulkheadFull`](crate::bulkhead::BulkheadFull)).
    pub shed: u64,
    /// Records the stack rejected ([`BreakerOpen`](crate::breaker::BreakerOpen)).
    pub rejected: u64,
    /// Records that failed with any other error. A failed write may still have reached the
    /// dependency (for Kafka, a timed-out record a resumed broker writes after all).
    pub failed: u64,
    /// Records waiting in the queue.
    pub queued: u64,
    /// Records in the stack, not yet finished.
    pub in_flight: u64,
}

impl HandoffCounts {
    /// Records accepted and not yet finished.
    pub fn pending(&self) -> u64 {
        self.queued + self.in_flight
    }

    /// Records accepted and finished, one way or another.
    pub fn finished(&self) -> u64 {
        self.delivered + self.shed + self.rejected + self.failed
    }

    /// Records not delivered: dropped, shed, rejected or failed.
    pub fn ignored(&self) -> u64 {
        self.dropped + self.shed + self.rejected + self.failed
    }

    /// Whether both accounting identities hold in this snapshot.
    pub fn is_balanced(&self) -> bool {
        self.offered == self.accepted + self.dropped
            && self.accepted == self.finished() + self.pending()
    }
}
