//! Error types for the [`Bulkhead`](super::Bulkhead) middleware.

use std::fmt;

use crate::Domain;

/// The compartment could not take the call, so it was shed.
///
/// Returned (boxed as [`tower::BoxError`]) by a [`Bulkhead`](super::Bulkhead) when the maximum
/// number of calls is already in flight and the waiting room, if any, is full or its maximum wait
/// has passed. It is also returned when the inner service was not ready: the call is shed rather
/// than queued behind a dependency that cannot take it. The inner service never sees a shed call.
///
/// Recognise it with `err.is::<BulkheadFull>()`; [`domain`](Self::domain) says which
/// compartment shed the call. Boxing it costs one small allocation (8 bytes), as a
/// [`BreakerOpen`](crate::breaker::BreakerOpen) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadFull {
    domain: Domain,
}

impl BulkheadFull {
    pub(crate) const fn new(domain: Domain) -> Self {
        Self { domain }
    }

    /// The compartment that shed the call: its layer value's, or in a keyed layer its key's (or
    /// the whole layer's, for a new key refused by a full table). See [`Domain`].
    pub fn domain(&self) -> Domain {
        self.domain
    }
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bulkhead is full")
    }
}

impl std::error::Error for BulkheadFull {}
