//! One broker as the leaf sees it: whether it stalled, and the handles of its compartment and
//! breaker.
//!
//! The statistics callback (every `statistics.interval.ms`) reads the broker's compartment
//! (records in flight) and breaker (records delivered, ever), and decides whether the broker
//! stalled: it has records in flight and delivered none for longer than the threshold. A frozen
//! broker (its connections open, its answers held back) is seen within the threshold plus one
//! interval, long before its records would time out. The send path adds nothing per record:
//! the compartment and the breaker count anyway.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::breaker::{BreakerHandle, BreakerState};
use crate::bulkhead::BulkheadHandle;
use crate::sync::{AtomicBool, Ordering};

/// A broker's node id, as Kafka's metadata gives it.
pub(super) type BrokerId = i32;

/// One broker's counters and health, shared by the send path, the delivery reports and the
/// statistics callback.
pub(super) struct Broker {
    id: BrokerId,
    /// Set by the statistics callback: records in flight and no delivery for too long.
    stalled: AtomicBool,
    /// The broker's compartment and breaker, known after its first routed call.
    guards: OnceLock<Guards>,
    /// What the statistics callback remembers between two of its runs.
    watch: Mutex<Watch>,
}

/// The handles of a broker's compartment and breaker: its guards.
pub(super) struct Guards {
    breaker: BreakerHandle,
    bulkhead: BulkheadHandle,
}

impl Guards {
    pub(super) fn new(breaker: BreakerHandle, bulkhead: BulkheadHandle) -> Self {
        Self { breaker, bulkhead }
    }
}

struct Watch {
    /// `delivered` at the last run.
    delivered: u64,
    /// Since when the broker has had records in flight and delivered none.
    quiet_since: Instant,
    /// Where the broker stood in librdkafka's report at the last run.
    presence: Option<Presence>,
}

/// Where a broker stands in librdkafka's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    /// Not in the report: the cluster's metadata stopped listing it (it went down).
    Absent,
    /// In the report, without a connection up (librdkafka connects to a broker only when it
    /// has something to send there).
    Listed,
    /// In the report, its connection up.
    Up,
}

impl Presence {
    /// Whether going from `self` to `now` means the broker is back: listed again after it left
    /// the metadata, or connected again after its connection went down.
    fn is_return(self, now: Presence) -> bool {
        matches!(
            (self, now),
            (Presence::Absent, Presence::Listed | Presence::Up) | (Presence::Listed, Presence::Up)
        )
    }
}

/// What a broker holds and has delivered, read by the statistics callback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Load {
    /// Records in flight to the broker.
    pub(super) in_flight: u64,
    /// Records the broker confirmed, ever.
    pub(super) delivered: u64,
}

/// What a run of the statistics callback found out about a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    /// The broker came back since the last run: listed again, or connected again.
    pub(super) came_up: bool,
    /// The broker stalled at this run (it was not stalled at the last one).
    pub(super) stalled: bool,
}

impl Broker {
    pub(super) fn new(id: BrokerId, now: Instant) -> Self {
        Self {
            id,
            stalled: AtomicBool::new(false),
            guards: OnceLock::new(),
            watch: Mutex::new(Watch {
                delivered: 0,
                quiet_since: now,
                presence: None,
            }),
        }
    }

    pub(super) fn id(&self) -> BrokerId {
        self.id
    }

    /// Records in the broker's compartment, and records it delivered ever (its breaker's
    /// successes); zeros before its first routed record.
    pub(super) fn load(&self) -> Load {
        self.guards.get().map_or_else(Load::default, |guards| Load {
            in_flight: guards.bulkhead.in_flight() as u64,
            delivered: guards.breaker.counts().successes,
        })
    }

    /// Whether the broker has records in flight and delivered none for longer than the
    /// threshold, at the last run of the statistics callback.
    pub(super) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Remembers the handles of the broker's compartment and breaker (once).
    pub(super) fn set_guards(&self, guards: impl FnOnce() -> Option<Guards>) {
        if self.guards.get().is_none() {
            if let Some(guards) = guards() {
                let _ = self.guards.set(guards);
            }
        }
    }

    /// Whether the broker's guards are known (after its first routed call).
    pub(super) fn has_guards(&self) -> bool {
        self.guards.get().is_some()
    }

    /// Whether a record without a key may go to this broker: it has not stalled, its
    /// compartment has room, and its breaker is closed or due for a probe (so that a broker
    /// only keyless records go to is probed too). A few atomic loads; the clock is read only
    /// when the breaker is open.
    ///
    /// The loads are not one consistent view, and need not be: this only steers a record
    /// without a key. A record steered to a broker that filled or opened meanwhile is decided
    /// exactly by that broker's compartment and breaker (each admits from one atomic word), so
    /// the worst a race costs is one refusal that the hand-off parks.
    #[inline]
    pub(super) fn takes_keyless(&self) -> bool {
        if self.stalled() {
            return false;
        }
        let Some(guards) = self.guards.get() else {
            return true;
        };
        if guards.bulkhead.in_flight() >= guards.bulkhead.max_in_flight() {
            return false;
        }
        match guards.breaker.state() {
            BreakerState::Closed | BreakerState::ForcedClosed => true,
            BreakerState::Open => guards.breaker.probe_due(),
            BreakerState::HalfOpen | BreakerState::ForcedOpen => false,
        }
    }

    /// Ends the cool-down of the broker's breaker, if it is open: its next record is a probe.
    pub(super) fn probe_now(&self) {
        if let Some(guards) = self.guards.get() {
            if guards.breaker.probe_now() {
                tracing::info!(
                    breaker = guards.breaker.name(),
                    "kafka broker may be back: its breaker probes now"
                );
            }
        }
    }

    /// One run of the statistics callback for this broker, at `now`: `presence` is where
    /// librdkafka's report has it, `load` what it holds and delivered. Decides whether it
    /// stalled, and whether it came back.
    pub(super) fn watch(
        &self,
        now: Instant,
        presence: Presence,
        load: Load,
        stall_after: Duration,
    ) -> Seen {
        // A poisoned lock only means a callback panicked; the remembered values are whole.
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        if load.in_flight == 0 || load.delivered != watch.delivered {
            watch.delivered = load.delivered;
            watch.quiet_since = now;
        }
        let stalled = now.saturating_duration_since(watch.quiet_since) >= stall_after;
        let was_stalled = self.stalled.swap(stalled, Ordering::Relaxed);
        let came_up = watch
            .presence
            .is_some_and(|before| before.is_return(presence));
        watch.presence = Some(presence);
        drop(watch);
        Seen {
            came_up,
            stalled: stalled && !was_stalled,
        }
    }
}

/// Every broker the statistics callback has seen, by id; brokers are never forgotten (a
/// cluster has few, and a broker that leaves usually comes back).
#[derive(Default)]
pub(super) struct Brokers {
    known: Mutex<Vec<Arc<Broker>>>,
}

impl Brokers {
    /// The broker `id`, added if it is new.
    pub(super) fn get(&self, id: BrokerId, now: Instant) -> Arc<Broker> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(broker) = known.iter().find(|b| b.id == id) {
            return broker.clone();
        }
        let broker = Arc::new(Broker::new(id, now));
        known.push(broker.clone());
        broker
    }

    /// Every broker seen so far.
    pub(super) fn all(&self) -> Vec<Arc<Broker>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_millis(500);
    const UP: Presence = Presence::Up;

    fn load(in_flight: u64, delivered: u64) -> Load {
        Load {
            in_flight,
            delivered,
        }
    }

    #[test]
    fn a_broker_with_records_and_no_delivery_stalls_after_the_threshold() {
        let t0 = Instant::now();
        let broker = Broker::new(1, t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(!broker.watch(t0, UP, load(1, 0), STALL).stalled);
        let seen = broker.watch(at(400), UP, load(1, 0), STALL);
        assert!(!seen.stalled && !broker.stalled());
        let seen = broker.watch(at(600), UP, load(5, 0), STALL);
        assert!(seen.stalled, "first run past the threshold says so");
        assert!(broker.stalled() && !broker.takes_keyless());
        let again = broker.watch(at(700), UP, load(5, 0), STALL);
        assert!(
            !again.stalled && broker.stalled(),
            "said once, still stalled"
        );
        // A delivery is progress: no longer stalled.
        broker.watch(at(800), UP, load(5, 1), STALL);
        assert!(!broker.stalled() && broker.takes_keyless());
    }

    #[test]
    fn a_broker_with_nothing_in_flight_never_stalls() {
        let t0 = Instant::now();
        let broker = Broker::new(1, t0);
        let at = |s| t0 + Duration::from_secs(s);
        broker.watch(at(10), UP, load(0, 0), STALL);
        assert!(!broker.stalled());
        broker.watch(at(11), UP, load(3, 0), STALL);
        broker.watch(at(12), UP, load(3, 0), STALL);
        assert!(broker.stalled());
        // Its records failed (timed out): nothing in flight any more, not stalled.
        broker.watch(at(13), UP, load(0, 0), STALL);
        assert!(!broker.stalled());
    }

    #[test]
    fn coming_back_is_seen_once_after_being_down_or_gone() {
        let t0 = Instant::now();
        let broker = Broker::new(1, t0);
        let idle = Load::default();
        let back = |presence| broker.watch(t0, presence, idle, STALL).came_up;
        assert!(!back(UP), "first sight is no return");
        assert!(!back(Presence::Listed), "its connection went down");
        assert!(back(UP), "connected again");
        assert!(!back(UP));
        assert!(!back(Presence::Absent), "it left the metadata");
        assert!(back(Presence::Listed), "listed again, not connected yet");
        // Connecting after that says it again: harmless, since `probe_now` leaves a breaker
        // that is already probing (or closed) as it is.
        assert!(back(UP));
    }

    #[test]
    fn brokers_are_kept_by_id() {
        let brokers = Brokers::default();
        let now = Instant::now();
        let one = brokers.get(1, now);
        assert!(Arc::ptr_eq(&one, &brokers.get(1, now)));
        assert_eq!(brokers.get(2, now).id(), 2);
        assert_eq!(brokers.all().len(), 2);
    }
}
