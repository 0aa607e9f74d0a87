//! The state shared by every service built from one [`BulkheadLayer`](super::BulkheadLayer).

use crate::sync::{AtomicU64, AtomicUsize, Ordering};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics as names;
use crate::telemetry::{Counter, Gauge, Labels, Throttle};

/// One compartment: its capacity and its counters.
///
/// The number of slots taken is `taken - released`. Keeping two monotonic counters instead
/// of one up-down counter gives the `admitted` statistic for free: admission is one
/// compare-and-swap, release is one fetch-add, and neither takes a lock or allocates.
pub(crate) struct Compartment {
    taken: AtomicU64,
    released: AtomicU64,
    /// Slots taken by a waiting caller and given back without a call.
    unused: AtomicU64,
    /// Until when (nanoseconds after `origin`) the callers in the waiting room may still claim a
    /// freed slot: the latest end of their maximum waits.
    claim_until: AtomicU64,
    origin: Instant,
    shed: AtomicU64,
    waiting: AtomicUsize,
    max_in_flight: u64,
    room: Option<WaitingRoom>,
    pub(crate) name: Arc<str>,
    metrics: Metrics,
    /// Spaces out the warnings about shedding.
    shed_reports: Throttle,
}

/// The compartment's metric handles (empty without the `metrics` feature).
struct Metrics {
    admitted: Counter,
    shed: Counter,
    in_flight: Gauge,
    waiting: Gauge,
}

impl Metrics {
    fn new(name: &str, max_in_flight: usize) -> Self {
        let labels = Labels::new("bulkhead", name);
        labels
            .gauge(
                names::BULKHEAD_MAX_IN_FLIGHT,
                "the most calls a bulkhead lets in flight",
            )
            .set(max_in_flight as u64);
        Self {
            admitted: labels.counter(names::BULKHEAD_ADMITTED, "calls a bulkhead let through"),
            shed: labels.counter(names::BULKHEAD_SHED, "calls a bulkhead shed"),
            in_flight: labels.gauge(names::BULKHEAD_IN_FLIGHT, "a bulkhead's slots taken"),
            waiting: labels.gauge(
                names::BULKHEAD_WAITING,
                "callers in a bulkhead's waiting room",
            ),
        }
    }
}

pub(crate) struct WaitingRoom {
    pub(crate) capacity: usize,
    pub(crate) max_wait: Duration,
    pub(crate) notify: Arc<Notify>,
}

impl Compartment {
    pub(crate) fn new(
        name: Arc<str>,
        max_in_flight: usize,
        room: Option<(usize, Duration)>,
    ) -> Self {
        Self {
            metrics: Metrics::new(&name, max_in_flight),
            name,
            shed_reports: Throttle::new(),
            taken: AtomicU64::new(0),
            released: AtomicU64::new(0),
            unused: AtomicU64::new(0),
            claim_until: AtomicU64::new(0),
            origin: Instant::now(),
            shed: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            max_in_flight: max_in_flight as u64,
            room: room.map(|(capacity, max_wait)| WaitingRoom {
                capacity,
                max_wait,
                notify: Arc::new(Notify::new()),
            }),
        }
    }

    /// Takes a slot if one is free. Never waits.
    #[inline]
    pub(crate) fn try_admit(&self) -> bool {
        loop {
            // Read `released` before `taken`: every release follows its taking, so this order
            // can only overestimate the slots in use, never admit one too many.
            let released = self.released.load(Ordering::SeqCst);
            let taken = self.taken.load(Ordering::Relaxed);
            if taken.wrapping_sub(released) >= self.max_in_flight {
                return false;
            }
            if self
                .taken
                .compare_exchange_weak(taken, taken + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.metrics.in_flight.increment();
                return true;
            }
        }
    }

    /// Gives a slot back, and wakes one waiter if anybody waits.
    #[inline]
    pub(crate) fn release(&self) {
        // SeqCst pairs with the waiter's SeqCst increment of `waiting` followed by its
        // `try_admit`: either the waiter sees this release, or this release sees the waiter.
        self.released.fetch_add(1, Ordering::SeqCst);
        self.metrics.in_flight.decrement();
        self.wake_one();
    }

    /// Whether callers wait in the waiting room: a freed slot is theirs, not a newcomer's. The
    /// clock is read only when somebody waits.
    #[inline]
    pub(crate) fn has_waiters(&self) -> bool {
        self.room.is_some()
            && self.waiting.load(Ordering::SeqCst) > 0
            && self.nanos(Instant::now()) < self.claim_until.load(Ordering::SeqCst)
    }

    /// Whether every slot looks taken (a snapshot, for shedding early).
    #[inline]
    pub(crate) fn looks_full(&self) -> bool {
        let released = self.released.load(Ordering::SeqCst);
        let taken = self.taken.load(Ordering::Relaxed);
        taken.wrapping_sub(released) >= self.max_in_flight
    }

    /// Gives back a slot a waiting caller took but never used for a call (the inner service was
    /// not ready, or the service holding it was dropped). It is not counted as admitted.
    pub(crate) fn give_back_unused(&self) {
        self.unused.fetch_add(1, Ordering::Relaxed);
        self.release();
    }

    #[inline]
    fn wake_one(&self) {
        if let Some(room) = &self.room {
            if self.waiting.load(Ordering::SeqCst) > 0 {
                room.notify.notify_one();
            }
        }
    }

    /// Counts a call made with the slot it took.
    #[inline]
    pub(crate) fn record_admitted(&self) {
        self.metrics.admitted.increment();
    }

    pub(crate) fn record_shed(&self) {
        let shed = self.shed.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.shed.increment();
        // One warning a second at most, with the count since the last one. The clock is read
        // only if the warning would be logged.
        if tracing::enabled!(tracing::Level::WARN) {
            if let Some(since) = self.shed_reports.due(shed) {
                tracing::warn!(
                    bulkhead = &*self.name,
                    shed = since,
                    shed_total = shed,
                    in_flight = self.in_flight(),
                    max_in_flight = self.max_in_flight,
                    "bulkhead is full, shedding calls"
                );
            }
        }
    }

    pub(crate) fn room(&self) -> Option<&WaitingRoom> {
        self.room.as_ref()
    }

    /// Takes a place in the waiting room if there is one free, and says whether others were
    /// already waiting (then the newcomer waits for its turn rather than grabbing a slot).
    pub(crate) fn try_enter_room(&self) -> Option<bool> {
        let room = self.room.as_ref()?;
        let mut waiting = self.waiting.load(Ordering::Relaxed);
        loop {
            if waiting >= room.capacity {
                return None;
            }
            match self.waiting.compare_exchange_weak(
                waiting,
                waiting + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => waiting = now,
            }
        }
        self.metrics.waiting.increment();
        // Waiters have a claim on freed slots only until their maximum wait is over, so that a
        // caller that gave up without dropping its handle cannot keep newcomers out.
        let until = self.nanos(Instant::now() + room.max_wait);
        self.claim_until.fetch_max(until, Ordering::SeqCst);
        Some(waiting > 0)
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A waiter got a slot: if slots are still free and others wait, wake the next one, since
    /// no release will.
    pub(crate) fn pass_on(&self) {
        if let Some(room) = &self.room {
            if self.has_waiters() && !self.looks_full() {
                room.notify.notify_one();
            }
        }
    }

    pub(crate) fn leave_room(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.metrics.waiting.decrement();
    }

    fn in_flight(&self) -> u64 {
        let released = self.released.load(Ordering::SeqCst);
        let taken = self.taken.load(Ordering::SeqCst);
        taken.saturating_sub(released)
    }
}

/// A read-only view of a compartment's counters, for metrics and health checks.
///
/// Obtained from [`BulkheadLayer::handle`](super::BulkheadLayer::handle) or
/// [`Bulkhead::handle`](super::Bulkhead::handle); cheap to clone. Every service built from the same
/// layer value reports through the same handle.
#[derive(Clone)]
pub struct BulkheadHandle {
    pub(crate) compartment: Arc<Compartment>,
}

impl BulkheadHandle {
    /// The compartment's name, as given to the builder (it labels log events and metrics).
    pub fn name(&self) -> &str {
        &self.compartment.name
    }

    /// Calls admitted and not yet finished (and slots held by callers that waited in the waiting
    /// room, between their `poll_ready` and their `call`).
    pub fn in_flight(&self) -> usize {
        self.compartment.in_flight() as usize
    }

    /// Callers waiting in the waiting room for a slot.
    pub fn waiting(&self) -> usize {
        self.compartment.waiting.load(Ordering::Relaxed)
    }

    /// Calls admitted to the inner service since the compartment was built.
    ///
    /// Without a waiting room this counts exactly the calls made. With one, a caller that waited
    /// holds its slot from `poll_ready` to `call` and is counted from `poll_ready`; if it drops
    /// the slot unused, the count goes back down by one.
    pub fn admitted(&self) -> u64 {
        let unused = self.compartment.unused.load(Ordering::Relaxed);
        self.compartment.taken.load(Ordering::Relaxed) - unused
    }

    /// Calls shed (rejected with [`BulkheadFull`](super::BulkheadFull)) since the compartment was
    /// built.
    pub fn shed(&self) -> u64 {
        self.compartment.shed.load(Ordering::Relaxed)
    }

    /// The configured maximum number of calls in flight.
    pub fn max_in_flight(&self) -> usize {
        self.compartment.max_in_flight as usize
    }
}

impl fmt::Debug for BulkheadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadHandle")
            .field("name", &self.name())
            .field("in_flight", &self.in_flight())
            .field("max_in_flight", &self.max_in_flight())
            .field("waiting", &self.waiting())
            .field("admitted", &self.admitted())
            .field("shed", &self.shed())
            .finish()
    }
}
