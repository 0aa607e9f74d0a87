//! The queue and counters shared by the senders and the worker of one hand-off.

use std::sync::Arc;

use crossbeam_utils::CachePadded;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::buffer::Buffer;
use super::counts::HandoffCounts;
use super::doorbell::{seq_cst_point, Doorbell};
use super::publish::HandoffMetrics;
use super::weigh::Weigh;
use crate::clock::Origin;
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// What became of a record handed off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sent {
    /// The record is in the queue; the worker will drive it through the stack and count its
    /// outcome.
    Accepted,
    /// The queue was full (or the hand-off closed): the record was counted as dropped and
    /// discarded. [`HandoffCounts::dropped_closed`] tells the two apart.
    Dropped,
}

/// A record in the queue, with the hand-off's coarse time when it was accepted.
pub(crate) struct Envelope<Req> {
    request: Req,
    /// Milliseconds after the hand-off's origin, on the coarse clock.
    stamp: u32,
    /// What it weighs (0 without a weigher), given back when it is finished.
    weight: usize,
}

impl<Req> Envelope<Req> {
    /// When the record was accepted: milliseconds after the hand-off's origin, on the coarse
    /// clock.
    pub(crate) fn stamp(&self) -> u32 {
        self.stamp
    }

    /// What the record weighs (0 without a weigher), to give back when it is finished.
    pub(crate) fn weight(&self) -> usize {
        self.weight
    }

    /// The record itself.
    pub(crate) fn into_request(self) -> Req {
        self.request
    }
}

pub(crate) struct Shared<Req> {
    buffer: Buffer<Envelope<Req>>,
    origin: Origin,
    /// What a record weighs, when the hand-off is bounded by bytes.
    weigh: Option<Weigh<Req>>,
    max_bytes: usize,
    /// The weight of the records held: reserved by `send`, given back when a record finishes.
    bytes: CachePadded<AtomicUsize>,
    name: Arc<str>,
    /// What senders read on every `send`, on a line of its own that the worker writes at most
    /// once a turn (the coarse clock), so that a sender after a turn misses one line.
    signals: CachePadded<Signals>,
    /// What senders count on every `send`, on a line of its own that the worker reads only once
    /// closed (and in a snapshot): a sender's add never waits for the worker's copy to go.
    front: CachePadded<Front>,
    /// What the worker writes for every record.
    back: CachePadded<Back>,
    /// Rung by the worker when it has nothing left to do after `close`.
    drained: Notify,
    finished: AtomicBool,
    /// Live [`Handoff`](super::Handoff) handles; the last one to go closes the hand-off.
    handles: AtomicUsize,
    metrics: HandoffMetrics,
}

/// What senders read on every `send`. The worker writes the clock when the millisecond changed,
/// and the rest only on a change of state (close, a worker that parks without timers or is rung
/// for a half-full queue) or while records are parked.
struct Signals {
    closed: AtomicBool,
    /// Senders look at it after every push.
    doorbell: Doorbell,
    /// Records back in the worker's hands, waiting for the stack to take them again: refused by
    /// an open breaker or a full bulkhead, or given one more try after a dependency fault. Here,
    /// where senders read, because parked records and queued ones share the one `capacity`.
    /// Only the worker writes it, and only while something is parked.
    parked: AtomicU64,
    /// The hand-off's coarse clock: milliseconds after `origin`, written by the worker each time
    /// it runs and the millisecond changed (at least every 100 ms while it ticks), read by
    /// senders to stamp their records. Here, with what senders read anyway: a sender that comes
    /// after the worker's turn misses this one line, not two.
    clock: AtomicU32,
}

/// What senders write on every `send`.
struct Front {
    /// Records accepted, plus senders between their reservation and their push.
    accepted: AtomicU64,
    /// Records refused because the queue was full.
    dropped_full: AtomicU64,
    /// Records refused because the hand-off was closed.
    dropped_closed: AtomicU64,
}

struct Back {
    delivered: AtomicU64,
    shed: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    /// Records that outlived the hand-off's maximum age before they could be sent.
    expired: AtomicU64,
    /// Records ever taken out of the queue. Those not finished nor parked are in flight: a
    /// snapshot derives that count (and the queue's, from `accepted`), so that a record moving
    /// between two counters is never seen in both or in neither.
    taken: AtomicU64,
    /// Records given one more try after a dependency fault (a statistic; they are counted
    /// again by their next outcome).
    retried: AtomicU64,
}

/// What became of an accepted record, in the end. (Not the breaker's public
/// [`Outcome`](crate::breaker::Outcome) of one call: a record refused by a breaker may be parked
/// and called again; its fate is what it was counted as.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Delivered,
    /// Refused by a bulkhead.
    Shed,
    /// Refused by a breaker.
    Rejected,
    /// Any other error, a panic, or a broken service.
    Failed,
    /// Older than the hand-off's maximum age when its turn came.
    Expired,
}

impl<Req> Shared<Req> {
    /// `capacity` has been checked by the builder.
    pub(crate) fn new(
        capacity: usize,
        name: Arc<str>,
        weigh: Option<Weigh<Req>>,
        max_bytes: usize,
    ) -> Self {
        Self {
            weigh,
            max_bytes,
            bytes: CachePadded::new(AtomicUsize::new(0)),
            buffer: Buffer::new(capacity),
            origin: Origin::now(),
            metrics: HandoffMetrics::new(&name),
            name,
            signals: CachePadded::new(Signals {
                closed: AtomicBool::new(false),
                doorbell: Doorbell::new(),
                parked: AtomicU64::new(0),
                clock: AtomicU32::new(0),
            }),
            front: CachePadded::new(Front {
                accepted: AtomicU64::new(0),
                dropped_full: AtomicU64::new(0),
                dropped_closed: AtomicU64::new(0),
            }),
            back: CachePadded::new(Back {
                delivered: AtomicU64::new(0),
                shed: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                expired: AtomicU64::new(0),
                taken: AtomicU64::new(0),
                retried: AtomicU64::new(0),
            }),
            drained: Notify::new(),
            finished: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
        }
    }

    // ===== the senders' side =====

    /// Offers a record: accepted whole into the queue, or counted as dropped.
    #[inline]
    pub(crate) fn offer(&self, request: Req) -> Sent {
        let (front, signals) = (&*self.front, &*self.signals);
        if self.buffer.is_full() || self.parked_fill_the_rest() {
            if signals.closed.load(Ordering::Relaxed) {
                return self.drop_closed();
            }
            // Overloaded: one atomic add, nothing else.
            front.dropped_full.fetch_add(1, Ordering::Relaxed);
            return Sent::Dropped;
        }
        // The weight first, before anything is reserved: the weight function is user code, and
        // a panic in it must leave nothing behind (the record is dropped, `send` returns).
        let weight = match &self.weigh {
            None => 0,
            Some(weigh) => {
                let weighed =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| weigh(&request)));
                match weighed {
                    Ok(weight) if self.reserve_bytes(weight) => weight,
                    _ => {
                        front.dropped_full.fetch_add(1, Ordering::Relaxed);
                        return Sent::Dropped;
                    }
                }
            }
        };
        // Reserve before looking at `closed`: a worker that saw `closed` and then finds
        // `accepted` above what it finished waits for this push (or its undoing) before it ends.
        front.accepted.fetch_add(1, Ordering::SeqCst);
        seq_cst_point();
        if signals.closed.load(Ordering::SeqCst) {
            self.release_bytes(weight);
            self.unreserve();
            return self.drop_closed();
        }
        let stamp = signals.clock.load(Ordering::Relaxed);
        if self
            .buffer
            .push(Envelope {
                request,
                stamp,
                weight,
            })
            .is_err()
        {
            // Another sender took the last place since `is_full`.
            self.release_bytes(weight);
            self.unreserve();
            front.dropped_full.fetch_add(1, Ordering::Relaxed);
            return Sent::Dropped;
        }
        // The push was a `SeqCst` read-modify-write (see `Buffer`): the second half of the
        // doorbell's handshake.
        signals
            .doorbell
            .after_push(|| self.buffer.len() * 2 >= self.buffer.capacity());
        Sent::Accepted
    }

    /// Whether the records parked in the worker take every place the queue has left: parked and
    /// queued records share the one `capacity`, so that memory stays within it whatever the stack
    /// does. One load when nothing is parked, which is all the time while the stack is healthy.
    #[inline]
    fn parked_fill_the_rest(&self) -> bool {
        let parked = self.signals.parked.load(Ordering::Relaxed);
        parked != 0 && parked as usize + self.buffer.len() >= self.buffer.capacity()
    }

    /// Reserves `weight` bytes within `max_bytes`, or says there is no room. A compare-and-swap
    /// from what it read, not an add and an undo: another sender's reservation that is being
    /// undone can never make this one look over the budget.
    fn reserve_bytes(&self, weight: usize) -> bool {
        let mut held = self.bytes.load(Ordering::Relaxed);
        loop {
            let Some(after) = held
                .checked_add(weight)
                .filter(|&after| after <= self.max_bytes)
            else {
                return false;
            };
            match self.bytes.compare_exchange_weak(
                held,
                after,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => held = now,
            }
        }
    }

    /// Gives back the bytes of a record that is finished (or never got in).
    pub(crate) fn release_bytes(&self, weight: usize) {
        if weight > 0 {
            self.bytes.fetch_sub(weight, Ordering::Relaxed);
        }
    }

    /// Takes back a reservation whose record did not get in. A worker waiting to finish after
    /// `close` may be parked on that reservation: ring it.
    #[cold]
    fn unreserve(&self) {
        self.front.accepted.fetch_sub(1, Ordering::SeqCst);
        self.signals.doorbell.after_push(|| false);
    }

    /// Counts a record refused because the hand-off was closed. Recorded here, not by the
    /// worker: it may have ended already.
    #[cold]
    fn drop_closed(&self) -> Sent {
        self.front.dropped_closed.fetch_add(1, Ordering::Relaxed);
        self.metrics.dropped_closed();
        Sent::Dropped
    }

    /// Stops accepting, and wakes the worker so that it finishes and ends.
    pub(crate) fn close(&self) {
        self.signals.closed.store(true, Ordering::SeqCst);
        self.signals.doorbell.ring_always();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.signals.closed.load(Ordering::Acquire)
    }

    /// A new handle.
    pub(crate) fn add_handle(&self) {
        self.handles.fetch_add(1, Ordering::Relaxed);
    }

    /// A handle went; the last one closes the hand-off.
    pub(crate) fn drop_handle(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.close();
        }
    }

    /// The hand-off's name, as given to the builder.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The metric handles the worker publishes into.
    #[cfg(feature = "metrics")]
    pub(super) fn metrics(&self) -> &HandoffMetrics {
        &self.metrics
    }

    pub(crate) fn capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// Waits until the worker has finished every accepted record after `close`.
    pub(crate) async fn worker_finished(&self) {
        loop {
            let drained = self.drained.notified();
            if self.finished.load(Ordering::Acquire) {
                return;
            }
            drained.await;
        }
    }

    // ===== the worker's side =====

    pub(crate) fn doorbell(&self) -> &Doorbell {
        &self.signals.doorbell
    }

    /// Whether a record is waiting in the queue.
    pub(crate) fn has_queued(&self) -> bool {
        !self.buffer.is_empty()
    }

    pub(crate) fn queued(&self) -> usize {
        self.buffer.len()
    }

    /// Takes the oldest record, in flight until [`finish`](Self::finish) (or
    /// [`park`](Self::park)).
    pub(crate) fn take(&self) -> Option<Envelope<Req>> {
        let request = self.buffer.take()?;
        // Only this worker writes the back counters, each with one `Release` add: a snapshot
        // that sees a record's outcome (or its parking) sees it taken too.
        let taken = self.back.taken.load(Ordering::Relaxed);
        self.back.taken.store(taken + 1, Ordering::Release);
        Some(request)
    }

    /// Counts the outcome of a record [taken](Self::take).
    pub(crate) fn finish(&self, fate: Fate) {
        let back = &*self.back;
        let counter = match fate {
            Fate::Delivered => &back.delivered,
            Fate::Shed => &back.shed,
            Fate::Rejected => &back.rejected,
            Fate::Failed => &back.failed,
            Fate::Expired => &back.expired,
        };
        // One counter moves: the record leaves `in_flight` (derived) as it enters this one.
        counter.fetch_add(1, Ordering::SeqCst);
    }

    /// A record in flight is parked: one counter moves, as in [`finish`](Self::finish).
    pub(crate) fn park(&self) {
        self.signals.parked.fetch_add(1, Ordering::SeqCst);
    }

    /// A parked record goes back into the stack: in flight again.
    pub(crate) fn unpark(&self) {
        self.signals.parked.fetch_sub(1, Ordering::SeqCst);
    }

    /// Counts a record given one more try after a dependency fault.
    pub(crate) fn count_retry(&self) {
        self.back.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves the coarse clock to `now` (the worker, each time it runs).
    pub(crate) fn set_clock(&self, now: Instant) -> u32 {
        let millis = self.millis(now);
        let clock = &self.signals.clock;
        if clock.load(Ordering::Relaxed) != millis {
            clock.store(millis, Ordering::Relaxed);
        }
        millis
    }

    /// Milliseconds from the origin to `now`, wrapping every 49.7 days: ages are differences
    /// (`wrapping_sub`), which stay right as long as they are under 24.8 days.
    pub(crate) fn millis(&self, now: Instant) -> u32 {
        (self.origin.nanos(now) / 1_000_000) as u32
    }

    /// Whether the hand-off is closed and every record it accepted is finished, with no sender
    /// between its reservation and its push. Once true, it stays true.
    ///
    /// `closed` is read first: a sender that reserves after it sees `closed` and takes its
    /// reservation back, and one that reserved before is in `accepted` here.
    pub(crate) fn is_drained(&self) -> bool {
        if !self.signals.closed.load(Ordering::SeqCst) {
            return false;
        }
        seq_cst_point();
        self.front.accepted.load(Ordering::SeqCst) <= self.finished_count()
    }

    /// The worker ends: wake whoever waits in `close`.
    pub(crate) fn worker_ended(&self) {
        self.finished.store(true, Ordering::Release);
        self.drained.notify_waiters();
    }

    /// Records refused so far, for any reason.
    pub(crate) fn dropped(&self) -> u64 {
        self.front.dropped_full.load(Ordering::Acquire)
            + self.front.dropped_closed.load(Ordering::Acquire)
    }

    /// Records accepted and finished, one way or another.
    fn finished_count(&self) -> u64 {
        self.back.delivered.load(Ordering::SeqCst)
            + self.back.shed.load(Ordering::SeqCst)
            + self.back.rejected.load(Ordering::SeqCst)
            + self.back.failed.load(Ordering::SeqCst)
            + self.back.expired.load(Ordering::SeqCst)
    }

    pub(crate) fn counts(&self) -> HandoffCounts {
        // Every record is in exactly one place, and each move changes one counter: finished
        // or parked (read first), in flight (taken and neither: `taken` read after them, so it
        // holds every record they hold), queued (accepted and not taken: `accepted` read last,
        // so it holds every record taken). A record that moves between the reads is counted in
        // the one place the reads saw it, never in two or none: the identity holds exactly in
        // every snapshot, and a miscount by the worker shows as a snapshot that is not balanced.
        let back = &*self.back;
        let delivered = back.delivered.load(Ordering::Acquire);
        let shed = back.shed.load(Ordering::Acquire);
        let rejected = back.rejected.load(Ordering::Acquire);
        let failed = back.failed.load(Ordering::Acquire);
        let expired = back.expired.load(Ordering::Acquire);
        let parked = self.signals.parked.load(Ordering::Acquire);
        let taken = back.taken.load(Ordering::Acquire);
        let retried = back.retried.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed) as u64;
        let accepted = self.front.accepted.load(Ordering::Acquire);
        let held = delivered + shed + rejected + failed + expired + parked;
        // Saturated, a miscount leaves the snapshot unbalanced rather than wrapping.
        let in_flight = taken.saturating_sub(held);
        let queued = accepted.saturating_sub(taken);
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
            expired,
            queued,
            parked,
            in_flight,
            retried,
            bytes,
        }
    }
}

#[cfg(all(test, tanker_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// The worker's side, as the real worker does it: take and deliver what is queued; once
    /// `is_drained`, end; otherwise park with the doorbell's handshake and sleep. If a sender's
    /// record, or the undoing of its reservation, could be missed, the worker would sleep
    /// forever and loom would report a deadlock; if it could end early, a record would be left.
    fn work(shared: &Shared<u32>) {
        loop {
            while shared.take().is_some() {
                shared.finish(Fate::Delivered);
            }
            if shared.is_drained() {
                return;
            }
            shared.doorbell().park();
            if shared.has_queued() || shared.is_drained() {
                shared.doorbell().awake();
                continue;
            }
            shared.doorbell().wait();
        }
    }

    /// A hand-off's shared state with room for `capacity` records and no byte budget.
    fn unweighed(capacity: usize) -> Arc<Shared<u32>> {
        Arc::new(Shared::new(
            capacity,
            std::sync::Arc::from("loom"),
            None,
            usize::MAX,
        ))
    }

    #[track_caller]
    fn assert_balanced(counts: &HandoffCounts) {
        assert!(counts.is_balanced(), "{counts:?}");
        assert_eq!(counts.pending(), 0, "{counts:?}");
        assert_eq!(counts.delivered, counts.accepted, "{counts:?}");
    }

    /// A sender races `close` (and a record already queued): whatever the sender was told, the
    /// identity holds exactly when the worker ends, and every record accepted (before `close` or
    /// while it ran) was delivered.
    #[test]
    fn loom_a_sender_racing_close_is_counted_and_drained() {
        loom::model(|| {
            let shared = unweighed(4);
            assert_eq!(shared.offer(0), Sent::Accepted);
            let sender = {
                let shared = shared.clone();
                thread::spawn(move || shared.offer(1))
            };
            let closer = {
                let shared = shared.clone();
                thread::spawn(move || shared.close())
            };
            work(&shared);
            let told = sender.join().unwrap();
            closer.join().unwrap();
            let counts = shared.counts();
            assert_balanced(&counts);
            let accepted = 1 + u64::from(told == Sent::Accepted);
            assert_eq!(counts.accepted, accepted);
            assert_eq!(counts.offered, 2);
        });
    }

    /// A queue of one: the second sender may find it full (or lose the race for the last place
    /// and take its reservation back) while `close` comes; still nothing is lost or stranded.
    #[test]
    fn loom_a_full_queue_and_close_lose_nothing() {
        loom::model(|| {
            let shared = unweighed(1);
            let sender = {
                let shared = shared.clone();
                thread::spawn(move || {
                    let first = shared.offer(0);
                    let second = shared.offer(1);
                    shared.close();
                    [first, second]
                })
            };
            work(&shared);
            let told = sender.join().unwrap();
            let accepted = told.iter().filter(|s| **s == Sent::Accepted).count() as u64;
            let counts = shared.counts();
            assert_balanced(&counts);
            assert_eq!(counts.accepted, accepted);
            assert_eq!(counts.dropped, 2 - accepted);
        });
    }

    /// A counts snapshot races the worker moving a record through every place it can be
    /// (taken, parked, back in flight, delivered) and a sender's offer: the snapshot is balanced
    /// whatever it sees, and counts every record once. `parked` lives with the senders'
    /// counters and the others with the worker's, so this checks the order of the snapshot's
    /// loads against the order of the worker's moves across both lines.
    #[test]
    fn loom_every_counts_snapshot_is_balanced() {
        loom::model(|| {
            let shared = unweighed(4);
            assert_eq!(shared.offer(0), Sent::Accepted);
            let worker = {
                let shared = shared.clone();
                thread::spawn(move || {
                    shared.take().expect("the first record");
                    shared.park();
                    shared.unpark();
                    shared.finish(Fate::Delivered);
                })
            };
            let sender = {
                let shared = shared.clone();
                thread::spawn(move || shared.offer(1))
            };
            let counts = shared.counts();
            assert!(counts.is_balanced(), "{counts:?}");
            assert!(counts.offered <= 2 && counts.parked <= 1, "{counts:?}");
            worker.join().unwrap();
            assert_eq!(sender.join().unwrap(), Sent::Accepted);
            let counts = shared.counts();
            assert!(counts.is_balanced(), "{counts:?}");
            assert_eq!(
                (
                    counts.delivered,
                    counts.queued,
                    counts.parked,
                    counts.in_flight
                ),
                (1, 1, 0, 0),
                "{counts:?}"
            );
        });
    }

    /// Two senders race for a byte budget that fits exactly one of them, while the worker gives
    /// back the bytes of a third record: never more than the budget is held, a sender is refused
    /// only when the other really holds the room, and every byte comes back.
    #[test]
    fn loom_the_byte_budget_is_exact_under_racing_senders() {
        loom::model(|| {
            let weigh: super::Weigh<u32> = std::sync::Arc::new(|n: &u32| *n as usize);
            let shared = Arc::new(Shared::<u32>::new(
                4,
                std::sync::Arc::from("loom"),
                Some(weigh),
                10,
            ));
            assert_eq!(shared.offer(4), Sent::Accepted);
            let senders: Vec<_> = (0..2)
                .map(|_| {
                    let shared = shared.clone();
                    thread::spawn(move || shared.offer(6))
                })
                .collect();
            // The worker finishes the first record and gives its 4 bytes back.
            let first = shared.take().expect("the first record");
            shared.release_bytes(first.weight());
            shared.finish(Fate::Delivered);
            let sent: Vec<Sent> = senders.into_iter().map(|s| s.join().unwrap()).collect();
            let accepted = sent.iter().filter(|s| **s == Sent::Accepted).count();
            // 6 + 6 > 10: at most one gets in; and once the 4 bytes are back, one always can.
            assert_eq!(accepted, 1, "{sent:?}");
            assert!(shared.bytes.load(Ordering::Relaxed) <= 10);
            while let Some(envelope) = shared.take() {
                shared.release_bytes(envelope.weight());
                shared.finish(Fate::Delivered);
            }
            assert_eq!(shared.bytes.load(Ordering::Relaxed), 0);
        });
    }
}
