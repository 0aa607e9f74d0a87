//! The state shared by every service built from one [`BreakerLayer`](super::BreakerLayer), and
//! the handle that reads and controls it.

use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::classify::Outcome;
use super::policy::Policy;
use super::state::{Admission, BreakerState, Machine, ProbeEnd, Transition};
use super::ticker;
use super::window::{Sample, Window};
use crate::metrics as names;
use crate::telemetry::{Counter, Gauge, Labels};

const STATE_BITS: u32 = 3;

#[inline]
const fn pack(generation: u64, state: BreakerState) -> u64 {
    (generation << STATE_BITS) | state.bits()
}

/// Which kind of call a ticket stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Call,
    Probe,
}

pub(crate) struct Shared {
    /// `generation << 3 | state`, read without a lock by every call.
    word: AtomicU64,
    /// Whether a ticker task keeps the window's epoch current (see [`ticker`]).
    pub(crate) ticking: AtomicBool,
    /// The epoch in which a ticker was last started or tried, to try at most once per bucket
    /// (0 after a ticker ended: try again at once).
    pub(crate) ticker_tried: AtomicU64,
    /// Wakes callers parked on a not-ready inner service when the breaker opens.
    pub(crate) opened: Arc<Notify>,
    consecutive: AtomicU32,
    /// When the cool-down ends, in nanoseconds after `origin`, so that an open breaker rejects
    /// without a lock.
    open_until: AtomicU64,
    rejected: AtomicU64,
    ignored: AtomicU64,
    times_opened: AtomicU64,
    pub(crate) window: Window,
    machine: Mutex<Machine>,
    pub(crate) policy: Policy,
    origin: Instant,
    name: Arc<str>,
    metrics: Metrics,
    /// `rejected` at the last transition, so that each transition's log event says how many
    /// calls were rejected since the one before.
    rejected_mark: AtomicU64,
}

/// The breaker's metric handles (empty without the `metrics` feature).
struct Metrics {
    /// One per state, in the order of their bits: 1 for the current state.
    state: [Gauge; 5],
    /// One per state entered, in the order of their bits.
    transitions: [Counter; 5],
    successes: Counter,
    failures: Counter,
    ignored: Counter,
    slow: Counter,
    rejected: Counter,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let labels = Labels::new("breaker", name);
        let state = BreakerState::ALL.map(|state| {
            labels.gauge_with(
                names::BREAKER_STATE,
                "1 for a breaker's current state, 0 for the others",
                Some(("state", state.label())),
            )
        });
        state[0].set(1);
        let calls = |outcome| {
            labels.counter_with(
                names::BREAKER_CALLS,
                "calls through a breaker, by outcome",
                Some(("outcome", outcome)),
            )
        };
        Self {
            state,
            transitions: BreakerState::ALL.map(|state| {
                labels.counter_with(
                    names::BREAKER_TRANSITIONS,
                    "a breaker's state changes, by the state entered",
                    Some(("to", state.label())),
                )
            }),
            successes: calls("success"),
            failures: calls("failure"),
            ignored: calls("ignored"),
            slow: labels.counter(
                names::BREAKER_SLOW_CALLS,
                "calls through a breaker slower than its threshold",
            ),
            rejected: labels.counter(names::BREAKER_REJECTED, "calls a breaker rejected"),
        }
    }

    #[inline]
    fn outcome(&self, outcome: Outcome) {
        match outcome {
            Outcome::Success => self.successes.increment(),
            Outcome::Failure => self.failures.increment(),
            Outcome::Ignore => self.ignored.increment(),
        }
    }
}

impl Shared {
    pub(crate) fn new(policy: Policy, name: Arc<str>, seed: u64) -> Self {
        let origin = Instant::now();
        Self {
            word: AtomicU64::new(pack(0, BreakerState::Closed)),
            ticking: AtomicBool::new(false),
            ticker_tried: AtomicU64::new(0),
            opened: Arc::new(Notify::new()),
            consecutive: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            times_opened: AtomicU64::new(0),
            window: Window::new(origin, policy.window, policy.buckets),
            machine: Mutex::new(Machine::new(origin, seed)),
            policy,
            origin,
            metrics: Metrics::new(&name),
            name,
            rejected_mark: AtomicU64::new(0),
        }
    }

    fn machine(&self) -> MutexGuard<'_, Machine> {
        // The machine's invariants hold between its method calls, so a panic elsewhere while
        // the lock was held leaves nothing half-done: keep going.
        self.machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether slow-call detection needs the start time of each call.
    #[inline]
    pub(crate) fn times_calls(&self) -> bool {
        self.policy.slow_calls.is_some()
    }

    /// Decides whether a call may go through. The closed path is one atomic load.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        let word = self.word.load(Ordering::Acquire);
        if word & 0b111 == BreakerState::Closed.bits() {
            return Admission::Call {
                generation: word >> STATE_BITS,
            };
        }
        self.admit_slow(word)
    }

    #[cold]
    fn admit_slow(&self, word: u64) -> Admission {
        let now = Instant::now();
        if BreakerState::from_bits(word) == BreakerState::Open {
            let until = self.open_until.load(Ordering::Acquire);
            let at = self.nanos(now);
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

    /// Counts a call rejected by `call`.
    pub(crate) fn count_rejection(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.rejected.increment();
    }

    /// Whether a probe admitted in `generation` is still a probe of the current half-open period.
    #[inline]
    pub(crate) fn is_probing(&self, generation: u64) -> bool {
        self.word.load(Ordering::Acquire) == pack(generation, BreakerState::HalfOpen)
    }

    /// Starts a ticker if none runs, trying at most once per bucket.
    #[cold]
    fn start_ticker(self: &Arc<Self>) {
        let epoch = self.window.epoch();
        if self.ticker_tried.swap(epoch, Ordering::Relaxed) != epoch {
            ticker::start(self);
        }
    }

    /// Whether a call admitted in `generation` while closed would still be counted.
    #[inline]
    pub(crate) fn is_current(&self, generation: u64) -> bool {
        self.word.load(Ordering::Acquire) == pack(generation, BreakerState::Closed)
    }

    /// Records the outcome of an ordinary call admitted while closed.
    #[inline]
    pub(crate) fn record(
        self: &Arc<Self>,
        generation: u64,
        started: Option<Instant>,
        outcome: Outcome,
    ) {
        self.metrics.outcome(outcome);
        if outcome == Outcome::Ignore || !self.is_current(generation) {
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
                let ticking = self.ticking.load(Ordering::Relaxed);
                self.window.record_success(ticking, Instant::now);
                if !ticking {
                    self.start_ticker();
                }
            }
            _ => self.record_bad_or_timed(generation, started, outcome == Outcome::Failure),
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
        let policy = &self.policy;
        let reason = if policy
            .consecutive_failures
            .is_some_and(|n| consecutive >= n)
        {
            Some("consecutive failures")
        } else {
            let totals = self.window.totals_at(now);
            if totals.calls < u64::from(policy.minimum_calls) {
                None
            } else if policy
                .failure_rate
                .is_some_and(|rate| totals.failures as f64 >= rate * totals.calls as f64)
            {
                Some("failure rate")
            } else if policy
                .slow_calls
                .is_some_and(|s| totals.slow as f64 >= s.rate * totals.calls as f64)
            {
                Some("slow-call rate")
            } else {
                None
            }
        };
        if let Some(reason) = reason {
            let mut machine = self.machine();
            if let Some(transition) = machine.trip(now, generation, policy, reason) {
                self.publish(&machine, transition);
            }
        }
    }

    /// Whether a call that started at `started` and ended `now` was slow; counts it if so.
    fn is_slow(&self, now: Instant, started: Option<Instant>) -> bool {
        let slow = match (self.policy.slow_calls, started) {
            (Some(slow), Some(started)) => now.saturating_duration_since(started) >= slow.threshold,
            _ => false,
        };
        if slow {
            self.metrics.slow.increment();
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
        self.metrics.outcome(outcome);
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
                    .store(self.nanos(machine.open_until()), Ordering::Release);
                self.times_opened.fetch_add(1, Ordering::Relaxed);
            }
            BreakerState::Closed => {
                self.window.clear();
                self.consecutive.store(0, Ordering::Relaxed);
            }
            _ => {}
        }
        self.word.store(
            pack(transition.generation, transition.to),
            Ordering::Release,
        );
        if matches!(transition.to, BreakerState::Open | BreakerState::ForcedOpen) {
            // Callers parked on a not-ready inner service must now be rejected instead.
            self.opened.notify_waiters();
        }

        if transition.from == transition.to {
            // An operator forced or reset the breaker into the state it was in: its counts start
            // afresh, but nothing changed that a metric or a log should show.
            return;
        }
        let metrics = &self.metrics;
        metrics.transitions[transition.to.bits() as usize].increment();
        metrics.state[transition.from.bits() as usize].set(0);
        metrics.state[transition.to.bits() as usize].set(1);

        // Rejections are not logged one by one: each transition says how many there were since
        // the one before.
        let rejected_total = self.rejected.load(Ordering::Relaxed);
        let rejected = rejected_total
            .saturating_sub(self.rejected_mark.swap(rejected_total, Ordering::Relaxed));
        let name = &*self.name;
        let (from, to, reason) = (
            transition.from.as_str(),
            transition.to.as_str(),
            transition.reason,
        );
        match transition.to {
            BreakerState::Open => tracing::warn!(
                breaker = name,
                from,
                to,
                reason,
                rejected,
                open_for_ms = transition.open_for.map_or(0, |d| d.as_millis() as u64),
                "circuit breaker opened"
            ),
            BreakerState::ForcedOpen => {
                tracing::warn!(
                    breaker = name,
                    from,
                    to,
                    reason,
                    rejected,
                    "circuit breaker forced open"
                )
            }
            BreakerState::Closed => {
                tracing::info!(
                    breaker = name,
                    from,
                    to,
                    reason,
                    rejected,
                    "circuit breaker closed"
                )
            }
            BreakerState::HalfOpen => {
                tracing::info!(
                    breaker = name,
                    from,
                    to,
                    reason,
                    rejected,
                    "circuit breaker half-open"
                )
            }
            BreakerState::ForcedClosed => {
                tracing::info!(
                    breaker = name,
                    from,
                    to,
                    reason,
                    rejected,
                    "circuit breaker forced closed"
                )
            }
        }
    }

    fn force(&self, to: BreakerState) {
        let mut machine = self.machine();
        let transition = machine.force(Instant::now(), to);
        self.publish(&machine, transition);
    }

    fn reset(&self) {
        let mut machine = self.machine();
        let transition = machine.reset(Instant::now());
        self.publish(&machine, transition);
    }
}

/// Reads and controls a breaker: its state, its counters, and operator overrides.
///
/// Obtained from [`BreakerLayer::handle`](super::BreakerLayer::handle) or
/// [`Breaker::handle`](super::Breaker::handle); cheap to clone. Every service built from the same
/// layer value shares the state this handle shows.
///
/// Time-driven changes (the end of a cool-down, a probe timeout) take effect when the next call
/// arrives, so [`state`](Self::state) keeps saying `Open` after the cool-down until a call comes.
#[derive(Clone)]
pub struct BreakerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl BreakerHandle {
    /// The current state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_bits(self.shared.word.load(Ordering::Acquire))
    }

    /// The breaker's name, as given to the builder (it labels log events and metrics).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// When the state last changed.
    pub fn last_transition(&self) -> Instant {
        self.shared.machine().last_transition()
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> BreakerMetrics {
        let shared = &self.shared;
        let (state, last_transition, probes_in_flight, open_until) = {
            let machine = shared.machine();
            (
                machine.state(),
                machine.last_transition(),
                machine.probes_in_flight(),
                machine.open_until(),
            )
        };
        let window = shared.window.totals_at(Instant::now());
        let all = shared.window.all_time();
        BreakerMetrics {
            state,
            window_calls: window.calls,
            window_failures: window.failures,
            window_slow_calls: window.slow,
            consecutive_failures: shared.consecutive.load(Ordering::Relaxed),
            successes: all.calls - all.failures,
            failures: all.failures,
            slow_calls: all.slow,
            ignored: shared.ignored.load(Ordering::Relaxed),
            rejected: shared.rejected.load(Ordering::Relaxed),
            times_opened: shared.times_opened.load(Ordering::Relaxed),
            probes_in_flight,
            last_transition,
            open_until: (state == BreakerState::Open).then_some(open_until),
        }
    }

    /// Forces the breaker open: every call is rejected (with no `retry_after`) until
    /// [`reset`](Self::reset) or [`force_closed`](Self::force_closed).
    pub fn force_open(&self) {
        self.shared.force(BreakerState::ForcedOpen);
    }

    /// Disables the breaker: every call goes through and nothing is counted until
    /// [`reset`](Self::reset) or [`force_open`](Self::force_open).
    pub fn force_closed(&self) {
        self.shared.force(BreakerState::ForcedClosed);
    }

    /// Returns to the closed state with an empty window and the shortest cool-down, whatever the
    /// current state.
    pub fn reset(&self) {
        self.shared.reset();
    }
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}

/// A snapshot of a breaker's counters, from [`BreakerHandle::metrics`].
///
/// The all-time counters (`successes`, `failures`, `slow_calls`) count calls admitted while the
/// breaker was closed; probes are not included. Counters of different fields are read one after
/// the other, so under load they may be a few calls apart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerMetrics {
    /// The state.
    pub state: BreakerState,
    /// Calls counted in the sliding window.
    pub window_calls: u64,
    /// Failures counted in the sliding window.
    pub window_failures: u64,
    /// Slow calls counted in the sliding window.
    pub window_slow_calls: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Successful calls since the breaker was built.
    pub successes: u64,
    /// Failed calls since the breaker was built.
    pub failures: u64,
    /// Slow calls since the breaker was built.
    pub slow_calls: u64,
    /// Outcomes the classifier ignored since the breaker was built.
    pub ignored: u64,
    /// Calls rejected with [`BreakerOpen`](super::BreakerOpen) since the breaker was built.
    pub rejected: u64,
    /// How many times the breaker opened (forced opening not included).
    pub times_opened: u64,
    /// Probes admitted and not yet finished.
    pub probes_in_flight: u32,
    /// When the state last changed.
    pub last_transition: Instant,
    /// When the cool-down ends, if the breaker is open.
    pub open_until: Option<Instant>,
}

/// A call's claim on the breaker: an ordinary call's generation, or a probe's place, which is
/// given back if the ticket is dropped before the call finishes.
pub(crate) struct Ticket {
    shared: Arc<Shared>,
    kind: Kind,
    generation: u64,
    probe: u64,
    started: Option<Instant>,
    done: bool,
}

impl Ticket {
    #[inline]
    pub(crate) fn call(shared: Arc<Shared>, generation: u64) -> Self {
        Self {
            shared,
            kind: Kind::Call,
            generation,
            probe: 0,
            started: None,
            done: false,
        }
    }

    pub(crate) fn probe(shared: Arc<Shared>, generation: u64, id: u64) -> Self {
        Self {
            shared,
            kind: Kind::Probe,
            generation,
            probe: id,
            started: None,
            done: false,
        }
    }

    /// Whether the admission this ticket stands for still holds.
    #[inline]
    pub(crate) fn is_valid(&self) -> bool {
        match self.kind {
            Kind::Call => self.shared.is_current(self.generation),
            Kind::Probe => self.shared.is_probing(self.generation),
        }
    }

    /// Marks the start of the call, when slow calls are detected.
    #[inline]
    pub(crate) fn start(&mut self) {
        if self.shared.times_calls() {
            self.started = Some(Instant::now());
        }
    }

    #[inline]
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.done = true;
        match self.kind {
            Kind::Call => self.shared.record(self.generation, self.started, outcome),
            Kind::Probe => {
                self.shared
                    .finish_probe(self.generation, self.probe, self.started, outcome)
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done && self.kind == Kind::Probe {
            self.shared.abandon_probe(self.generation, self.probe);
        }
    }
}
