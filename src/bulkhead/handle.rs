//! A read-only view of a compartment's counters.

use std::fmt;
use std::sync::Arc;

use super::compartment::Compartment;

/// A read-only view of a compartment's counters, for metrics and health checks.
///
/// Obtained from [`BulkheadLayer::handle`](super::BulkheadLayer::handle) or
/// [`Bulkhead::handle`](super::Bulkhead::handle); cheap to clone. Every service built from the same
/// layer value reports through the same handle.
#[derive(Clone)]
pub struct BulkheadHandle {
    compartment: Arc<Compartment>,
}

impl BulkheadHandle {
    pub(crate) fn new(compartment: Arc<Compartment>) -> Self {
        Self { compartment }
    }

    /// The compartment itself, for the keyed layer's per-key checks.
    pub(crate) fn compartment(&self) -> &Arc<Compartment> {
        &self.compartment
    }

    /// The compartment's name, as given to the builder (it labels log events and metrics).
    pub fn name(&self) -> &str {
        self.compartment.name()
    }

    /// The compartment's identity, as its refusals name it ([`BulkheadFull::domain`](super::BulkheadFull::domain)).
    pub fn domain(&self) -> crate::Domain {
        self.compartment.domain()
    }

    /// The configured maximum number of calls in flight.
    pub fn max_in_flight(&self) -> usize {
        self.compartment.max_in_flight() as usize
    }

    /// Calls in flight now, alone: one load, for the crate's hot paths (the Kafka leaf steers
    /// records away from a full compartment) where a whole snapshot would cost four.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // only the Kafka leaf uses it
    pub(crate) fn in_flight(&self) -> usize {
        self.compartment.in_flight() as usize
    }

    /// A snapshot of the counters.
    ///
    /// ```
    /// use tanker::bulkhead::BulkheadLayer;
    ///
    /// let layer = BulkheadLayer::new(8).unwrap();
    /// let counts = layer.handle().counts();
    /// assert_eq!((counts.in_flight, counts.admitted, counts.shed), (0, 0, 0));
    /// ```
    pub fn counts(&self) -> BulkheadCounts {
        let compartment = &self.compartment;
        BulkheadCounts {
            in_flight: compartment.in_flight() as usize,
            waiting: compartment.waiting() as usize,
            admitted: compartment.admitted(),
            shed: compartment.shed(),
        }
    }
}

impl fmt::Debug for BulkheadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadHandle")
            .field("name", &self.name())
            .field("max_in_flight", &self.max_in_flight())
            .field("counts", &self.counts())
            .finish()
    }
}

/// A snapshot of a compartment's counters, from [`BulkheadHandle::counts`].
///
/// Each counter is read on its own, one after the other, so under load they may be a few calls
/// apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BulkheadCounts {
    /// Calls admitted and not yet finished, and slots held for callers between their
    /// `poll_ready` and their `call` (with a waiting room). Never more than
    /// [`max_in_flight`](BulkheadHandle::max_in_flight).
    pub in_flight: usize,
    /// Callers waiting in the waiting room for a slot, not counting those whose maximum wait is
    /// over (a caller that stopped polling its handle without dropping it).
    pub waiting: usize,
    /// Calls made to the inner service since the compartment was built. It counts each call
    /// once, when it is made, and never goes backwards.
    pub admitted: u64,
    /// Calls shed (rejected with [`BulkheadFull`](super::BulkheadFull)) since the compartment was
    /// built.
    pub shed: u64,
}
