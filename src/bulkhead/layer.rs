use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::compartment::Compartment;
use super::handle::BulkheadHandle;
use super::room::{LONGEST_WAIT, MAX_PLACES};
use super::service::Bulkhead;
use super::slots::MAX_SLOTS;
use crate::ConfigError;

/// Wraps services in a [`Bulkhead`]: one compartment per layer value.
///
/// Every service this layer value builds, and every clone of those services and of this layer,
/// shares one capacity. Build one layer per dependency and reuse it; building a new layer per
/// request or per route clone would give every caller its own compartment. See the
/// [module docs](super) for an example.
#[derive(Clone)]
pub struct BulkheadLayer {
    compartment: Arc<Compartment>,
}

impl BulkheadLayer {
    /// A compartment of `max_in_flight` calls with no waiting room: beyond that many calls in
    /// flight, calls are shed at once.
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] if `max_in_flight` is zero.
    pub fn new(max_in_flight: usize) -> Result<Self, ConfigError> {
        Self::builder().max_in_flight(max_in_flight).build()
    }

    /// A builder for a compartment with a waiting room or other non-default settings.
    pub fn builder() -> BulkheadBuilder {
        BulkheadBuilder::default()
    }

    /// The counters of this compartment.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.compartment.clone())
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::from_compartment(inner, self.compartment.clone())
    }
}

impl fmt::Debug for BulkheadLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("compartment", &self.handle())
            .finish()
    }
}

/// Builds a [`BulkheadLayer`], checking its settings.
///
/// | setting | default | why |
/// |---|---|---|
/// | [`max_in_flight`](Self::max_in_flight) | 64 | enough for a fast dependency at high rate; a slow one fills it quickly and sheds instead of piling up |
/// | [`waiting_room`](Self::waiting_room) | none | a caller that must not wait should never queue behind a full compartment |
/// | [`name`](Self::name) | `"bulkhead"` | name each compartment after its dependency, so that logs and metrics tell them apart |
#[derive(Debug, Clone)]
pub struct BulkheadBuilder {
    max_in_flight: usize,
    waiting_room: Option<(usize, Duration)>,
    name: Arc<str>,
}

impl Default for BulkheadBuilder {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            waiting_room: None,
            name: Arc::from("bulkhead"),
        }
    }
}

impl BulkheadBuilder {
    /// Names the compartment: the `bulkhead` field of its log events and the `bulkhead` label of
    /// its metrics (see [`crate::metrics`]).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The most calls in flight to the inner service at once. Must be at least 1, and at most
    /// `u32::MAX` (4 294 967 295).
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max;
        self
    }

    /// Lets up to `capacity` callers wait, each for at most `max_wait`, for a slot to free up
    /// when the compartment is full. A caller that finds the waiting room full, or that has waited
    /// `max_wait`, is shed.
    ///
    /// The wait happens in `poll_ready`, so a caller with a waiting room may wait up to `max_wait`
    /// for readiness; without one (the default) `poll_ready` never waits because the compartment
    /// is full. With a waiting room, `poll_ready` takes the slot and holds it for the handle until
    /// its `call` (or until the handle is dropped), so that a handle polled ready is never shed
    /// by its `call`. Waiting costs one allocation and one timer; admission without waiting costs
    /// neither.
    ///
    /// A freed slot wakes every caller in the room, and the first to run takes it; a caller
    /// arriving while others wait queues behind them until they are served or their maximum wait
    /// is over. A caller that stops polling its handle without dropping it (a `ready()` future
    /// dropped by a timeout) keeps nobody from a freed slot, and holds its place at most
    /// `max_wait`. `capacity` is at most `u32::MAX`; a `max_wait` beyond 30 years is clamped to
    /// 30 years, as tokio clamps a `sleep`.
    ///
    /// # Panics
    ///
    /// With a waiting room, a caller that has to wait needs a tokio runtime with its time driver
    /// (`enable_time`), as `tokio::time::sleep` does; `poll_ready` panics without one.
    pub fn waiting_room(mut self, capacity: usize, max_wait: Duration) -> Self {
        self.waiting_room = Some((capacity, max_wait));
        self
    }

    /// Removes the waiting room: a full compartment sheds at once.
    pub fn no_waiting_room(mut self) -> Self {
        self.waiting_room = None;
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] if `max_in_flight` is zero or above `u32::MAX`, or if a waiting
    /// room has a zero capacity, a capacity above `u32::MAX`, or a zero maximum wait (use
    /// [`no_waiting_room`](Self::no_waiting_room) instead).
    pub fn build(self) -> Result<BulkheadLayer, ConfigError> {
        if self.max_in_flight == 0 {
            return Err(ConfigError::new(
                "max_in_flight",
                "must be at least 1; a compartment of 0 would shed every call",
            ));
        }
        if self.max_in_flight > MAX_SLOTS {
            return Err(ConfigError::new(
                "max_in_flight",
                "must be at most 4294967295 (u32::MAX); no dependency takes more calls at once",
            ));
        }
        let mut waiting_room = self.waiting_room;
        if let Some((capacity, max_wait)) = &mut waiting_room {
            if *capacity == 0 {
                return Err(ConfigError::new(
                    "waiting_room",
                    "capacity must be at least 1; call `no_waiting_room()` for none",
                ));
            }
            if *capacity > MAX_PLACES {
                return Err(ConfigError::new(
                    "waiting_room",
                    "capacity must be at most 4294967295 (u32::MAX)",
                ));
            }
            *max_wait = (*max_wait).min(LONGEST_WAIT);
            if max_wait.is_zero() {
                return Err(ConfigError::new(
                    "waiting_room",
                    "max_wait must be longer than zero; call `no_waiting_room()` to shed at once",
                ));
            }
        }
        Ok(BulkheadLayer {
            compartment: Arc::new(Compartment::new(
                self.name,
                self.max_in_flight,
                waiting_room,
            )),
        })
    }
}
