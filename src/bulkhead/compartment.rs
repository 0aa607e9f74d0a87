//! The state shared by every service built from one [`BulkheadLayer`](super::BulkheadLayer).

use std::sync::Arc;
use std::time::Duration;

use crate::sync::{AtomicU64, Ordering};

use super::room::{Place, WaitingRoom};
use super::slots::Slots;
use crate::metrics as names;
use crate::telemetry::{Counter, Gauge, Labels, Throttle};

/// One compartment: its slots, its optional waiting room and its counters.
///
/// Every admission decision reads one atomic word ([`Slots`]); admission is one compare-and-swap
/// and release one fetch-sub, with no lock and no allocation.
pub(crate) struct Compartment {
    slots: Slots,
    shed: AtomicU64,
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

/// Publishes `value`, an absolute reading of a counter that `read` reads again, to `gauge`.
///
/// Gauges are set to absolute values (a StatsD exporter drops increments). Two threads may set
/// their readings in the other order than they took them; so each reads again after setting, and
/// sets once more if the count has moved. The last thread to set a value has then read the
/// latest count after its last change, so once the compartment is quiet the gauge shows it.
#[cfg(feature = "metrics")]
#[inline]
fn publish(gauge: &Gauge, mut value: u64, read: impl Fn() -> u64) {
    loop {
        gauge.set(value);
        let now = read();
        if now == value {
            return;
        }
        value = now;
    }
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
            slots: Slots::new(max_in_flight),
            shed: AtomicU64::new(0),
            room: room.map(|(capacity, max_wait)| WaitingRoom::new(capacity, max_wait)),
        }
    }

    /// Takes a slot for a call made now, and counts the call, if a slot is free. Never waits.
    #[inline]
    pub(crate) fn admit(&self) -> bool {
        match self.slots.admit() {
            Some(_taken) => {
                #[cfg(feature = "metrics")]
                self.publish_in_flight(_taken);
                self.metrics.admitted.increment();
                true
            }
            None => false,
        }
    }

    /// Takes a slot to hold for a caller until its call, if one is free.
    pub(crate) fn reserve(&self) -> bool {
        match self.slots.reserve() {
            Some(_taken) => {
                #[cfg(feature = "metrics")]
                self.publish_in_flight(_taken);
                true
            }
            None => false,
        }
    }

    /// Counts the call made with a held slot.
    pub(crate) fn count_admission(&self) {
        self.slots.count_admission();
        self.metrics.admitted.increment();
    }

    /// Gives a slot back, and wakes the waiters if anybody waits.
    #[inline]
    pub(crate) fn release(&self) {
        // SeqCst in both: the fetch-sub, then the load of the room's places, pairs with a
        // waiter's entry (SeqCst) followed by its attempt to take a slot.
        let _taken = self.slots.release();
        #[cfg(feature = "metrics")]
        self.publish_in_flight(_taken);
        if let Some(room) = &self.room {
            if room.occupied() {
                room.wake_all();
            }
        }
    }

    #[cfg(feature = "metrics")]
    #[inline]
    fn publish_in_flight(&self, taken: u64) {
        publish(&self.metrics.in_flight, taken, || self.slots.taken());
    }

    /// Whether every slot is taken (a snapshot of the one word, for shedding early).
    #[inline]
    pub(crate) fn full(&self) -> bool {
        self.slots.full()
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
                    max_in_flight = self.slots.max(),
                    "bulkhead is full, shedding calls"
                );
            }
        }
    }

    pub(crate) fn room(&self) -> Option<&WaitingRoom> {
        self.room.as_ref()
    }

    /// Takes a place in the waiting room, if there is a room with a place free.
    pub(crate) fn enter_room(&self) -> Option<Place> {
        let (place, _waiting) = self.room.as_ref()?.enter()?;
        #[cfg(feature = "metrics")]
        self.publish_waiting(_waiting);
        Some(place)
    }

    /// Gives a place in the waiting room back.
    pub(crate) fn leave_room(&self, place: &Place) {
        if let Some(room) = &self.room {
            if let Some(_waiting) = room.leave(place) {
                #[cfg(feature = "metrics")]
                self.publish_waiting(_waiting);
            }
        }
    }

    #[cfg(feature = "metrics")]
    fn publish_waiting(&self, waiting: u64) {
        publish(&self.metrics.waiting, waiting, || self.waiting());
    }

    /// A waiter took a slot: if slots are still free and others wait, wake them, since no
    /// release will.
    pub(crate) fn pass_on(&self) {
        if let Some(room) = &self.room {
            if !self.slots.full() && room.has_waiters() {
                room.wake_all();
            }
        }
    }

    /// Slots taken now, never more than the capacity.
    pub(crate) fn in_flight(&self) -> u64 {
        self.slots.taken()
    }

    /// Callers in the waiting room whose maximum wait is not over.
    pub(crate) fn waiting(&self) -> u64 {
        self.room.as_ref().map_or(0, WaitingRoom::waiting)
    }

    pub(crate) fn admitted(&self) -> u64 {
        self.slots.admitted()
    }

    pub(crate) fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    pub(crate) fn max_in_flight(&self) -> u64 {
        self.slots.max()
    }
}
