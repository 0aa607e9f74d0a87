//! The state shared by every service built from one [`BulkheadLayer`](super::BulkheadLayer).

use std::sync::Arc;
use std::time::Duration;

use crate::sync::{AtomicU64, Ordering};
// The fence of the waiting room's handshake; loom's under `--cfg tanker_loom`, since loom models
// SeqCst fences but treats SeqCst loads and stores as acquire/release.
#[cfg(tanker_loom)]
use loom::sync::atomic::fence;
#[cfg(not(tanker_loom))]
use std::sync::atomic::fence;

use super::room::{Place, WaitingRoom};
use super::slots::Slots;
use crate::metrics as names;
use crate::telemetry::{Counter, Gauge, Labels, Throttle};
use crate::Domain;

/// One compartment: its slots, its optional waiting room and its counters.
///
/// Every admission decision reads one atomic word ([`Slots`]); admission is one compare-and-swap
/// and release one fetch-sub, with no lock and no allocation.
pub(crate) struct Compartment {
    slots: Slots,
    shed: AtomicU64,
    room: Option<WaitingRoom>,
    name: Arc<str>,
    /// Named in its refusals, so that a hand-off parks only what this compartment shed.
    domain: Domain,
    metrics: CompartmentMetrics,
    /// Spaces out the warnings about shedding.
    shed_reports: Throttle,
}

/// The compartment's metric handles (empty without the `metrics` feature).
struct CompartmentMetrics {
    admitted: Counter,
    shed: Counter,
    // Published from the slots' and the room's words, only with the `metrics` feature.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    in_flight: Gauge,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    waiting: Gauge,
}

impl CompartmentMetrics {
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
            metrics: CompartmentMetrics::new(&name, max_in_flight),
            name,
            domain: Domain::new(),
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

    /// Gives a slot back, and wakes the waiters if anybody waits. Returns whether it woke them.
    #[inline]
    pub(crate) fn release(&self) -> bool {
        let _taken = self.slots.release();
        #[cfg(feature = "metrics")]
        self.publish_in_flight(_taken);
        match &self.room {
            // The releaser writes the slots then reads the room; a waiter writes the room then
            // reads the slots. A SeqCst fence between the two on each side makes sure that one
            // of them sees the other: the waiter takes the freed slot, or the releaser wakes it.
            // Only compartments with a waiting room pay for it.
            Some(room)
                if {
                    fence(Ordering::SeqCst);
                    room.occupied()
                } =>
            {
                room.wake_all();
                true
            }
            _ => false,
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
        // The waiter's side of the handshake in `release`: its entry is seen by a releaser, or
        // the slot that releaser freed is seen by its next attempt.
        fence(Ordering::SeqCst);
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

    /// The name given to the builder.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The identity this compartment's refusals carry.
    pub(crate) fn domain(&self) -> Domain {
        self.domain
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

/// Model checks of the compartment's atomics (`scripts/loom.sh`). tokio's `Notify` and the clock
/// are not loom's: the models check what the atomics decide (who gets a slot, whether a releaser
/// sees a waiter), not the wake-up itself, and no place goes stale within a model.
#[cfg(all(test, tanker_loom))]
mod loom_tests {
    use super::*;
    use crate::sync::AtomicUsize;
    use loom::thread;

    fn compartment(max: usize, room: Option<(usize, Duration)>) -> Arc<Compartment> {
        Arc::new(Compartment::new(Arc::from("loom"), max, room))
    }

    /// Callers fewer than the slots never see a shed, and the slots taken never exceed the
    /// capacity, whatever the interleaving of admissions, releases and readers.
    #[test]
    fn loom_admit_release_under_capacity_never_sheds() {
        loom::model(|| {
            let c = compartment(2, None);
            let callers: Vec<_> = (0..2)
                .map(|_| {
                    let c = c.clone();
                    thread::spawn(move || {
                        for _ in 0..2 {
                            assert!(c.admit(), "shed with a slot free");
                            c.release();
                        }
                    })
                })
                .collect();
            let before = c.admitted();
            assert!(c.in_flight() <= 2);
            assert!(c.admitted() >= before, "admitted went backwards");
            for caller in callers {
                caller.join().unwrap();
            }
            assert_eq!(c.in_flight(), 0);
            assert_eq!(c.admitted(), 4);
        });
    }

    /// More callers than slots: never more inside than the capacity, and a caller is refused
    /// only when the slot is really taken.
    #[test]
    fn loom_admit_never_exceeds_max_in_flight() {
        loom::model(|| {
            let c = compartment(1, None);
            let inside = Arc::new(AtomicUsize::new(0));
            let admitted = Arc::new(AtomicUsize::new(0));
            let callers: Vec<_> = (0..2)
                .map(|_| {
                    let (c, inside, admitted) = (c.clone(), inside.clone(), admitted.clone());
                    thread::spawn(move || {
                        if c.admit() {
                            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                            admitted.fetch_add(1, Ordering::SeqCst);
                            inside.fetch_sub(1, Ordering::SeqCst);
                            c.release();
                        }
                    })
                })
                .collect();
            assert!(c.in_flight() <= 1, "a handle read more than max in flight");
            for caller in callers {
                caller.join().unwrap();
            }
            assert!(admitted.load(Ordering::SeqCst) >= 1);
            assert_eq!(c.admitted(), admitted.load(Ordering::SeqCst) as u64);
            assert_eq!(c.in_flight(), 0);
        });
    }

    /// A slot held for a waiter and used for a call later is counted once, when used; the count
    /// never goes backwards and the slots taken stay within the capacity.
    #[test]
    fn loom_reserved_slots_count_once_and_reads_stay_within_max() {
        loom::model(|| {
            let c = compartment(1, Some((1, Duration::from_secs(1))));
            let reserver = {
                let c = c.clone();
                thread::spawn(move || {
                    if c.reserve() {
                        c.count_admission();
                        c.release();
                    }
                })
            };
            let caller = {
                let c = c.clone();
                thread::spawn(move || {
                    if c.admit() {
                        c.release();
                    }
                })
            };
            let first = c.admitted();
            assert!(c.in_flight() <= 1);
            let second = c.admitted();
            assert!(second >= first, "admitted went backwards");
            reserver.join().unwrap();
            caller.join().unwrap();
            assert!((1..=2).contains(&c.admitted()));
            assert_eq!(c.in_flight(), 0);
        });
    }

    /// The waiting room's handshake: a caller enters the room and then tries for a slot, while
    /// the last call releases its slot and then looks for waiters. Either the caller gets the
    /// slot, or the releaser sees the caller (and wakes it); never neither.
    #[test]
    fn loom_release_sees_the_waiter_or_the_waiter_sees_the_slot() {
        loom::model(|| {
            let c = compartment(1, Some((2, Duration::from_secs(3600))));
            assert!(c.admit());
            let releaser = {
                let c = c.clone();
                thread::spawn(move || c.release())
            };
            let place = c.enter_room().expect("the room has a place");
            let got_slot = c.reserve();
            let woke = releaser.join().unwrap();
            assert!(got_slot || woke, "a free slot and a waiter nobody wakes");
            c.leave_room(&place);
            assert_eq!(c.waiting(), 0);
        });
    }

    /// Two waiters entering and leaving at once: the room ends empty, and never counts more
    /// places than its capacity.
    #[test]
    fn loom_room_places_come_back() {
        loom::model(|| {
            let c = compartment(1, Some((1, Duration::from_secs(3600))));
            let other = {
                let c = c.clone();
                thread::spawn(move || {
                    if let Some(place) = c.enter_room() {
                        assert!(c.waiting() <= 1);
                        c.leave_room(&place);
                    }
                })
            };
            if let Some(place) = c.enter_room() {
                assert!(c.waiting() <= 1);
                c.leave_room(&place);
            }
            other.join().unwrap();
            assert_eq!(c.waiting(), 0);
        });
    }
}
