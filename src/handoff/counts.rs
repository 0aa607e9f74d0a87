//! The public snapshot of a hand-off's counters, and its accounting identities.

/// A snapshot of a hand-off's counters, from [`Handoff::counts`](super::Handoff::counts).
///
/// Every record offered is counted exactly once: `offered = accepted + dropped`, and
/// `accepted = delivered + expired + shed + rejected + failed + pending`, where `pending =
/// queued + parked + in_flight`. Both identities hold exactly in every snapshot, also while
/// records move (a record is counted in the one place the snapshot saw it);
/// [`is_balanced`](Self::is_balanced) checks them, and fails if the worker ever miscounted.
/// `queued` includes a sender between its reservation and its push.
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
    /// Records the stack shed ([`BulkheadFull`](crate::bulkhead::BulkheadFull), also wrapped as
    /// the source of another layer's error).
    pub shed: u64,
    /// Records the stack rejected ([`BreakerOpen`](crate::breaker::BreakerOpen), also wrapped).
    pub rejected: u64,
    /// Records that failed with any other error, or whose call panicked, or that were queued
    /// when the service broke (see the [module docs](super#panics-and-broken-services)). A failed
    /// write may still have reached the dependency (for Kafka, a timed-out record a resumed
    /// broker writes after all).
    pub failed: u64,
    /// Records that waited longer than the hand-off's
    /// [`max_age`](super::HandoffBuilder::max_age) before the stack would take them: discarded
    /// unsent.
    pub expired: u64,
    /// Records waiting in the queue.
    pub queued: u64,
    /// Records the stack gave back to wait for another try: refused by an open breaker or a
    /// full bulkhead, or failed with a dependency fault and given one more try. They are sent
    /// again, oldest first, once the stack takes them.
    pub parked: u64,
    /// Records in the stack, not yet finished.
    pub in_flight: u64,
    /// Records given one more try after a dependency fault (a statistic: each is also counted
    /// by the outcome of that try).
    pub retried: u64,
    /// The weight of the records pending, for a hand-off bounded by
    /// [`max_bytes`](super::HandoffBuilder::max_bytes) (0 otherwise).
    pub bytes: u64,
}

impl HandoffCounts {
    /// Records accepted and not yet finished: queued, parked or in flight.
    pub fn pending(&self) -> u64 {
        self.queued + self.parked + self.in_flight
    }

    /// Records accepted and finished, one way or another.
    pub fn finished(&self) -> u64 {
        self.delivered + self.expired + self.shed + self.rejected + self.failed
    }

    /// Records not delivered: dropped, expired, shed, rejected or failed.
    pub fn ignored(&self) -> u64 {
        self.dropped + self.expired + self.shed + self.rejected + self.failed
    }

    /// Whether both accounting identities hold in this snapshot.
    pub fn is_balanced(&self) -> bool {
        self.offered == self.accepted + self.dropped
            && self.accepted == self.finished() + self.pending()
    }
}
