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
    pub(crate) compartment: Arc<Compartment>,
}

impl BulkheadHandle {
    /// The compartment's name, as given to the builder (it labels log events and metrics).
    pub fn name(&self) -> &str {
        &self.compartment.name
    }

    /// Calls admitted and not yet finished, and slots held for callers between their
    /// `poll_ready` and their `call` (with a waiting room). Never more than
    /// [`max_in_flight`](Self::max_in_flight).
    pub fn in_flight(&self) -> usize {
        self.compartment.in_flight() as usize
    }

    /// Callers waiting in the waiting room for a slot, not counting those whose maximum wait is
    /// over (a caller that stopped polling its handle without dropping it).
    pub fn waiting(&self) -> usize {
        self.compartment.waiting() as usize
    }

    /// Calls made to the inner service since the compartment was built. It counts each call
    /// once, when it is made, and never goes backwards.
    pub fn admitted(&self) -> u64 {
        self.compartment.admitted()
    }

    /// Calls shed (rejected with [`BulkheadFull`](super::BulkheadFull)) since the compartment was
    /// built.
    pub fn shed(&self) -> u64 {
        self.compartment.shed()
    }

    /// The compartment's identity, as its refusals name it ([`BulkheadFull::domain`](super::BulkheadFull::domain)).
    pub fn domain(&self) -> crate::Domain {
        self.compartment.domain
    }

    /// The configured maximum number of calls in flight.
    pub fn max_in_flight(&self) -> usize {
        self.compartment.max_in_flight() as usize
    }
}

impl fmt::Debug for BulkheadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadHandle")
            .field("name", &self.name())
            .field("in_flight", &self.in_flight())
            .field("max_in_flight", &self.max_in_flight())
            .field("waiting", &self.waiting())
            .field("admitted", &self.admitted())
            .field("shed", &self.shed())
            .finish()
    }
}
