//! The breaker's engine: the state shared by every service built from one
//! [`BreakerLayer`](super::BreakerLayer), and the protocol that admits and counts calls.
//!
//! The closed path is lock-free: one load of the [state word](super::word) to admit, one load
//! to check again in `call`, and one add into the [window](super::window) for a success. The
//! state machine sits behind a mutex that only failures, probes, rejections after the cool-down
//! and operators take; each transition it decides is published to the word in order, with the
//! machine locked.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::Origin;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

use super::classify::Outcome;
use super::events::Events;
use super::policy::Policy;
use super::state::{Admission, BreakerState, Machine, ProbeEnd, Transition};
use super::ticker;
use super::window::{Sample, Totals, Window};
use super::word::{StateWord, Word};
use crate::Domain;

pub(crate) struct Engine {
    word: StateWord,
    /// Wakes callers parked on a not-ready inner service when the breaker opens.
    opened: Arc<Notify>,
    consecutive: AtomicU32,
    /// When the cool-down ends, in nanoseconds after `origin`, so that an open breaker rejects
    /// without a lock.
    open_until: AtomicU64,
    ignored: AtomicU64,
    times_opened: AtomicU64,
    window: Window,
    machine: Mutex<Machine>,
    policy: Policy,
    origin: Origin,
    events: Events,
    /// Named in its refusals, so that a hand-off parks only what this breaker refused.
    pub(crate) domain: Domain,
}

impl AsRef<Window> for Engine {
    fn as_ref(&self) -> &Window {
        &self.window
    }
}

/// What [`Engine::view`] reads under the machine's lock.
pub(crate) struct View {
    pub(crate) state: BreakerState,
    pub(crate) last_transition: Instant,
    pub(crate) probes_in_flight: u32,
    pub(crate) open_until: Instant,
}

impl Engine {
    /// A new engine; inside a runtime with timers, the window's ticker starts now, otherwise
    /// with the first call that can start it.
    pub(crate) fn start(policy: Policy, name: Arc<str>, seed: u64) -> Arc<Self> {
        let origin = Origin::now();
        let engine = Arc::new(Self {
            word: StateWord::new(),
            opened: Arc::new(Notify::new()),
            consecutive: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            times_opened: AtomicU64::new(0),
            window: Window::new(origin, policy.window(), policy.buckets()),
            machine: Mutex::new(Machine::new(origin.instant(), seed)),
            policy,
            origin,
            events: Events::new(name),
            domain: Domain::new(),
        });
        ticker::start(&engine);
        engine
    }

    fn machine(&self) -> MutexGuard<'_, Machine> {
        // The machine's invariants hold between its method calls, so a panic elsewhere while
        // the lock was held leaves nothing half-done: keep going.
        self.machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether slow-call detection needs the start time of each call.
    #[inline]
    pub(crate) fn times_calls(&self) -> bool {
        self.policy.slow_threshold().is_some()
    }

    /// Decides whether a call may go through. The closed path is one atomic load.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        let word = self.word.load();
        if word.is_closed() {
            return Admission::Call {
                generation: word.generation(),
            };
        }
        self.admit_slow(word)
    }

    #[cold]
    fn admit_slow(&self, word: Word) -> Admission {
        if word.state() == BreakerState::ForcedOpen {
            // Nothing but an operator ends it: no clock, no lock.
            return Admission::Reject { retry_after: None };
        }
        let now = Instant::now();
        if word.state() == BreakerState::Open {
            let until = self.open_until.load(Ordering::Acquire);
            let at = self.origin.nanos(now);
            if at < until {
                return Admission::Reject {
                    retry_after: Some(Duration::from_nanos(until - at)),
                };
            }
        }
        let mut machine = self.machine();
        let (admission, transition) = machine.admit(now, &self.policy);
        if let Some(transition) = transition {
            self.publish(&machine, transition);
        }
        admission
    }

    /// Whether no transition happened since `word` was read: an admission decided on it holds.
    #[inline]
    pub(crate) fn holds(&self, word: Word) -> bool {
        self.word.is(word)
    }

    /// Notified when the breaker opens, for callers parked on a not-ready inner service.
    pub(crate) fn opened(&self) -> &Arc<Notify> {
        &self.opened
    }

    /// The current state word.
    #[inline]
    pub(crate) fn word(&self) -> Word {
        self.word.load()
    }

    /// Counts a call rejected by `call`.
    pub(crate) fn count_rejection(&self) {
        self.events.rejection();
    }

    /// Records the outcome of an ordinary call admitted while closed, in the period of `word`.
    #[inline]
    pub(crate) fn record(self: &Arc<Self>, word: Word, started: Option<Instant>, outcome: Outcome) {
        self.events.outcome(outcome);
        if outcome == Outcome::Ignore || !self.word.is(word) {
            if outcome == Outcome::Ignore {
                self.ignored.fetch_add(1, Ordering::Relaxed);
            }
            // Not counted toward tripping (ignored, or admitted before the breaker left this
            // closed period), but a slow call is still a slow call.
            if started.is_some() {
                self.is_slow(Instant::now(), started);
            }
            return;
        }
        match (outcome, started) {
            (Outcome::Success, None) => {
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                if self.window.record_success(Instant::now) {
                    ticker::start(self);
                }
            }
            _ => self.record_bad_or_timed(word.generation(), started, outcome == Outcome::Failure),
        }
    }

    fn record_bad_or_timed(&self, generation: u64, started: Option<Instant>, failure: bool) {
        let now = Instant::now();
        let slow = self.is_slow(now, started);
        self.window.record(now, Sample { failure, slow });
        let consecutive = if failure {
            self.consecutive
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            0
        };
        if !(failure || slow) {
            return;
        }
        let reason = self
            .policy
            .trip_reason(consecutive, || self.window.totals_at(now));
        if let Some(reason) = reason {
            let mut machine = self.machine();
            if let Some(transition) = machine.trip(now, generation, &self.policy, reason) {
                self.publish(&machine, transition);
            }
        }
    }

    /// Whether a call that started at `started` and ended `now` was slow; counts it if so.
    fn is_slow(&self, now: Instant, started: Option<Instant>) -> bool {
        let slow = match (self.policy.slow_threshold(), started) {
            (Some(threshold), Some(started)) => now.saturating_duration_since(started) >= threshold,
            _ => false,
        };
        if slow {
            self.events.slow();
        }
        slow
    }

    /// Records the end of a probe.
    pub(crate) fn finish_probe(
        &self,
        generation: u64,
        id: u64,
        started: Option<Instant>,
        outcome: Outcome,
    ) {
        let now = Instant::now();
        let slow = self.is_slow(now, started);
        self.events.outcome(outcome);
        let end = match outcome {
            Outcome::Ignore => {
                self.ignored.fetch_add(1, Ordering::Relaxed);
                ProbeEnd::Abandoned
            }
            Outcome::Failure => ProbeEnd::Failure,
            Outcome::Success if slow => ProbeEnd::Failure,
            Outcome::Success => ProbeEnd::Success,
        };
        self.end_probe(now, generation, id, end);
    }

    /// Frees the place of a probe that was dropped before it finished.
    pub(crate) fn abandon_probe(&self, generation: u64, id: u64) {
        self.end_probe(Instant::now(), generation, id, ProbeEnd::Abandoned);
    }

    fn end_probe(&self, now: Instant, generation: u64, id: u64, end: ProbeEnd) {
        let mut machine = self.machine();
        if let Some(transition) = machine.probe_done(now, generation, id, end, &self.policy) {
            self.publish(&machine, transition);
        }
    }

    /// Makes a transition visible to the lock-free paths, and tells operators. Called with the
    /// machine locked, so transitions are published in the order they happened.
    fn publish(&self, machine: &Machine, transition: Transition) {
        match transition.to {
            BreakerState::Open => {
                self.open_until
                    .store(self.origin.nanos(machine.open_until()), Ordering::Release);
                self.times_opened.fetch_add(1, Ordering::Relaxed);
            }
            BreakerState::Closed => {
                self.window.clear();
                self.consecutive.store(0, Ordering::Relaxed);
            }
            _ => {}
        }
        self.word
            .store(Word::new(transition.generation, transition.to));
        if matches!(transition.to, BreakerState::Open | BreakerState::ForcedOpen) {
            // Callers parked on a not-ready inner service must now be rejected instead.
            self.opened.notify_waiters();
        }
        self.events.transition(&transition);
    }

    /// Ends the cool-down of an open breaker now: its next call is a probe. Returns whether it
    /// was open and cooling down.
    pub(crate) fn probe_now(&self) -> bool {
        let now = Instant::now();
        let mut machine = self.machine();
        let ended = machine.end_cool_down(now);
        if ended {
            self.open_until
                .store(self.origin.nanos(now), Ordering::Release);
        }
        ended
    }

    /// Whether an open breaker's cool-down is over, so that its next call would be a probe: a
    /// load of the state word, and a read of the clock only when the breaker is open.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // only the Kafka leaf uses it
    pub(crate) fn probe_due(&self) -> bool {
        if self.word.load().state() != BreakerState::Open {
            return false;
        }
        self.origin.elapsed() >= self.open_until.load(Ordering::Acquire)
    }

    /// Whether a half-open breaker has room for one more probe. Takes the machine's lock: for
    /// steering records while half-open, which lasts a round trip of the dependency.
    pub(crate) fn probe_room(&self) -> bool {
        let machine = self.machine();
        machine.state() == BreakerState::HalfOpen
            && machine.probes_in_flight() < self.policy.probes()
    }

    pub(crate) fn force(&self, to: BreakerState) {
        let mut machine = self.machine();
        let transition = machine.force(Instant::now(), to);
        self.publish(&machine, transition);
    }

    pub(crate) fn reset(&self) {
        let mut machine = self.machine();
        let transition = machine.reset(Instant::now());
        self.publish(&machine, transition);
    }

    /// The breaker's name, as given to the builder.
    pub(crate) fn name(&self) -> &str {
        self.events.name()
    }

    /// What the state machine knows, read at one moment.
    pub(crate) fn view(&self) -> View {
        let machine = self.machine();
        View {
            state: machine.state(),
            last_transition: machine.last_transition(),
            probes_in_flight: machine.probes_in_flight(),
            open_until: machine.open_until(),
        }
    }

    /// The window's totals now.
    pub(crate) fn window_totals(&self) -> Totals {
        self.window.totals_at(Instant::now())
    }

    /// Every call counted since the breaker was built.
    pub(crate) fn all_time(&self) -> Totals {
        self.window.all_time()
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    pub(crate) fn ignored(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.events.rejected()
    }

    pub(crate) fn times_opened(&self) -> u64 {
        self.times_opened.load(Ordering::Relaxed)
    }
}
