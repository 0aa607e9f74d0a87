use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::classify::ErrorsAsFailures;
use super::engine::Engine;
use super::handle::BreakerHandle;
use super::policy::Policy;
use super::service::Breaker;
use crate::ConfigError;

/// Wraps services in a [`Breaker`]: one breaker state per layer value.
///
/// Every service this layer value builds, and every clone of those services and of this layer,
/// shares one state. Build one layer per dependency and reuse it. See the [module docs](super).
pub struct BreakerLayer<C = ErrorsAsFailures> {
    engine: Arc<Engine>,
    classifier: C,
}

impl BreakerLayer {
    /// A breaker with the [default settings](BreakerBuilder).
    pub fn new() -> Self {
        match Self::builder().build() {
            Ok(layer) => layer,
            // The defaults are checked by a test of the policy.
            Err(err) => unreachable!("the default settings are valid: {err}"),
        }
    }

    /// A builder to change the thresholds, the cool-down, the probes or the classifier.
    pub fn builder() -> BreakerBuilder {
        BreakerBuilder::default()
    }
}

impl Default for BreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> BreakerLayer<C> {
    /// The state, counters and controls of this breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.engine.clone())
    }

    /// The shared state, for the keyed layer, which decides admission per call itself.
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The classifier, for the keyed layer.
    pub(crate) fn classifier(&self) -> &C {
        &self.classifier
    }
}

impl<C: Clone> Clone for BreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = Breaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker::from_parts(inner, self.engine.clone(), self.classifier.clone())
    }
}

impl<C> fmt::Debug for BreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("breaker", &self.handle())
            .finish()
    }
}

fn random_seed() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// Builds a [`BreakerLayer`], checking its settings.
///
/// The defaults suit a non-critical dependency that a latency-critical service must not wait
/// for, such as a Kafka or Redis write on the side:
///
/// | setting | default | why |
/// |---|---|---|
/// | [`consecutive_failures`](Self::consecutive_failures) | 5 | a dependency that fails five times in a row is down; stop at once, whatever the traffic |
/// | [`failure_rate`](Self::failure_rate) | 0.5 | half the calls failing is an outage, not noise |
/// | [`window`](Self::window) | 10 s in 10 buckets | long enough to smooth out a bad second, short enough to forget an incident that is over |
/// | [`minimum_calls`](Self::minimum_calls) | 20 | a rate over fewer calls is noise |
/// | [`slow_calls`](Self::slow_calls) | off | what "slow" means depends on the dependency; put a timeout inside the breaker, or set this |
/// | [`open_for`](Self::open_for) | 500 ms | a probe is one call (behind a [hand-off](crate::handoff), one parked record), so probing often costs a sick dependency almost nothing, and a healed one is used again within a second or two |
/// | [`backoff`](Self::backoff) | ×2, up to 1 s | a dependency that keeps failing probes is probed half as often, but never so rarely that the first second after its heal is lost: a cool-down of a minute kept whole minutes of records waiting after an outage (measured: full delivery 2 s after a cluster-wide Kafka heal with these defaults, 3 s with a 2 s cap, over 10 s with 60 s) |
/// | [`jitter`](Self::jitter) | 0.1 | replicas that tripped together do not all probe at the same instant |
/// | [`probes`](Self::probes) | 1 | one success is enough evidence for a non-critical write, and the gentlest load on a recovering dependency |
/// | [`probe_timeout`](Self::probe_timeout) | 1 s | a probe that hangs (sent to a broker that froze) cannot keep the breaker half-open past the heal; a healthy Kafka or Redis answers in far less. Raise it for a dependency whose calls take longer |
#[derive(Clone)]
pub struct BreakerBuilder<C = ErrorsAsFailures> {
    policy: Policy,
    classifier: C,
    name: Arc<str>,
    seed: Option<u64>,
    /// Whether [`backoff`](Self::backoff) was called; if not, the cap follows a long `open_for`.
    backoff_set: bool,
}

impl Default for BreakerBuilder {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            classifier: ErrorsAsFailures,
            name: Arc::from("breaker"),
            seed: None,
            backoff_set: false,
        }
    }
}

impl<C> BreakerBuilder<C> {
    /// Names the breaker: the `breaker` field of its log events and the `breaker` label of its
    /// metrics (see [`crate::metrics`]). Default: `"breaker"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Trips after `n` failures in a row, whatever the window says. Must be at least 1.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.policy.set_consecutive_failures(Some(n));
        self
    }

    /// Turns off tripping on consecutive failures.
    pub fn no_consecutive_failures(mut self) -> Self {
        self.policy.set_consecutive_failures(None);
        self
    }

    /// Trips when at least this share of the calls in the window failed (above 0, at most 1),
    /// once the window holds [`minimum_calls`](Self::minimum_calls).
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.policy.set_failure_rate(Some(rate));
        self
    }

    /// Turns off tripping on the failure rate.
    pub fn no_failure_rate(mut self) -> Self {
        self.policy.set_failure_rate(None);
        self
    }

    /// The sliding window: its length and how many buckets it is cut into. Calls leave the
    /// window one bucket at a time; each bucket must span at least 1 ms, and there may be at most
    /// 1000 buckets.
    ///
    /// Successes do not read the clock: a small task on the tokio runtime moves the window to the
    /// next bucket at each boundary (on tokio's clock, so paused time drives it too), and
    /// failures move it from the clock they read anyway. About one success in 64 reads the clock
    /// to check that this task keeps up; if its runtime went idle (a runtime used once for a
    /// warm-up, then left alive), a new task starts on the runtime of the calls. Outside a tokio
    /// runtime, or on one without the time driver (tokio's message about the missing timers is
    /// printed once, nothing is spawned), successes read the clock instead. Memory is three words
    /// per bucket, fixed when the layer is built.
    pub fn window(mut self, length: Duration, buckets: u32) -> Self {
        self.policy.set_window(length, buckets);
        self
    }

    /// How many calls the window must hold before a rate can trip the breaker. At least 1.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.policy.set_minimum_calls(n);
        self
    }

    /// Counts a call that takes at least `threshold` as slow, and trips when at least `rate` of
    /// the calls in the window were slow. A slow probe counts as a failed probe.
    ///
    /// Turning this on reads the clock at the start and end of every call, which costs about as
    /// much as the rest of the breaker's work; it is off by default.
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.policy.set_slow_calls(threshold, rate);
        self
    }

    /// The cool-down after the first trip: how long the breaker stays open before a probe. If it
    /// is longer than the default cap (1 s) and [`backoff`](Self::backoff) is not set, the cap
    /// is raised to it.
    pub fn open_for(mut self, base: Duration) -> Self {
        self.policy.set_open_for(base);
        self
    }

    /// Multiplies the cool-down by `multiplier` on each trip that follows a failed probe, up to
    /// `max`. A multiplier of 1 keeps the cool-down constant. It returns to
    /// [`open_for`](Self::open_for) once the breaker closes.
    pub fn backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.policy.set_backoff(multiplier, max);
        self.backoff_set = true;
        self
    }

    /// Shortens each cool-down by a random share of up to `fraction` (0 to below 1). With 0 the
    /// cool-downs are exact and deterministic.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.policy.set_jitter(fraction);
        self
    }

    /// Seeds the jitter's random numbers, for reproducible cool-downs. By default each breaker
    /// gets a random seed.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How many probes the half-open breaker lets through at once; that many successes close it,
    /// and any failure opens it again. At least 1. A probe holds its place until its call ends,
    /// across reopenings, so never more than `n` probes are in the dependency at once.
    pub fn probes(mut self, n: u32) -> Self {
        self.policy.set_probes(n);
        self
    }

    /// The longest a probe may take. If a probe has not finished by then (it hangs, or its
    /// caller never calls), the next call that arrives counts it as failed and opens the breaker
    /// again, so a lost probe cannot keep the breaker half-open. The timed-out call keeps its
    /// probe place until it ends (see [`probes`](Self::probes)); while it does, each cool-down
    /// that ends with every place taken trips the breaker again.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.policy.set_probe_timeout(timeout);
        self
    }

    /// Decides which outcomes are failures. See [`Classify`](super::Classify).
    pub fn classify<C2>(self, classifier: C2) -> BreakerBuilder<C2> {
        BreakerBuilder {
            policy: self.policy,
            classifier,
            name: self.name,
            seed: self.seed,
            backoff_set: self.backoff_set,
        }
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] naming the setting to change if a rate is outside `(0, 1]`, a
    /// count or duration is zero, the window has too many or too narrow buckets, the back-off
    /// multiplier is below 1 or its cap below the base cool-down, the jitter is outside `[0, 1)`,
    /// or every trip condition is turned off.
    ///
    /// Durations longer than 100 years (`Duration::MAX` included) are cut to 100 years, as
    /// tokio's `sleep` cuts its own: a breaker never overflows the clock, whatever the back-off.
    pub fn build(mut self) -> Result<BreakerLayer<C>, ConfigError> {
        if !self.backoff_set {
            // A long cool-down with the default back-off: the cap follows it rather than refuse.
            self.policy.cap_at_least_open_for();
        }
        self.policy.clamp_durations();
        self.policy.check()?;
        let seed = self.seed.unwrap_or_else(random_seed);
        Ok(BreakerLayer {
            engine: Engine::start(self.policy, self.name, seed),
            classifier: self.classifier,
        })
    }
}

impl<C> fmt::Debug for BreakerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBuilder")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}
