//! One broker as the leaf sees it: whether it stalled, and the handles of its compartment and
//! breaker.
//!
//! The statistics callback (every `statistics.interval.ms`) reads the broker's compartment
//! (records in flight) and the records it answered, and decides whether the broker stalled: it
//! has records in flight and answered none for longer than the threshold. A frozen broker (its
//! connections open, its answers held back) is seen within the threshold plus one interval,
//! long before its records would time out. The send path adds nothing per record: the
//! compartment counts anyway, and the answers are counted by the delivery reports, on
//! librdkafka's polling thread, whoever waits for them (probes and records the caller stopped
//! waiting for included).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::breaker::{BreakerHandle, BreakerState};
use crate::bulkhead::BulkheadHandle;
use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// A broker's node id, as Kafka's metadata gives it.
pub(super) type BrokerId = i32;

/// The id under which the partitions without a leader share one compartment and breaker
/// (Kafka's metadata says `-1` for a partition without a leader). Records that have to go to
/// such a partition (a key or an explicit partition) wait in librdkafka until a leader is
/// elected or they time out: the compartment bounds how many, and its breaker opens on their
/// timeouts, so that a hand-off parks the rest. Records without a key never go there.
pub(super) const NO_LEADER: BrokerId = -1;

/// One broker's counters and health, shared by the send path, the delivery reports and the
/// statistics callback.
pub(super) struct Broker {
    id: BrokerId,
    /// Set by the statistics callback: records in flight and no delivery for too long.
    stalled: AtomicBool,
    /// Records the broker answered, ever: counted by the delivery reports.
    answered: AtomicU64,
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
    /// Records the broker answered (delivered, or refused as the caller's fault), ever.
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
            answered: AtomicU64::new(0),
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

    /// Whether this is a broker, rather than the stand-in for the partitions without a leader
    /// ([`NO_LEADER`]).
    #[inline]
    pub(super) fn is_leader(&self) -> bool {
        self.id != NO_LEADER
    }

    /// Records in the broker's compartment (none before its first routed record), and records
    /// it answered ever.
    pub(super) fn load(&self) -> Load {
        Load {
            in_flight: self
                .guards
                .get()
                .map_or(0, |guards| guards.bulkhead.in_flight() as u64),
            delivered: self.answered.load(Ordering::Relaxed),
        }
    }

    /// The broker answered a record: a delivery report said it was written, or refused it as
    /// the caller's fault. Called on librdkafka's polling thread only.
    #[inline]
    pub(super) fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
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
    /// compartment has room, and its breaker is closed, due for a probe, or half-open with room
    /// for one more probe (so that a broker only keyless records go to is probed, and closes
    /// again, even when it takes several probes). A few atomic loads; the clock is read only
    /// when the breaker is open, its lock taken only while it is half-open.
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
            BreakerState::HalfOpen => guards.breaker.probe_room(),
            BreakerState::ForcedOpen => false,
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

    #[tokio::test(start_paused = true)]
    async fn a_half_open_broker_takes_keyless_records_until_its_probes_are_out() {
        use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

        use crate::breaker::BreakerLayer;
        use crate::bulkhead::BulkheadLayer;

        let breaker = BreakerLayer::builder()
            .consecutive_failures(1)
            .probes(2)
            .build()
            .unwrap();
        let bulkhead = BulkheadLayer::builder().max_in_flight(8).build().unwrap();
        let broker = Broker::new(1, Instant::now());
        broker.set_guards(|| Some(Guards::new(breaker.handle(), bulkhead.handle())));
        // `true` fails at once; `false` is a probe that never answers.
        let mut svc = breaker.layer(service_fn(|fail: bool| async move {
            if fail {
                return Err::<(), BoxError>("down".into());
            }
            std::future::pending().await
        }));
        svc.ready().await.unwrap().call(true).await.unwrap_err();
        let handle = breaker.handle();
        assert_eq!(handle.state(), BreakerState::Open);
        assert!(!broker.takes_keyless(), "cooling down");
        assert!(handle.probe_now());
        assert!(broker.takes_keyless(), "due for a probe");

        let _first = svc.ready().await.unwrap().call(false);
        assert_eq!(handle.state(), BreakerState::HalfOpen);
        assert!(
            broker.takes_keyless(),
            "one probe of two out: the second must find its way there too"
        );
        let _second = svc.ready().await.unwrap().call(false);
        assert!(!broker.takes_keyless(), "both probes out");
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
