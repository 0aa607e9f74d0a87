//! Error types for the [`Breaker`](super::Breaker) middleware.

use std::fmt;
use std::time::Duration;

use crate::Domain;

/// The breaker is open (or half-open with every probe place taken), so the call was rejected
/// without reaching the inner service.
///
/// Returned boxed as [`tower::BoxError`]; recognise it with `err.is::<BreakerOpen>()` and read
/// [`retry_after`](Self::retry_after) to tell clients when to come back (an HTTP `Retry-After`).
/// [`domain`](Self::domain) says which breaker refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOpen {
    retry_after: Option<Duration>,
    domain: Domain,
}

impl BreakerOpen {
    pub(crate) const fn new(retry_after: Option<Duration>, domain: Domain) -> Self {
        Self {
            retry_after,
            domain,
        }
    }

    /// The breaker that refused: its layer value's (or, in a keyed layer, its key's, or the
    /// whole layer's during a cluster-wide outage). See [`Domain`].
    pub fn domain(&self) -> Domain {
        self.domain
    }

    /// How long until the breaker lets a probe through: the rest of the cool-down when open, or
    /// the longest the current probes may take when half-open. `None` when an operator forced the
    /// breaker open: no probe happens until it is reset.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            Some(after) => write!(f, "circuit breaker is open; next probe in {after:?}"),
            None => f.write_str("circuit breaker is forced open"),
        }
    }
}

impl std::error::Error for BreakerOpen {}
