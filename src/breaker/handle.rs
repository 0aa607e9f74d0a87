//! The public handle that reads and controls a breaker.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use super::engine::Engine;
use super::state::BreakerState;

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
    engine: Arc<Engine>,
}

impl BreakerHandle {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.engine.word().state()
    }

    /// The breaker's name, as given to the builder (it labels log events and metrics).
    pub fn name(&self) -> &str {
        self.engine.name()
    }

    /// The breaker's identity, as its refusals name it ([`BreakerOpen::domain`](super::BreakerOpen::domain)).
    pub fn domain(&self) -> crate::Domain {
        self.engine.domain
    }

    /// When the state last changed.
    pub fn last_transition(&self) -> Instant {
        self.engine.view().last_transition
    }

    /// A snapshot of the counters.
    ///
    /// ```
    /// use tanker::breaker::{BreakerLayer, BreakerState};
    ///
    /// let layer = BreakerLayer::new();
    /// let counts = layer.handle().counts();
    /// assert_eq!(counts.state, BreakerState::Closed);
    /// assert_eq!((counts.failures, counts.rejected), (0, 0));
    /// ```
    pub fn counts(&self) -> BreakerCounts {
        let engine = &self.engine;
        let view = engine.view();
        // Each of these is consistent in itself: failures and slow calls never exceed calls.
        let window = engine.window_totals();
        let all = engine.all_time();
        BreakerCounts {
            state: view.state,
            window_calls: window.calls,
            window_failures: window.failures,
            window_slow_calls: window.slow,
            consecutive_failures: engine.consecutive_failures(),
            successes: all.calls - all.failures,
            failures: all.failures,
            slow_calls: all.slow,
            ignored: engine.ignored(),
            rejected: engine.rejected(),
            times_opened: engine.times_opened(),
            probes_in_flight: view.probes_in_flight,
            last_transition: view.last_transition,
            open_until: (view.state == BreakerState::Open).then_some(view.open_until),
        }
    }

    /// Ends an open breaker's cool-down now, so that its next call goes through as a probe:
    /// for a caller that learns the dependency is back before the cool-down is over (a Kafka
    /// producer that sees a broker's connection come up again). Returns whether the breaker was
    /// open and cooling down; a breaker in any other state (closed, half-open with its probes
    /// out, forced) is left as it is. The probe decides, as usual: a failed probe opens the
    /// breaker again with a longer cool-down.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tanker::breaker::{BreakerLayer, BreakerState};
    /// use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), BoxError> {
    /// let breaker = BreakerLayer::builder()
    ///     .consecutive_failures(1)
    ///     .open_for(Duration::from_secs(30))
    ///     .build()?;
    /// let handle = breaker.handle();
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(breaker)
    ///     .service(service_fn(|fail: bool| async move {
    ///         if fail { Err::<(), BoxError>("down".into()) } else { Ok(()) }
    ///     }));
    /// assert!(svc.ready().await?.call(true).await.is_err());
    /// assert_eq!(handle.state(), BreakerState::Open);
    ///
    /// // The dependency says it is back: probe at once instead of in 30 s.
    /// assert!(handle.probe_now());
    /// svc.ready().await?.call(false).await?;
    /// assert_eq!(handle.state(), BreakerState::Closed);
    /// # Ok(())
    /// # }
    /// ```
    pub fn probe_now(&self) -> bool {
        self.engine.probe_now()
    }

    /// Whether the breaker is open and its cool-down over: its next call would be a probe.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // only the Kafka leaf uses it
    pub(crate) fn probe_due(&self) -> bool {
        self.engine.probe_due()
    }

    /// Whether the breaker is half-open with room for one more probe (see
    /// [`probes`](super::BreakerBuilder::probes)). Takes the breaker's lock.
    pub(crate) fn probe_room(&self) -> bool {
        self.engine.probe_room()
    }

    /// Forces the breaker open: every call is rejected (with no `retry_after`) until
    /// [`reset`](Self::reset) or [`force_closed`](Self::force_closed). A handle readied before
    /// is rejected in `call` too.
    pub fn force_open(&self) {
        self.engine.force(BreakerState::ForcedOpen);
    }

    /// Disables the breaker: every call goes through and nothing is counted until
    /// [`reset`](Self::reset) or [`force_open`](Self::force_open).
    pub fn force_closed(&self) {
        self.engine.force(BreakerState::ForcedClosed);
    }

    /// Returns to the closed state with an empty window and the shortest cool-down, whatever the
    /// current state.
    pub fn reset(&self) {
        self.engine.reset();
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

/// A snapshot of a breaker's counters, from [`BreakerHandle::counts`].
///
/// The all-time counters (`successes`, `failures`, `slow_calls`) count calls admitted while the
/// breaker was closed; probes are not included. The window's counts are consistent with each
/// other (`window_failures` and `window_slow_calls` never exceed `window_calls`), and so are the
/// all-time ones; counters of different groups are read one after the other, so under load they
/// may be a few calls apart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerCounts {
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
    /// Probes still in the dependency, of this half-open period or of an earlier one (never more
    /// than [`probes`](super::BreakerBuilder::probes)).
    pub probes_in_flight: u32,
    /// When the state last changed.
    pub last_transition: Instant,
    /// When the cool-down ends, if the breaker is open.
    pub open_until: Option<Instant>,
}
