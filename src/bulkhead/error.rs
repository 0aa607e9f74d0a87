//! Error types for the [`Bulkhead`](super::Bulkhead) middleware.

use std::fmt;

/// The compartment could not take the call, so it was shed.
///
/// Returned (boxed as [`tower::BoxError`]) by a [`Bulkhead`](super::Bulkhead) when the maximum
/// number of calls is already in flight and the waiting room, if any, is full or its maximum wait
/// has passed. It is also returned when the inner service was not ready: the call is shed rather
/// than queued behind a dependency that cannot take it. The inner service never sees a shed call.
///
/// Recognise it with `err.is::<BulkheadFull>()`. The type is zero-sized, so boxing it does not
/// allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadFull {
    _priv: (),
}

impl BulkheadFull {
    pub(crate) const fn new() -> Self {
        Self { _priv: () }
    }
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bulkhead is full")
    }
}

impl std::error::Error for BulkheadFull {}
