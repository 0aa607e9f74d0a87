//! Which breaker or bulkhead refused a call: the identity of a failure domain.

use std::fmt;
use std::num::NonZeroU64;
// Not `crate::sync`: this counter hands out names once per layer built, it is no part of a
// lock-free protocol, and a `static` cannot hold one of loom's atomics.
use std::sync::atomic::{AtomicU64, Ordering};

/// The identity of one failure domain: one [`BreakerLayer`](crate::breaker::BreakerLayer) or
/// [`BulkheadLayer`](crate::bulkhead::BulkheadLayer) value (shared by every service it builds
/// and every clone), one key's breaker or compartment in a [`KeyedLayer`](crate::keyed::KeyedLayer),
/// or a keyed layer as a whole for the refusals of a cluster-wide outage.
///
/// A refusal says which domain refused ([`BreakerOpen::domain`](crate::breaker::BreakerOpen::domain),
/// [`BulkheadFull::domain`](crate::bulkhead::BulkheadFull::domain),
/// [`Rejection::find_with_domain`](crate::Rejection::find_with_domain)), so that code above the
/// stack can hold back only what that domain refused: the [hand-off](crate::handoff) parks
/// records per domain (one sick domain among healthy ones up to half of its capacity), and a
/// sick broker's records wait while the others flow.
///
/// It is a number taken from a process-wide counter when the layer (or key) is built: `Copy`,
/// cheap to compare and hash, never reused within a process. Two domains are equal only if they
/// are the same breaker or compartment.
///
/// ```
/// use tanker::bulkhead::BulkheadLayer;
/// use tanker::breaker::BreakerLayer;
///
/// let one = BulkheadLayer::new(8)?;
/// let other = BulkheadLayer::new(8)?;
/// assert_ne!(one.handle().domain(), other.handle().domain());
/// // A clone is the same compartment, so the same domain.
/// assert_eq!(one.clone().handle().domain(), one.handle().domain());
/// assert_ne!(BreakerLayer::new().handle().domain(), one.handle().domain());
/// # Ok::<(), tanker::ConfigError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(NonZeroU64);

/// The next domain's number; 1 is [`Domain::DETACHED`].
static NEXT: AtomicU64 = AtomicU64::new(2);

impl Domain {
    /// The domain of a refusal that was rebuilt from a [`Rejection`](crate::Rejection), which
    /// does not carry one (for example by the `tonic` feature's conversion to a `Status`). No
    /// layer has it.
    pub const DETACHED: Self = Self(NonZeroU64::MIN);

    /// A domain no other has (called once per layer value or key, never per call).
    pub(crate) fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 2^64 layers cannot be built; were the counter ever to wrap, it would reach 0 first.
        Self(NonZeroU64::new(n).unwrap_or(NonZeroU64::MAX))
    }

    /// Its number, for logs and metrics labels.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({})", self.0)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "domain {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_new_domain_is_different_and_none_is_detached() {
        let a = Domain::new();
        let b = Domain::new();
        assert_ne!(a, b);
        assert_ne!(a, Domain::DETACHED);
        assert_eq!(a, a.clone());
        assert_eq!(Domain::DETACHED.to_string(), "domain 1");
    }
}
