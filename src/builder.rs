//! `ServiceBuilder` methods for tanker's layers.

use tower::layer::util::Stack;
use tower::ServiceBuilder;

use crate::breaker::BreakerLayer;
use crate::bulkhead::BulkheadLayer;

/// Adds `.bulkhead(..)` and `.breaker(..)` to [`tower::ServiceBuilder`].
///
/// ```
/// use std::time::Duration;
/// use tower::{service_fn, BoxError, ServiceBuilder};
/// use tanker::{breaker::BreakerLayer, bulkhead::BulkheadLayer, ServiceBuilderExt};
///
/// # fn main() -> Result<(), tanker::ConfigError> {
/// let breaker = BreakerLayer::new();
/// let bulkhead = BulkheadLayer::new(32)?;
/// let svc = ServiceBuilder::new()
///     .breaker(breaker.clone())
///     .bulkhead(bulkhead.clone())
///     .timeout(Duration::from_millis(50))
///     .service(service_fn(|x: u32| async move { Ok::<_, BoxError>(x) }));
/// # drop(svc);
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed {
    /// Adds a [`BulkheadLayer`]: bounded concurrency with load shedding.
    fn bulkhead(self, layer: BulkheadLayer) -> ServiceBuilder<Stack<BulkheadLayer, L>>;

    /// Adds a [`BreakerLayer`]: a circuit breaker.
    fn breaker<C>(self, layer: BreakerLayer<C>) -> ServiceBuilder<Stack<BreakerLayer<C>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn bulkhead(self, layer: BulkheadLayer) -> ServiceBuilder<Stack<BulkheadLayer, L>> {
        self.layer(layer)
    }

    fn breaker<C>(self, layer: BreakerLayer<C>) -> ServiceBuilder<Stack<BreakerLayer<C>, L>> {
        self.layer(layer)
    }
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}
