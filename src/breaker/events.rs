//! What a breaker tells operators: its metrics, and a log event for each change of state.

use std::sync::Arc;

use crate::sync::{AtomicU64, Ordering};

use super::classify::Outcome;
use super::state::{BreakerState, Transition};
use crate::metrics as names;
use crate::telemetry::{Counter, Gauge, Labels};

/// A breaker's metric handles (empty without the `metrics` feature), its rejection count, and its
/// transition log.
pub(crate) struct Events {
    name: Arc<str>,
    /// One per state, in the order of their bits: 1 for the current state.
    state: [Gauge; 5],
    /// One per state entered, in the order of their bits.
    transitions: [Counter; 5],
    successes: Counter,
    failures: Counter,
    ignored: Counter,
    slow: Counter,
    rejected_counter: Counter,
    rejected: AtomicU64,
    /// `rejected` at the last transition, so that each transition's log event says how many
    /// calls were rejected since the one before.
    rejected_mark: AtomicU64,
}

impl Events {
    pub(crate) fn new(name: Arc<str>) -> Self {
        let labels = Labels::new("breaker", &name);
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
            rejected_counter: labels.counter(names::BREAKER_REJECTED, "calls a breaker rejected"),
            rejected: AtomicU64::new(0),
            rejected_mark: AtomicU64::new(0),
            name,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    #[inline]
    pub(crate) fn outcome(&self, outcome: Outcome) {
        match outcome {
            Outcome::Success => self.successes.increment(),
            Outcome::Failure => self.failures.increment(),
            Outcome::Ignore => self.ignored.increment(),
        }
    }

    pub(crate) fn slow(&self) {
        self.slow.increment();
    }

    pub(crate) fn rejection(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.rejected_counter.increment();
    }

    /// Calls rejected since the breaker was built.
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Counts and logs a change of state. An operator who forces or resets the breaker into the
    /// state it was in starts its counts afresh, but nothing changed that a metric or a log
    /// should show; a breaker that stays open because its probes still hang did trip again, and
    /// says so.
    pub(crate) fn transition(&self, transition: &Transition) {
        if transition.from == transition.to && transition.to != BreakerState::Open {
            return;
        }
        self.transitions[transition.to.bits() as usize].increment();
        self.state[transition.from.bits() as usize].set(0);
        self.state[transition.to.bits() as usize].set(1);

        // Rejections are not logged one by one: each transition says how many there were since
        // the one before.
        let rejected_total = self.rejected.load(Ordering::Relaxed);
        let rejected = rejected_total
            .saturating_sub(self.rejected_mark.swap(rejected_total, Ordering::Relaxed));
        let name = &*self.name;
        let (from, to, reason) = (
            transition.from.as_str(),
            transition.to.as_str(),
            transition.reason.as_str(),
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
            BreakerState::ForcedOpen => tracing::warn!(
                breaker = name,
                from,
                to,
                reason,
                rejected,
                "circuit breaker forced open"
            ),
            BreakerState::Closed | BreakerState::HalfOpen | BreakerState::ForcedClosed => {
                let message = match transition.to {
                    BreakerState::Closed => "circuit breaker closed",
                    BreakerState::HalfOpen => "circuit breaker half-open",
                    _ => "circuit breaker forced closed",
                };
                tracing::info!(breaker = name, from, to, reason, rejected, "{message}")
            }
        }
    }
}
