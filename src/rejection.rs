//! One view of "tanker refused this call", for code that turns errors into responses.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::breaker::BreakerOpen;
use crate::bulkhead::BulkheadFull;
use crate::Domain;

/// `err` and the errors of its [`source`](std::error::Error::source) chain, nearest first: the
/// crate's one walk of a source chain.
pub(crate) fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&err| err.source())
}

/// A call that one of tanker's layers refused before it reached the dependency.
///
/// The layers return their refusals boxed, as [`BulkheadFull`] and [`BreakerOpen`]; code that
/// answers a client (an HTTP handler, a gRPC service, a framework's error hook) usually wants to
/// treat both the same way: the dependency was not called, so the request can be answered with
/// "unavailable, come back later". [`Rejection::find`] recognises either refusal, also when
/// another layer wrapped it as the [`source`](std::error::Error::source) of its own error.
///
/// ```
/// use tower::BoxError;
/// use tanker::Rejection;
///
/// fn status_line(err: &BoxError) -> String {
///     match Rejection::find(err.as_ref()) {
///         Some(rejection) => match rejection.retry_after() {
///             Some(after) => format!("503, retry in {}s", after.as_secs()),
///             None => "503".to_owned(),
///         },
///         None => "500".to_owned(),
///     }
/// }
///
/// let other: BoxError = "disk on fire".into();
/// assert_eq!(status_line(&other), "500");
/// ```
///
/// The features `axum` and `tonic` build their responses on it: see `tanker::axum` and
/// `tanker::tonic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// A bulkhead shed the call: its compartment was full.
    BulkheadFull,
    /// A circuit breaker rejected the call: it was open, or half-open with every probe place
    /// taken.
    BreakerOpen {
        /// When a probe may go through, as [`BreakerOpen::retry_after`] says.
        retry_after: Option<Duration>,
    },
}

impl Rejection {
    /// Recognises a refusal by tanker in `err` or in any error of its
    /// [`source`](std::error::Error::source) chain, nearest first.
    ///
    /// This is the one definition of "tanker refused this call" in the crate: the breaker never
    /// counts such an error as its dependency's failure, whatever the classifier, and the
    /// response mappings of the `axum` and `tonic` features answer it with "unavailable".
    pub fn find(err: &(dyn StdError + 'static)) -> Option<Self> {
        Self::find_with_domain(err).map(|(rejection, _)| rejection)
    }

    /// As [`find`](Self::find), with the [`Domain`] of the breaker or bulkhead that refused: the
    /// hand-off parks records per domain with it.
    ///
    /// ```
    /// use tower::{service_fn, BoxError, Service, ServiceExt};
    /// use tanker::bulkhead::BulkheadLayer;
    /// use tanker::{Rejection, ServiceBuilderExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let layer = BulkheadLayer::new(1)?;
    /// let domain = layer.handle().domain();
    /// let mut svc = tower::ServiceBuilder::new()
    ///     .bulkhead(layer)
    ///     .service(service_fn(|()| std::future::pending::<Result<(), BoxError>>()));
    /// let _busy = svc.ready().await?.call(()); // takes the only slot
    /// let shed = svc.ready().await?.call(()).await.unwrap_err();
    /// assert_eq!(
    ///     Rejection::find_with_domain(&*shed),
    ///     Some((Rejection::BulkheadFull, domain))
    /// );
    /// # Ok(())
    /// # }
    /// ```
    pub fn find_with_domain(err: &(dyn StdError + 'static)) -> Option<(Self, Domain)> {
        chain(err).find_map(|err| {
            if let Some(open) = err.downcast_ref::<BreakerOpen>() {
                let rejection = Self::BreakerOpen {
                    retry_after: open.retry_after(),
                };
                Some((rejection, open.domain()))
            } else {
                err.downcast_ref::<BulkheadFull>()
                    .map(|full| (Self::BulkheadFull, full.domain()))
            }
        })
    }

    /// When the caller may try again: the breaker's next probe, or `None` when that is not
    /// known (a shed call, or a breaker an operator forced open).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::BulkheadFull => None,
            Self::BreakerOpen { retry_after } => *retry_after,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BulkheadFull => fmt::Display::fmt(&BulkheadFull::new(Domain::DETACHED), f),
            Self::BreakerOpen { retry_after } => {
                fmt::Display::fmt(&BreakerOpen::new(*retry_after, Domain::DETACHED), f)
            }
        }
    }
}

impl From<BulkheadFull> for Rejection {
    fn from(_: BulkheadFull) -> Self {
        Self::BulkheadFull
    }
}

impl From<BreakerOpen> for Rejection {
    fn from(open: BreakerOpen) -> Self {
        Self::BreakerOpen {
            retry_after: open.retry_after(),
        }
    }
}

/// An error of another layer that keeps the error it wraps as its source, for the unit tests
/// that look for a refusal through sources.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Wrapped(pub(crate) Box<dyn StdError + Send + Sync>);

#[cfg(test)]
impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wrapped")
    }
}

#[cfg(test)]
impl StdError for Wrapped {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.0.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_refusal_directly_and_through_sources() {
        let open = BreakerOpen::new(Some(Duration::from_secs(3)), Domain::DETACHED);
        assert_eq!(
            Rejection::find(&open),
            Some(Rejection::BreakerOpen {
                retry_after: Some(Duration::from_secs(3))
            })
        );
        let wrapped = Wrapped(Box::new(BulkheadFull::new(Domain::DETACHED)));
        assert_eq!(Rejection::find(&wrapped), Some(Rejection::BulkheadFull));
        assert_eq!(Rejection::find(&wrapped).unwrap().retry_after(), None);
        let twice = Wrapped(Box::new(Wrapped(Box::new(open))));
        assert_eq!(
            Rejection::find(&twice).and_then(|r| r.retry_after()),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn find_with_domain_names_the_refusing_domain_through_sources() {
        let domain = Domain::new();
        let open = BreakerOpen::new(None, domain);
        let twice = Wrapped(Box::new(Wrapped(Box::new(open))));
        assert_eq!(
            Rejection::find_with_domain(&twice),
            Some((Rejection::BreakerOpen { retry_after: None }, domain))
        );
        let full = BulkheadFull::new(domain);
        assert_eq!(
            Rejection::find_with_domain(&full),
            Some((Rejection::BulkheadFull, domain))
        );
        let other: Box<dyn StdError + Send + Sync> = "refused by the peer".into();
        assert_eq!(Rejection::find_with_domain(other.as_ref()), None);
    }

    #[test]
    fn chain_walks_every_source_nearest_first() {
        let inner: Box<dyn StdError + Send + Sync> = "root cause".into();
        let twice = Wrapped(Box::new(Wrapped(inner)));
        let seen: Vec<String> = chain(&twice).map(|err| err.to_string()).collect();
        assert_eq!(seen, ["wrapped", "wrapped", "root cause"]);
    }

    #[test]
    fn other_errors_are_not_rejections() {
        let other: Box<dyn StdError + Send + Sync> = "refused by the peer".into();
        assert_eq!(Rejection::find(other.as_ref()), None);
        assert_eq!(Rejection::find(&Wrapped(other)), None);
    }

    #[test]
    fn displays_like_the_error_it_stands_for() {
        assert_eq!(Rejection::BulkheadFull.to_string(), "bulkhead is full");
        assert_eq!(
            Rejection::BreakerOpen { retry_after: None }.to_string(),
            "circuit breaker is forced open"
        );
    }
}
