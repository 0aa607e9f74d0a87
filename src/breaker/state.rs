//! The breaker's state machine, apart from the sliding window: pure, with time passed in.
//!
//! [`Machine`] decides what happens when the breaker trips, when a call arrives while it is not
//! closed, and when a probe finishes. It owns no clock and no runtime, so it is tested by handing
//! it instants. The service keeps it behind a mutex that the closed path never takes.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::policy::{Policy, TripReason};

/// The state of a breaker, as its handle reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; outcomes are counted and may trip the breaker.
    Closed,
    /// Calls are rejected at once until the cool-down ends.
    Open,
    /// A bounded number of probe calls go through; the rest are rejected.
    HalfOpen,
    /// An operator forced the breaker open: every call is rejected until it is reset.
    ForcedOpen,
    /// An operator disabled the breaker: every call goes through, nothing is counted, it never
    /// trips, until it is reset.
    ForcedClosed,
}

impl BreakerState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
            Self::ForcedOpen => "forced-open",
            Self::ForcedClosed => "forced-closed",
        }
    }

    /// The state as a metric label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
        }
    }

    /// Every state, in the order of their bits.
    pub(crate) const ALL: [Self; 5] = [
        Self::Closed,
        Self::Open,
        Self::HalfOpen,
        Self::ForcedOpen,
        Self::ForcedClosed,
    ];

    pub(crate) const fn bits(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::ForcedOpen => 3,
            Self::ForcedClosed => 4,
        }
    }

    /// The state of `bits`, as [`bits`](Self::bits) gives them (the state word masks them).
    pub(crate) const fn from_bits(bits: u64) -> Self {
        match bits {
            0 => Self::Closed,
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            _ => Self::ForcedClosed,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a call that arrives while the breaker is not closed may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go through as an ordinary call of this generation.
    Call { generation: u64 },
    /// Go through as a probe of this generation, known by `id`.
    Probe { generation: u64, id: u64 },
    /// Go through without being counted (the breaker is forced closed, in this generation).
    Bypass { generation: u64 },
    /// Be rejected; a probe may be possible after this long (`None`: not before a reset).
    Reject { retry_after: Option<Duration> },
}

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeEnd {
    Success,
    Failure,
    /// Ignored by the classifier, or dropped before it finished: frees the probe's place only.
    Abandoned,
}

/// Why the state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The breaker tripped (or tripped again).
    Trip(TripReason),
    /// The cool-down ended and a call arrived.
    CoolDownOver,
    /// Every probe of a half-open period succeeded.
    ProbesSucceeded,
    /// An operator forced the state.
    Forced,
    /// An operator reset the breaker.
    Reset,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Trip(trip) => trip.as_str(),
            Self::CoolDownOver => "cool-down over",
            Self::ProbesSucceeded => "probes succeeded",
            Self::Forced => "forced by operator",
            Self::Reset => "reset by operator",
        }
    }
}

/// A change of state, for the caller to publish (atomics, window, events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: BreakerState,
    pub(crate) to: BreakerState,
    pub(crate) generation: u64,
    /// For a transition to `Open`: how long the cool-down is.
    pub(crate) open_for: Option<Duration>,
    pub(crate) reason: Reason,
}

/// A probe in the dependency: admitted in `generation` at `admitted`, known by `id`.
#[derive(Debug, Clone, Copy)]
struct Probe {
    id: u64,
    generation: u64,
    admitted: Instant,
}

#[derive(Debug)]
pub(crate) struct Machine {
    state: BreakerState,
    /// Incremented on every transition; outcomes of calls admitted in an older generation are
    /// not counted.
    generation: u64,
    /// Consecutive trips without closing in between; drives the back-off.
    trips: u32,
    open_until: Instant,
    /// Every probe still in the dependency, of this half-open period or of an earlier one: a
    /// reopening does not end a call, so the places stay taken until each probe ends.
    probes: Vec<Probe>,
    next_probe: u64,
    probe_successes: u32,
    last_transition: Instant,
    rng: u64,
}

impl Machine {
    pub(crate) fn new(now: Instant, seed: u64) -> Self {
        Self {
            state: BreakerState::Closed,
            generation: 0,
            trips: 0,
            open_until: now,
            probes: Vec::new(),
            next_probe: 0,
            probe_successes: 0,
            last_transition: now,
            // splitmix64 needs any seed but zero is as good as any other.
            rng: seed,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    #[cfg(test)]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn last_transition(&self) -> Instant {
        self.last_transition
    }

    pub(crate) fn open_until(&self) -> Instant {
        self.open_until
    }

    pub(crate) fn probes_in_flight(&self) -> u32 {
        self.probes.len() as u32
    }

    fn move_to(
        &mut self,
        now: Instant,
        to: BreakerState,
        open_for: Option<Duration>,
        reason: Reason,
    ) -> Transition {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        self.last_transition = now;
        // The probes still running keep their places (see `probes`); only their outcomes stop
        // counting, as they belong to an older generation.
        self.probe_successes = 0;
        Transition {
            from,
            to,
            generation: self.generation,
            open_for,
            reason,
        }
    }

    fn open(&mut self, now: Instant, policy: &Policy, reason: TripReason) -> Transition {
        self.trips = self.trips.saturating_add(1);
        let open_for = self.cool_down(policy);
        // The policy's durations are clamped far below the end of `Instant`'s range.
        self.open_until = now + open_for;
        self.move_to(
            now,
            BreakerState::Open,
            Some(open_for),
            Reason::Trip(reason),
        )
    }

    /// The cool-down after the current number of consecutive trips.
    fn cool_down(&mut self, policy: &Policy) -> Duration {
        policy.cool_down(self.trips, || self.next_unit())
    }

    /// A number in `[0, 1)` (splitmix64).
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The closed breaker's thresholds were crossed by a call of `generation`.
    pub(crate) fn trip(
        &mut self,
        now: Instant,
        generation: u64,
        policy: &Policy,
        reason: TripReason,
    ) -> Option<Transition> {
        (self.state == BreakerState::Closed && self.generation == generation)
            .then(|| self.open(now, policy, reason))
    }

    /// Decides for a call that found the breaker not closed (or that raced with a transition).
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        policy: &Policy,
    ) -> (Admission, Option<Transition>) {
        match self.state {
            BreakerState::Closed => (
                Admission::Call {
                    generation: self.generation,
                },
                None,
            ),
            BreakerState::ForcedClosed => (
                Admission::Bypass {
                    generation: self.generation,
                },
                None,
            ),
            BreakerState::ForcedOpen => (Admission::Reject { retry_after: None }, None),
            BreakerState::Open if now < self.open_until => (
                Admission::Reject {
                    retry_after: Some(self.open_until - now),
                },
                None,
            ),
            BreakerState::Open => {
                let half_open =
                    self.move_to(now, BreakerState::HalfOpen, None, Reason::CoolDownOver);
                match self.admit_half_open(now, policy) {
                    // Every place is still held by a probe that outlived its timeout: the
                    // dependency has not answered yet, so the breaker stays open (one
                    // transition, open to open, with a longer cool-down).
                    (admission, Some(reopened)) => (
                        admission,
                        Some(Transition {
                            from: BreakerState::Open,
                            ..reopened
                        }),
                    ),
                    (admission, None) => (admission, Some(half_open)),
                }
            }
            BreakerState::HalfOpen => self.admit_half_open(now, policy),
        }
    }

    /// Decides for a call while half-open. At most `policy.probes` probes are ever in the
    /// dependency, counting those of earlier half-open periods that are still running.
    fn admit_half_open(
        &mut self,
        now: Instant,
        policy: &Policy,
    ) -> (Admission, Option<Transition>) {
        let deadline = |probe: &Probe| probe.admitted + policy.probe_timeout();
        let overdue = self
            .probes
            .iter()
            .any(|probe| probe.generation == self.generation && now >= deadline(probe));
        let full = self.probes.len() >= policy.probes() as usize;
        let first_deadline = self.probes.iter().map(deadline).min();
        // A probe of this period did not finish in time, or every place is held by probes that
        // outlived their timeout: count it as a failed probe.
        if overdue || (full && first_deadline.is_some_and(|deadline| now >= deadline)) {
            let transition = self.open(now, policy, TripReason::ProbeTimedOut);
            let retry_after = Some(self.open_until - now);
            return (Admission::Reject { retry_after }, Some(transition));
        }
        if !full {
            return (self.take_probe(now), None);
        }
        // Every place is taken; the oldest probe times out at the latest by then.
        let retry_after = first_deadline.map(|deadline| deadline - now);
        (Admission::Reject { retry_after }, None)
    }

    fn take_probe(&mut self, now: Instant) -> Admission {
        let id = self.next_probe;
        self.next_probe += 1;
        self.probes.push(Probe {
            id,
            generation: self.generation,
            admitted: now,
        });
        Admission::Probe {
            generation: self.generation,
            id,
        }
    }

    /// The probe `id` of `generation` finished (or was abandoned): its place is free, whatever
    /// the state; its outcome counts only in its own half-open period.
    pub(crate) fn probe_done(
        &mut self,
        now: Instant,
        generation: u64,
        id: u64,
        end: ProbeEnd,
        policy: &Policy,
    ) -> Option<Transition> {
        let place = self.probes.iter().position(|probe| probe.id == id)?;
        self.probes.swap_remove(place);
        if self.state != BreakerState::HalfOpen || self.generation != generation {
            return None;
        }
        match end {
            ProbeEnd::Abandoned => None,
            ProbeEnd::Failure => Some(self.open(now, policy, TripReason::ProbeFailed)),
            ProbeEnd::Success => {
                self.probe_successes += 1;
                (self.probe_successes >= policy.probes()).then(|| {
                    self.trips = 0;
                    self.move_to(now, BreakerState::Closed, None, Reason::ProbesSucceeded)
                })
            }
        }
    }

    /// Ends an open breaker's cool-down at `now`, so that the next call is a probe. Returns
    /// whether the breaker was open and waiting; any other state is left as it is.
    pub(crate) fn end_cool_down(&mut self, now: Instant) -> bool {
        if self.state != BreakerState::Open || now >= self.open_until {
            return false;
        }
        self.open_until = now;
        true
    }

    pub(crate) fn force(&mut self, now: Instant, to: BreakerState) -> Transition {
        self.move_to(now, to, None, Reason::Forced)
    }

    pub(crate) fn reset(&mut self, now: Instant) -> Transition {
        self.trips = 0;
        self.move_to(now, BreakerState::Closed, None, Reason::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let mut policy = Policy::default();
        policy
            .set_open_for(Duration::from_secs(1))
            .set_backoff(2.0, Duration::from_secs(5))
            .set_jitter(0.0)
            .set_probes(2)
            .set_probe_timeout(Duration::from_secs(10));
        policy
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    const X: TripReason = TripReason::FailureRate;

    #[test]
    fn trips_only_from_closed_and_the_same_generation() {
        let p = policy();
        let t0 = Instant::now();
        let mut m = Machine::new(t0, 1);
        assert!(m.trip(t0, 7, &p, X).is_none(), "stale generation");
        let t = m.trip(t0, 0, &p, X).expect("trips");
        assert_eq!(
            (t.from, t.to, t.open_for),
            (BreakerState::Closed, BreakerState::Open, Some(secs(1)))
        );
        assert!(m.trip(t0, t.generation, &p, X).is_none(), "already open");
    }

    #[test]
    fn open_rejects_with_time_left_then_lets_probes_through() {
        let p = policy();
        let t0 = Instant::now();
        let mut m = Machine::new(t0, 1);
        m.trip(t0, 0, &p, X);
        let (admission, _) = m.admit(t0 + Duration::from_millis(400), &p);
        assert_eq!(
            admission,
            Admission::Reject {
                retry_after: Some(Duration::from_millis(600))
            }
        );
        let (a, t) = m.admit(t0 + secs(1), &p);
        assert!(matches!(a, Admission::Probe { .. }));
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        let (b, _) = m.admit(t0 + secs(1), &p);
        assert!(matches!(b, Admission::Probe { .. }));
        // No storm: the third caller is rejected.
        let (c, _) = m.admit(t0 + secs(1), &p);
        assert!(matches!(c, Admission::Reject { .. }));
    }

    #[test]
    fn ending_the_cool_down_lets_the_next_call_probe_at_once() {
        let p = policy();
        let t0 = Instant::now();
        let mut m = Machine::new(t0, 1);
        assert!(!m.end_cool_down(t0), "a closed breaker has no cool-down");
        m.trip(t0, 0, &p, X);
        let early = t0 + Duration::from_millis(100);
        assert!(m.end_cool_down(early));
        assert_eq!(m.state(), BreakerState::Open, "no transition by itself");
        let (admission, transition) = m.admit(early, &p);
        assert!(
            matches!(admission, Admission::Probe { .. }),
            "{admission:?}"
        );
        assert_eq!(transition.unwrap().to, BreakerState::HalfOpen);
        assert!(!m.end_cool_down(early), "half-open: its probes decide");
    }

    #[test]
    fn all_probes_must_succeed_to_close() {
        let p = policy();
        let t0 = Instant::now();
        let mut m = Machine::new(t0, 1);
        m.trip(t0, 0, &p, X);
        let (Admission::Probe { generation, id }, _) = m.admit(t0 + secs(1), &p) else {
            panic!()
        };
        assert!(m
            .probe_done(t0 + secs(1), generation, id, ProbeEnd::Success, &p)
            .is_none());
        let (Admission::Probe { generation, id }, _) = m.admit(t0 + secs(1), &p) else {
            panic!()
        };
        let t = m
            .probe_done(t0 + secs(1), generation, id, ProbeEnd::Success, &p)
            .unwrap();
        assert_eq!(t.to, BreakerState::Closed);
        assert_eq!(m.state(), BreakerState::Closed);
    }

    #[test]
    fn cool_down_grows_to_the_cap_and_resets_on_close() {
        let p = policy();
        let mut now = Instant::now();
        let mut m = Machine::new(now, 1);
        let mut seen = Vec::new();
        let mut generation = 0;
        for _ in 0..5 {
            let t = m.trip(now, generation, &p, X).or_else(|| {
                let (a, _) = m.admit(now, &p);
                let Admission::Probe { generation, id } = a else {
                    panic!()
                };
                m.probe_done(now, generation, id, ProbeEnd::Failure, &p)
            });
            let t = t.unwrap();
            seen.push(t.open_for.unwrap());
            now += t.open_for.unwrap();
            generation = t.generation;
        }
        assert_eq!(seen, [secs(1), secs(2), secs(4), secs(5), secs(5)]);
    }

    #[test]
    fn abandoned_probe_frees_its_place_without_an_outcome() {
        let p = policy();
        let t0 = Instant::now();
        let mut m = Machine::new(t0, 1);
        m.trip(t0, 0, &p, X);
        let (Admission::Probe { generation, id }, _) = m.admit(t0 + secs(1), &p) else {
            panic!()
        };
        m.admit(t0 + secs(1), &p);
        assert_eq!(m.probes_in_flight(), 2);
        assert!(m
            .probe_done(t0 + secs(1), generation, id, ProbeEnd::Abandoned, &p)
            .is_none());
        assert_eq!(m.probes_in_flight(), 1);
        assert_eq!(m.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn probes_that_never_finish_reopen_the_breaker_after_the_probe_timeout() {
        let p = policy();
        let t0 = Instant::now();
        let mut m = Machine::new(t0, 1);
        m.trip(t0, 0, &p, X);
        m.admit(t0 + secs(1), &p);
        m.admit(t0 + secs(1), &p);
        // Both places taken: the next place frees up when the first probe times out.
        let (full, _) = m.admit(t0 + secs(4), &p);
        assert_eq!(
            full,
            Admission::Reject {
                retry_after: Some(secs(7))
            }
        );
        let (a, t) = m.admit(t0 + secs(11), &p);
        assert_eq!(t.unwrap().to, BreakerState::Open);
        // Second trip in a row: twice the cool-down.
        assert_eq!(
            a,
            Admission::Reject {
                retry_after: Some(secs(2))
            }
        );
    }

    #[test]
    fn the_probe_timeout_counts_from_each_probe_not_from_half_open() {
        let p = policy();
        let t0 = Instant::now();
        let mut m = Machine::new(t0, 1);
        m.trip(t0, 0, &p, X);
        let (Admission::Probe { generation, id }, _) = m.admit(t0 + secs(1), &p) else {
            panic!()
        };
        m.probe_done(t0 + secs(2), generation, id, ProbeEnd::Success, &p);
        // Light traffic: the second probe comes long after half-open began.
        let (a, t) = m.admit(t0 + secs(30), &p);
        assert!(matches!(a, Admission::Probe { .. }) && t.is_none());
        let Admission::Probe { generation, id } = a else {
            panic!()
        };
        let t = m
            .probe_done(t0 + secs(31), generation, id, ProbeEnd::Success, &p)
            .unwrap();
        assert_eq!(t.to, BreakerState::Closed);
    }

    #[test]
    fn a_late_outcome_of_a_timed_out_probe_is_not_counted() {
        let p = policy();
        let t0 = Instant::now();
        let mut m = Machine::new(t0, 1);
        m.trip(t0, 0, &p, X);
        let (Admission::Probe { generation, id }, _) = m.admit(t0 + secs(1), &p) else {
            panic!()
        };
        m.admit(t0 + secs(11), &p);
        assert_eq!(m.state(), BreakerState::Open);
        assert!(m
            .probe_done(t0 + secs(12), generation, id, ProbeEnd::Success, &p)
            .is_none());
        assert_eq!(m.state(), BreakerState::Open);
    }

    #[test]
    fn jitter_shortens_the_cool_down_within_bounds_and_varies() {
        let mut p = policy();
        p.set_jitter(0.5);
        let mut seen = std::collections::HashSet::new();
        for seed in 0..50 {
            let t0 = Instant::now();
            let mut m = Machine::new(t0, seed);
            let d = m.trip(t0, 0, &p, X).unwrap().open_for.unwrap();
            assert!(d <= secs(1) && d >= Duration::from_millis(500), "{d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 40);
    }

    #[test]
    fn forced_states_override_until_reset() {
        let p = policy();
        let t0 = Instant::now();
        let mut m = Machine::new(t0, 1);
        m.force(t0, BreakerState::ForcedOpen);
        assert_eq!(
            m.admit(t0 + secs(100), &p).0,
            Admission::Reject { retry_after: None }
        );
        m.force(t0, BreakerState::ForcedClosed);
        assert!(matches!(m.admit(t0, &p).0, Admission::Bypass { .. }));
        assert!(m.trip(t0, m.generation(), &p, X).is_none());
        m.reset(t0);
        assert!(matches!(m.admit(t0, &p).0, Admission::Call { .. }));
    }
}

/// Model check of the probe places (run by `scripts/loom.sh`): callers racing for probes while
/// timeouts and failures reopen the breaker never have more than `probes` calls in the
/// dependency. The machine is behind a lock (loom's here), so loom explores the orders in which
/// callers take it; each time the lock is taken the clock moves on by two seconds, past a
/// cool-down and past a probe timeout.
#[cfg(all(test, tanker_loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{AtomicUsize, Ordering};
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    struct Locked {
        machine: Machine,
        ticks: u32,
    }

    impl Locked {
        fn now(&mut self, t0: Instant) -> Instant {
            self.ticks += 1;
            t0 + Duration::from_secs(2) * self.ticks
        }
    }

    #[test]
    fn loom_never_more_probes_than_places_across_reopenings() {
        loom::model(|| {
            let mut policy = Policy::default();
            policy
                .set_consecutive_failures(Some(1))
                .set_open_for(Duration::from_secs(1))
                .set_backoff(1.0, Duration::from_secs(1))
                .set_jitter(0.0)
                .set_probes(1)
                .set_probe_timeout(Duration::from_secs(1));
            let policy = Arc::new(policy);
            let t0 = Instant::now();
            let mut machine = Machine::new(t0, 1);
            machine.trip(t0, 0, &policy, TripReason::ConsecutiveFailures);
            let locked = Arc::new(Mutex::new(Locked { machine, ticks: 0 }));
            let inside = Arc::new(AtomicUsize::new(0));
            let caller = || {
                let (locked, policy, inside) = (locked.clone(), policy.clone(), inside.clone());
                thread::spawn(move || {
                    let admission = {
                        let mut locked = locked.lock().unwrap();
                        let now = locked.now(t0);
                        locked.machine.admit(now, &policy).0
                    };
                    if let Admission::Probe { generation, id } = admission {
                        let before = inside.fetch_add(1, Ordering::SeqCst);
                        assert!(before < policy.probes() as usize, "more probes than places");
                        inside.fetch_sub(1, Ordering::SeqCst);
                        let mut locked = locked.lock().unwrap();
                        let now = locked.now(t0);
                        locked
                            .machine
                            .probe_done(now, generation, id, ProbeEnd::Failure, &policy);
                    }
                })
            };
            let callers = [caller(), caller(), caller()];
            for caller in callers {
                caller.join().unwrap();
            }
            assert_eq!(locked.lock().unwrap().machine.probes_in_flight(), 0);
        });
    }
}
