//! The queue and counters shared by the senders and the worker of one hand-off.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

pub(crate) struct Shared<Req> {
    pub(crate) queue: ArrayQueue<Req>,
    pub(crate) name: Arc<str>,
    pub(crate) closed: AtomicBool,
    /// Set by the worker before it sleeps; a sender that finds the queue half full rings it.
    pub(crate) sleeping: AtomicBool,
    pub(crate) doorbell: Arc<Notify>,
    /// Rung by the worker when it has nothing left to do after `close`.
    pub(crate) drained: Notify,
    pub(crate) finished: AtomicBool,
    pub(crate) accepted: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    /// Live [`Handoff`](super::Handoff) handles; the last one to go closes the hand-off.
    pub(crate) handles: AtomicUsize,
}

impl<Req> Shared<Req> {
    pub(crate) fn new(capacity: usize, name: Arc<str>) -> Self {
        Self {
            queue: ArrayQueue::new(capacity),
            name,
            closed: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            doorbell: Arc::new(Notify::new()),
            drained: Notify::new(),
            finished: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            handles: AtomicUsize::new(1),
        }
    }

    pub(crate) fn wake_worker(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
        self.doorbell.notify_one();
    }

    /// Records accepted and finished, one way or another.
    pub(crate) fn finished(&self) -> u64 {
        self.delivered.load(Ordering::SeqCst)
            + self.shed.load(Ordering::SeqCst)
            + self.rejected.load(Ordering::SeqCst)
            + self.failed.load(Ordering::SeqCst)
    }

    pub(crate) fn counts(&self) -> HandoffCounts {
        // Outcomes are read before `accepted`, and `in_flight` and the queue in between, so a
        // snapshot taken while records move never shows more finished records than accepted.
        let delivered = self.delivered.load(Ordering::Acquire);
        let shed = self.shed.load(Ordering::Acquire);
        let rejected = self.rejected.load(Ordering::Acquire);
        let failed = self.failed.load(Ordering::Acquire);
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let queued = self.queue.len() as u64;
        let accepted = self.accepted.load(Ordering::Acquire);
        let dropped = self.dropped.load(Ordering::Acquire);
        HandoffCounts {
            offered: accepted + dropped,
            accepted,
            dropped,
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
    /// Records the stack handled successfully.
    pub delivered: u64,
    /// Records the stack shed ([`BulkheadFull`](crate::bulkhead::BulkheadFull)).
    pub shed: u64,
    /// Records the stack rejected ([`BreakerOpen`](crate::breaker::BreakerOpen)).
    pub rejected: u64,
    /// Records that failed with any other error.
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
