//! The real breaker against a small reference model: random policies, random sequences of
//! calls, completions, cancellations and waits, compared after every step.
//!
//! The model is written to be obviously right rather than fast: it keeps the timestamp of every
//! counted call in a `Vec` and recomputes the window from scratch, and it computes cool-downs in
//! integer nanoseconds. It follows the module docs of `tanker::breaker`; where those are silent it
//! follows what the docs imply and what `src/breaker` does, as noted inline:
//!
//! - an outcome is recorded when the inner future completes (at completion time), in the bucket
//!   `floor((t - origin) / w)` where `origin` is `Instant::now()` when the layer was built and
//!   `w = window / buckets` (integer nanoseconds);
//! - only calls admitted in the current closed period count; an ignored outcome counts nowhere
//!   (it neither breaks nor extends a run of consecutive failures);
//! - a success only resets the run of consecutive failures; the trip conditions are checked
//!   after each failure or slow call only, as the "Cost" section implies (so a success that
//!   brings the window up to `minimum_calls` with the failure share already at the rate does not
//!   trip it; the next failure does);
//! - the end of the cool-down (`now >= open_until`) and the probe timeout take effect when the
//!   next call arrives. The probe timeout runs from each probe's admission: a call arriving when
//!   the oldest probe in flight was admitted `probe_timeout` ago or more reopens the breaker (a
//!   trip: the cool-down grows) and is rejected. A probe that finishes late, before any call
//!   arrived, still counts with its own outcome (as `BreakerBuilder::probe_timeout` says);
//! - a probe that fails, or succeeds slowly, reopens the breaker; a probe dropped or ignored frees
//!   its place; `probes` successes close it, with an empty window and the base cool-down. While
//!   every place is taken, a rejected call is told to retry when the oldest probe times out;
//! - a probe keeps its place until it ends, whatever the breaker does meanwhile: at most `probes`
//!   probes are ever in flight, counting those of earlier half-open periods. A probe of an earlier
//!   period that outlived its timeout reopens the breaker (again) only when it holds a place that
//!   a call needs: at the end of a cool-down with every place taken, the breaker goes half-open
//!   and at once open again;
//! - a rejection is counted when `call` returns it.
//!
//! Every case runs in its own current-thread runtime with paused time. In-flight calls are
//! polled by hand, in the order they were admitted, at exactly the instant their inner sleep
//! ends, so the order in which completions reach the breaker is the model's order. After each
//! move of the clock the test yields to the runtime once, so that the breaker's window ticker
//! (the task that moves the window to the next bucket at each boundary, for successes that do
//! not read the clock) has run before any call completes at that instant: "at each boundary"
//! means before the calls of that instant.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, Service};

use tanker::breaker::{BreakerHandle, BreakerLayer, BreakerOpen, BreakerState, Outcome};

/// At most this many calls per case: enough to trip, probe and close several times, few enough
/// to keep 2000 cases within a few seconds.
const MAX_CALLS: u64 = 60;

const MS: u64 = 1_000_000;

// ---------------------------------------------------------------------------------------------
// The inner service
// ---------------------------------------------------------------------------------------------

/// What the inner service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Success,
    Failure,
    /// An error the classifier maps to [`Outcome::Ignore`].
    Ignored,
}

#[derive(Debug, PartialEq, Eq)]
enum TestError {
    Failed,
    Marker,
}

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for TestError {}

fn classify(result: Result<&(), &TestError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Success,
        Err(TestError::Failed) => Outcome::Failure,
        Err(TestError::Marker) => Outcome::Ignore,
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Spec {
    consecutive_failures: Option<u32>,
    failure_rate: Option<f64>,
    /// Threshold in ms, rate.
    slow_calls: Option<(u64, f64)>,
    window_ms: u64,
    buckets: u32,
    minimum_calls: u32,
    open_for_ms: u64,
    backoff: u32,
    max_open_for_ms: u64,
    probes: u32,
    probe_timeout_ms: u64,
}

#[derive(Debug, Clone)]
enum Step {
    /// Let this many ms pass (completing whatever finishes meanwhile).
    Wait(u64),
    /// One call: its outcome and how long the inner future takes, in ms.
    Call(Out, u64),
    /// Several calls at the same instant.
    Burst(Vec<(Out, u64)>),
    /// Drop the response future of the in-flight call at this index (modulo their number).
    Cancel(usize),
    /// Go to the end of the cool-down (open) or to the probe deadline (half-open), plus this many
    /// ms; nothing when closed.
    ToEdge(i8),
}

fn rate() -> impl Strategy<Value = f64> {
    prop::sample::select(vec![
        0.1,
        0.2,
        0.25,
        1.0 / 3.0,
        0.5,
        0.6,
        2.0 / 3.0,
        0.75,
        0.9,
        1.0,
    ])
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (
            prop::option::weighted(0.7, 1u32..=6),
            prop::option::weighted(0.6, rate()),
            prop::option::weighted(0.4, (1u64..=60, rate())),
        ),
        (1u32..=6).prop_flat_map(|b| (Just(b), u64::from(b)..=300)),
        1u32..=10,
        (1u64..=60, 1u32..=3, 1u64..=8),
        1u32..=3,
        1u64..=120,
    )
        .prop_map(
            |(
                (consecutive_failures, failure_rate, slow_calls),
                (buckets, window_ms),
                minimum_calls,
                (open_for_ms, backoff, cap),
                probes,
                probe_timeout_ms,
            )| {
                let consecutive_failures = if consecutive_failures.is_none()
                    && failure_rate.is_none()
                    && slow_calls.is_none()
                {
                    Some(3)
                } else {
                    consecutive_failures
                };
                Spec {
                    consecutive_failures,
                    failure_rate,
                    slow_calls,
                    window_ms,
                    buckets,
                    minimum_calls,
                    open_for_ms,
                    backoff,
                    max_open_for_ms: open_for_ms * cap,
                    probes,
                    probe_timeout_ms,
                }
            },
        )
}

fn out() -> impl Strategy<Value = Out> {
    prop_oneof![
        3 => Just(Out::Success),
        3 => Just(Out::Failure),
        1 => Just(Out::Ignored),
    ]
}

fn duration_ms() -> impl Strategy<Value = u64> {
    prop_oneof![2 => Just(0u64), 3 => 1u64..=15, 2 => 1u64..=120]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop_oneof![0u64..=5, 0u64..=50, 0u64..=300].prop_map(Step::Wait),
        6 => (out(), duration_ms()).prop_map(|(o, d)| Step::Call(o, d)),
        1 => prop::collection::vec((out(), duration_ms()), 2..=4).prop_map(Step::Burst),
        1 => any::<usize>().prop_map(Step::Cancel),
        1 => (-1i8..=1).prop_map(Step::ToEdge),
    ]
}

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

/// A call's claim, as the model sees it: the period (generation) it was admitted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ticket {
    Call { generation: u64 },
    Probe { generation: u64, id: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Go(Ticket),
    /// Rejected; retry after this many ns.
    Reject(u64),
}

/// One counted call of the current closed period.
#[derive(Debug, Clone, Copy)]
struct Record {
    at: u64,
    failure: bool,
    slow: bool,
}

/// How often each interesting thing happened over the whole run, to check the generators reach
/// every corner.
#[derive(Debug, Default, Clone)]
struct Coverage {
    trips_consecutive: u64,
    trips_failure_rate: u64,
    trips_slow_rate: u64,
    below_minimum_calls: u64,
    half_opened: u64,
    half_opened_at_exact_edge: u64,
    rejected_open: u64,
    rejected_probe_limit: u64,
    probe_failed: u64,
    probe_slow: u64,
    probe_timed_out: u64,
    probe_finished_late: u64,
    probe_abandoned: u64,
    closed: u64,
    stale_outcomes: u64,
    backoff_grew: u64,
    backoff_capped: u64,
    records_left_window: u64,
}

impl Coverage {
    fn add(&mut self, o: &Self) {
        self.trips_consecutive += o.trips_consecutive;
        self.trips_failure_rate += o.trips_failure_rate;
        self.trips_slow_rate += o.trips_slow_rate;
        self.below_minimum_calls += o.below_minimum_calls;
        self.half_opened += o.half_opened;
        self.half_opened_at_exact_edge += o.half_opened_at_exact_edge;
        self.rejected_open += o.rejected_open;
        self.rejected_probe_limit += o.rejected_probe_limit;
        self.probe_failed += o.probe_failed;
        self.probe_slow += o.probe_slow;
        self.probe_timed_out += o.probe_timed_out;
        self.probe_finished_late += o.probe_finished_late;
        self.probe_abandoned += o.probe_abandoned;
        self.closed += o.closed;
        self.stale_outcomes += o.stale_outcomes;
        self.backoff_grew += o.backoff_grew;
        self.backoff_capped += o.backoff_capped;
        self.records_left_window += o.records_left_window;
    }
}

/// Times are nanoseconds since the breaker's origin.
struct Model {
    // Policy.
    consecutive_limit: Option<u32>,
    failure_rate: Option<f64>,
    slow_calls: Option<(u64, f64)>,
    bucket: u64,
    buckets: u64,
    minimum_calls: u64,
    open_for: u64,
    backoff: u64,
    max_open_for: u64,
    probes: u32,
    probe_timeout: u64,

    // State.
    state: BreakerState,
    generation: u64,
    /// Trips since the breaker last closed: the cool-down is `open_for * backoff^(trips - 1)`.
    trips: u32,
    open_until: u64,
    /// The probes in flight, of any period: their ids, when they were admitted, and their
    /// generation.
    probes_in_flight: Vec<(u64, u64, u64)>,
    next_probe: u64,
    probe_successes: u32,
    last_transition: u64,
    consecutive: u32,
    /// Counted calls since the breaker last closed (the window is recomputed from these).
    records: Vec<Record>,

    // Counters.
    reached: u64,
    rejected: u64,
    times_opened: u64,
    ignored: u64,
    successes: u64,
    failures: u64,
    slow: u64,

    cov: Coverage,
}

impl Model {
    fn new(spec: &Spec) -> Self {
        Self {
            consecutive_limit: spec.consecutive_failures,
            failure_rate: spec.failure_rate,
            slow_calls: spec.slow_calls.map(|(t, r)| (t * MS, r)),
            bucket: (spec.window_ms * MS / u64::from(spec.buckets)).max(1),
            buckets: u64::from(spec.buckets),
            minimum_calls: u64::from(spec.minimum_calls),
            open_for: spec.open_for_ms * MS,
            backoff: u64::from(spec.backoff),
            max_open_for: spec.max_open_for_ms * MS,
            probes: spec.probes,
            probe_timeout: spec.probe_timeout_ms * MS,
            state: BreakerState::Closed,
            generation: 0,
            trips: 0,
            open_until: 0,
            probes_in_flight: Vec::new(),
            next_probe: 0,
            probe_successes: 0,
            last_transition: 0,
            consecutive: 0,
            records: Vec::new(),
            reached: 0,
            rejected: 0,
            times_opened: 0,
            ignored: 0,
            successes: 0,
            failures: 0,
            slow: 0,
            cov: Coverage::default(),
        }
    }

    /// The bucket of time `t`, counted from 1.
    fn epoch(&self, t: u64) -> u64 {
        t / self.bucket + 1
    }

    /// (calls, failures, slow) over the `buckets` buckets ending with bucket `newest`.
    fn window(&self, newest: u64) -> (u64, u64, u64) {
        let mut totals = (0, 0, 0);
        for r in &self.records {
            let e = self.epoch(r.at);
            if e <= newest && e + self.buckets > newest {
                totals.0 += 1;
                totals.1 += u64::from(r.failure);
                totals.2 += u64::from(r.slow);
            }
        }
        totals
    }

    fn cool_down(&self) -> u64 {
        let mut d = u128::from(self.open_for);
        for _ in 1..self.trips {
            d = (d * u128::from(self.backoff)).min(u128::from(self.max_open_for));
        }
        d.min(u128::from(self.max_open_for)) as u64
    }

    fn move_to(&mut self, now: u64, to: BreakerState) {
        self.state = to;
        self.generation += 1;
        self.last_transition = now;
        self.probe_successes = 0;
        if to == BreakerState::Closed {
            self.records.clear();
            self.consecutive = 0;
        }
    }

    fn open(&mut self, now: u64) {
        self.trips += 1;
        let cool_down = self.cool_down();
        if self.trips > 1 && cool_down > self.open_for {
            self.cov.backoff_grew += 1;
        }
        if self.trips > 1 && cool_down == self.max_open_for && self.max_open_for > self.open_for {
            self.cov.backoff_capped += 1;
        }
        self.open_until = now + cool_down;
        self.times_opened += 1;
        self.move_to(now, BreakerState::Open);
    }

    fn take_probe(&mut self, now: u64) -> Admit {
        let id = self.next_probe;
        self.next_probe += 1;
        self.probes_in_flight.push((id, now, self.generation));
        Admit::Go(Ticket::Probe {
            generation: self.generation,
            id,
        })
    }

    /// When the oldest probe in flight times out, if any is in flight.
    fn probe_deadline(&self) -> Option<u64> {
        let oldest = self.probes_in_flight.iter().map(|&(_, at, _)| at).min()?;
        Some(oldest + self.probe_timeout)
    }

    /// Whether a probe of the current period is past its timeout at `now`.
    fn current_probe_overdue(&self, now: u64) -> bool {
        self.probes_in_flight.iter().any(|&(_, at, generation)| {
            generation == self.generation && now >= at + self.probe_timeout
        })
    }

    /// Takes probe `id` out of the probes in flight, whatever its period; returns whether its
    /// outcome counts (it is a probe of the current half-open period).
    fn end_probe(&mut self, generation: u64, id: u64) -> bool {
        let before = self.probes_in_flight.len();
        self.probes_in_flight.retain(|&(probe, _, _)| probe != id);
        self.probes_in_flight.len() < before
            && self.state == BreakerState::HalfOpen
            && generation == self.generation
    }

    fn admit_half_open(&mut self, now: u64) -> Admit {
        let full = self.probes_in_flight.len() >= self.probes as usize;
        match self.probe_deadline() {
            Some(deadline) if self.current_probe_overdue(now) || (full && now >= deadline) => {
                self.cov.probe_timed_out += 1;
                self.open(now);
                Admit::Reject(self.open_until - now)
            }
            _ if !full => self.take_probe(now),
            Some(deadline) => {
                self.cov.rejected_probe_limit += 1;
                Admit::Reject(deadline - now)
            }
            None => unreachable!("every place taken, yet no probe in flight"),
        }
    }

    fn admit(&mut self, now: u64) -> Admit {
        let admit = match self.state {
            BreakerState::Closed => Admit::Go(Ticket::Call {
                generation: self.generation,
            }),
            BreakerState::Open if now < self.open_until => {
                self.cov.rejected_open += 1;
                Admit::Reject(self.open_until - now)
            }
            BreakerState::Open => {
                self.cov.half_opened += 1;
                if now == self.open_until {
                    self.cov.half_opened_at_exact_edge += 1;
                }
                self.move_to(now, BreakerState::HalfOpen);
                self.admit_half_open(now)
            }
            BreakerState::HalfOpen => self.admit_half_open(now),
            other => unreachable!("the model is never {other:?}"),
        };
        match admit {
            Admit::Go(_) => self.reached += 1,
            Admit::Reject(_) => self.rejected += 1,
        }
        admit
    }

    /// The inner future of a call admitted at `start` completed at `now` with `out`.
    fn complete(&mut self, now: u64, start: u64, ticket: Ticket, out: Out) {
        let slow = self
            .slow_calls
            .is_some_and(|(threshold, _)| now - start >= threshold);
        if out == Out::Ignored {
            self.ignored += 1;
        }
        match ticket {
            Ticket::Call { generation } => {
                if out == Out::Ignored {
                    return;
                }
                if self.state != BreakerState::Closed || generation != self.generation {
                    self.cov.stale_outcomes += 1;
                    return;
                }
                let failure = out == Out::Failure;
                self.records.push(Record {
                    at: now,
                    failure,
                    slow,
                });
                if failure {
                    self.failures += 1;
                    self.consecutive += 1;
                } else {
                    self.successes += 1;
                    self.consecutive = 0;
                }
                self.slow += u64::from(slow);
                if !(failure || slow) {
                    return;
                }
                let (calls, failures, slows) = self.window(self.epoch(now));
                if calls < self.records.len() as u64 {
                    self.cov.records_left_window += 1;
                }
                let by_consecutive = self
                    .consecutive_limit
                    .is_some_and(|n| self.consecutive >= n);
                let enough = calls >= self.minimum_calls;
                let by_failures = enough
                    && self
                        .failure_rate
                        .is_some_and(|r| failures as f64 >= r * calls as f64);
                let by_slow = enough
                    && self
                        .slow_calls
                        .is_some_and(|(_, r)| slows as f64 >= r * calls as f64);
                if by_consecutive {
                    self.cov.trips_consecutive += 1;
                } else if by_failures {
                    self.cov.trips_failure_rate += 1;
                } else if by_slow {
                    self.cov.trips_slow_rate += 1;
                } else if !enough {
                    self.cov.below_minimum_calls += 1;
                }
                if by_consecutive || by_failures || by_slow {
                    self.open(now);
                }
            }
            Ticket::Probe { generation, id } => {
                if !self.end_probe(generation, id) {
                    self.cov.stale_outcomes += 1;
                    return;
                }
                if self.probe_deadline_passed_for(start, now) {
                    self.cov.probe_finished_late += 1;
                }
                match out {
                    Out::Ignored => self.cov.probe_abandoned += 1,
                    Out::Failure => {
                        self.cov.probe_failed += 1;
                        self.open(now);
                    }
                    Out::Success if slow => {
                        self.cov.probe_slow += 1;
                        self.open(now);
                    }
                    Out::Success => {
                        self.probe_successes += 1;
                        if self.probe_successes >= self.probes {
                            self.cov.closed += 1;
                            self.trips = 0;
                            self.move_to(now, BreakerState::Closed);
                        }
                    }
                }
            }
        }
    }

    /// The response future of a call was dropped before it completed.
    fn cancel(&mut self, ticket: Ticket) {
        if let Ticket::Probe { generation, id } = ticket {
            if self.end_probe(generation, id) {
                self.cov.probe_abandoned += 1;
            }
        }
    }

    fn probe_deadline_passed_for(&self, admitted: u64, now: u64) -> bool {
        now >= admitted + self.probe_timeout
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: the real breaker, driven step by step, compared with the model
// ---------------------------------------------------------------------------------------------

type Response = Result<(), BoxError>;

struct Flight<F> {
    ticket: Ticket,
    start: u64,
    due: u64,
    out: Out,
    future: Pin<Box<F>>,
}

struct Harness<S: Service<(Out, Duration)>> {
    svc: S,
    handle: BreakerHandle,
    origin: Instant,
    now: u64,
    calls: u64,
    reached: Arc<AtomicU64>,
    flights: Vec<Flight<S::Future>>,
    model: Model,
    step: usize,
}

fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(futures::task::noop_waker_ref()))
}

fn show(poll: &Poll<Response>) -> String {
    match poll {
        Poll::Pending => "pending".into(),
        Poll::Ready(Ok(())) => "Ok(())".into(),
        Poll::Ready(Err(e)) => format!("Err({e})"),
    }
}

impl<S> Harness<S>
where
    S: Service<(Out, Duration), Response = (), Error = BoxError>,
{
    fn at(&self, ns: u64) -> Instant {
        self.origin + Duration::from_nanos(ns)
    }

    /// Compares everything observable with the model.
    fn check(&self, what: &str) -> Result<(), TestCaseError> {
        let m = &self.model;
        let step = self.step;
        let got = self.handle.counts();
        prop_assert_eq!(
            self.handle.state(),
            m.state,
            "state, step {} ({})",
            step,
            what
        );
        prop_assert_eq!(
            got.state,
            m.state,
            "metrics.state, step {} ({})",
            step,
            what
        );
        prop_assert_eq!(
            self.reached.load(Ordering::SeqCst),
            m.reached,
            "calls that reached the inner service, step {} ({})",
            step,
            what
        );
        prop_assert_eq!(
            got.rejected,
            m.rejected,
            "rejected, step {} ({})",
            step,
            what
        );
        prop_assert_eq!(
            got.times_opened,
            m.times_opened,
            "times_opened, step {} ({})",
            step,
            what
        );
        prop_assert_eq!(got.ignored, m.ignored, "ignored, step {} ({})", step, what);
        prop_assert_eq!(
            got.successes,
            m.successes,
            "successes, step {} ({})",
            step,
            what
        );
        prop_assert_eq!(
            got.failures,
            m.failures,
            "failures, step {} ({})",
            step,
            what
        );
        prop_assert_eq!(
            got.slow_calls,
            m.slow,
            "slow_calls, step {} ({})",
            step,
            what
        );
        prop_assert_eq!(
            got.consecutive_failures,
            m.consecutive,
            "consecutive_failures, step {} ({})",
            step,
            what
        );
        prop_assert_eq!(
            got.probes_in_flight as usize,
            m.probes_in_flight.len(),
            "probes_in_flight, step {} ({})",
            step,
            what
        );
        prop_assert_eq!(
            got.last_transition,
            self.at(m.last_transition),
            "last_transition, step {} ({})",
            step,
            what
        );
        prop_assert_eq!(
            got.open_until,
            (m.state == BreakerState::Open).then(|| self.at(m.open_until)),
            "open_until, step {} ({})",
            step,
            what
        );
        let (calls, failures, slow) = m.window(m.epoch(self.now));
        prop_assert_eq!(
            (got.window_calls, got.window_failures, got.window_slow_calls),
            (calls, failures, slow),
            "window (calls, failures, slow), step {} ({})",
            step,
            what
        );
        Ok(())
    }

    /// Moves paused time to `t` (ns since origin) without completing anything.
    async fn clock_to(&mut self, t: u64) -> Result<(), TestCaseError> {
        if t > self.now {
            tokio::time::advance(Duration::from_nanos(t - self.now)).await;
            // Let the tasks woken at this instant (the window's ticker) run first.
            tokio::task::yield_now().await;
            self.now = t;
        }
        prop_assert_eq!(
            Instant::now(),
            self.at(self.now),
            "paused clock out of step"
        );
        Ok(())
    }

    /// Lets time pass up to `target`, completing each call at the instant its inner future
    /// ends, in admission order among calls ending at the same instant.
    async fn advance_to(&mut self, target: u64) -> Result<(), TestCaseError> {
        while let Some(next) = self
            .flights
            .iter()
            .map(|f| f.due)
            .filter(|&due| due <= target)
            .min()
        {
            self.clock_to(next).await?;
            let mut i = 0;
            while i < self.flights.len() {
                let poll = poll_once(self.flights[i].future.as_mut());
                if self.flights[i].due == self.now {
                    let Poll::Ready(result) = poll else {
                        return Err(TestCaseError::fail(format!(
                            "harness: a call due now is still pending (step {})",
                            self.step
                        )));
                    };
                    let flight = self.flights.remove(i);
                    self.finish(flight.ticket, flight.start, flight.out, result)?;
                } else {
                    prop_assert!(
                        poll.is_pending(),
                        "harness: a call completed early: {}",
                        show(&poll)
                    );
                    i += 1;
                }
            }
        }
        self.clock_to(target).await
    }

    fn finish(
        &mut self,
        ticket: Ticket,
        start: u64,
        out: Out,
        result: Response,
    ) -> Result<(), TestCaseError> {
        match (out, &result) {
            (Out::Success, Ok(())) => {}
            (Out::Failure, Err(e)) if e.downcast_ref() == Some(&TestError::Failed) => {}
            (Out::Ignored, Err(e)) if e.downcast_ref() == Some(&TestError::Marker) => {}
            _ => {
                return Err(TestCaseError::fail(format!(
                    "step {}: a call answering {out:?} returned {}",
                    self.step,
                    show(&Poll::Ready(result))
                )))
            }
        }
        self.model.complete(self.now, start, ticket, out);
        self.check("completion")
    }

    fn call(&mut self, out: Out, d_ms: u64) -> Result<(), TestCaseError> {
        if self.calls >= MAX_CALLS {
            return Ok(());
        }
        self.calls += 1;
        let ready = self
            .svc
            .poll_ready(&mut Context::from_waker(futures::task::noop_waker_ref()));
        prop_assert!(
            matches!(ready, Poll::Ready(Ok(()))),
            "poll_ready must be ready at once"
        );
        let mut future = Box::pin(self.svc.call((out, Duration::from_millis(d_ms))));
        let poll = poll_once(future.as_mut());
        match self.model.admit(self.now) {
            Admit::Reject(retry_after) => {
                let Poll::Ready(Err(err)) = &poll else {
                    return Err(TestCaseError::fail(format!(
                        "step {}: the model rejects (retry after {:?}) but the call gave {}",
                        self.step,
                        Duration::from_nanos(retry_after),
                        show(&poll)
                    )));
                };
                let Some(open) = err.downcast_ref::<BreakerOpen>() else {
                    return Err(TestCaseError::fail(format!(
                        "step {}: the model rejects but the call failed with {err}",
                        self.step
                    )));
                };
                prop_assert_eq!(
                    open.retry_after(),
                    Some(Duration::from_nanos(retry_after)),
                    "retry_after, step {}",
                    self.step
                );
                self.check("rejection")
            }
            Admit::Go(ticket) => {
                let due = self.now + d_ms * MS;
                if d_ms == 0 {
                    let Poll::Ready(result) = poll else {
                        return Err(TestCaseError::fail(format!(
                            "step {}: an instant call is pending",
                            self.step
                        )));
                    };
                    // The call already completed, inside the poll above.
                    self.finish(ticket, self.now, out, result)
                } else {
                    prop_assert!(
                        poll.is_pending(),
                        "step {}: the model admits (as {:?}) but the call gave {}",
                        self.step,
                        ticket,
                        show(&poll)
                    );
                    self.flights.push(Flight {
                        ticket,
                        start: self.now,
                        due,
                        out,
                        future,
                    });
                    self.check("admission")
                }
            }
        }
    }

    fn cancel(&mut self, index: usize) -> Result<(), TestCaseError> {
        if self.flights.is_empty() {
            return Ok(());
        }
        let flight = self.flights.remove(index % self.flights.len());
        drop(flight.future);
        self.model.cancel(flight.ticket);
        self.check("cancellation")
    }

    async fn run(&mut self, steps: &[Step]) -> Result<(), TestCaseError> {
        self.check("start")?;
        for (i, step) in steps.iter().enumerate() {
            self.step = i;
            match step {
                Step::Wait(ms) => self.advance_to(self.now + ms * MS).await?,
                Step::Call(out, d) => self.call(*out, *d)?,
                Step::Burst(calls) => {
                    for &(out, d) in calls {
                        self.call(out, d)?;
                    }
                }
                Step::Cancel(index) => self.cancel(*index)?,
                Step::ToEdge(offset) => {
                    let edge = match self.model.state {
                        BreakerState::Open => self.model.open_until,
                        BreakerState::HalfOpen => match self.model.probe_deadline() {
                            Some(deadline) => deadline,
                            None => continue,
                        },
                        _ => continue,
                    };
                    let target = (edge as i128 + i128::from(*offset) * i128::from(MS)) as u64;
                    if target > self.now {
                        self.advance_to(target).await?;
                    }
                }
            }
        }
        // Let everything still in flight finish.
        self.step = steps.len();
        if let Some(last) = self.flights.iter().map(|f| f.due).max() {
            self.advance_to(last).await?;
        }
        self.check("end")
    }
}

fn run_case(
    spec: &Spec,
    steps: &[Step],
    coverage: &RefCell<Coverage>,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut builder = BreakerLayer::builder()
            .window(Duration::from_millis(spec.window_ms), spec.buckets)
            .minimum_calls(spec.minimum_calls)
            .open_for(Duration::from_millis(spec.open_for_ms))
            .backoff(
                f64::from(spec.backoff),
                Duration::from_millis(spec.max_open_for_ms),
            )
            .jitter(0.0)
            .probes(spec.probes)
            .probe_timeout(Duration::from_millis(spec.probe_timeout_ms));
        builder = match spec.consecutive_failures {
            Some(n) => builder.consecutive_failures(n),
            None => builder.no_consecutive_failures(),
        };
        builder = match spec.failure_rate {
            Some(rate) => builder.failure_rate(rate),
            None => builder.no_failure_rate(),
        };
        if let Some((threshold, rate)) = spec.slow_calls {
            builder = builder.slow_calls(Duration::from_millis(threshold), rate);
        }
        // Paused time: the origin the breaker takes at build time is this instant.
        let origin = Instant::now();
        let layer = builder.classify(classify).build().expect("valid policy");
        let handle = layer.handle();
        prop_assert_eq!(handle.last_transition(), origin, "the breaker's origin");

        let reached = Arc::new(AtomicU64::new(0));
        let counter = reached.clone();
        let inner = service_fn(move |(out, d): (Out, Duration)| {
            counter.fetch_add(1, Ordering::SeqCst);
            // The deadline is fixed now, at call time.
            let sleep = (!d.is_zero()).then(|| tokio::time::sleep(d));
            async move {
                if let Some(sleep) = sleep {
                    sleep.await;
                }
                match out {
                    Out::Success => Ok(()),
                    Out::Failure => Err(TestError::Failed),
                    Out::Ignored => Err(TestError::Marker),
                }
            }
        });
        let mut harness = Harness {
            svc: layer.layer(inner),
            handle,
            origin,
            now: 0,
            calls: 0,
            reached,
            flights: Vec::new(),
            model: Model::new(spec),
            step: 0,
        };
        let result = harness.run(steps).await;
        coverage.borrow_mut().add(&harness.model.cov);
        result
    })
}

#[test]
fn breaker_matches_the_reference_model() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut runner = TestRunner::new(Config {
        cases,
        // No regression files: this test may only write its own source file.
        failure_persistence: None,
        ..Config::default()
    });
    let coverage = RefCell::new(Coverage::default());
    let strategy = (spec(), prop::collection::vec(step(), 1..=70));
    let result = runner.run(&strategy, |(spec, steps)| {
        run_case(&spec, &steps, &coverage)
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    let c = coverage.into_inner();
    eprintln!("coverage over {cases} cases: {c:#?}");
    // Each corner of the state machine must actually have been exercised (scaled to the number
    // of cases, so that a quick run with PROPTEST_CASES=100 still passes).
    let min = u64::from(cases) / 100;
    let corners = [
        ("trips on consecutive failures", c.trips_consecutive),
        ("trips on the failure rate", c.trips_failure_rate),
        ("trips on the slow-call rate", c.trips_slow_rate),
        ("rate checks below minimum_calls", c.below_minimum_calls),
        (
            "half-open at exactly open_until",
            c.half_opened_at_exact_edge,
        ),
        ("rejections while open", c.rejected_open),
        ("rejections at the probe limit", c.rejected_probe_limit),
        ("failed probes", c.probe_failed),
        ("slow probes", c.probe_slow),
        ("probe timeouts", c.probe_timed_out),
        ("probes finished after their timeout", c.probe_finished_late),
        ("abandoned probes", c.probe_abandoned),
        ("closings", c.closed),
        ("outcomes of an earlier period", c.stale_outcomes),
        ("grown cool-downs", c.backoff_grew),
        ("capped cool-downs", c.backoff_capped),
        ("calls that left the window", c.records_left_window),
    ];
    for (name, n) in corners {
        assert!(n >= min, "only {n} {name} in {cases} cases");
    }
}
