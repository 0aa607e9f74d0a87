//! Deciding which outcomes count as failures of the dependency.

/// How the breaker counts one call's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The dependency did its job.
    Success,
    /// The dependency failed; this counts toward tripping the breaker.
    Failure,
    /// Not the dependency's doing (for example, the caller sent an invalid request): the call is
    /// not counted at all. An ignored probe frees its place without closing or opening.
    Ignore,
}

/// Classifies the result of a call for a [`Breaker`](super::Breaker).
///
/// Whatever the classifier says, a call that an inner tanker layer refused (a bulkhead's
/// [`BulkheadFull`](crate::bulkhead::BulkheadFull) or an inner breaker's
/// [`BreakerOpen`](super::BreakerOpen), itself or anywhere in the error's
/// [`source`](std::error::Error::source) chain: [`Rejection::find`](crate::Rejection::find)) is
/// never counted as a failure but ignored: the dependency was not called, so the refusal says
/// nothing about it. A breaker over a bulkhead therefore does not open because the bulkhead
/// sheds.
///
/// Implemented for [`ErrorsAsFailures`] (the default) and for every
/// `Fn(Result<&T, &E>) -> Outcome`, where `T` and `E` are the inner service's response and error
/// types. The classifier is cloned into each response future, so keep it cheap to clone (a
/// zero-sized type, a function, or a closure over an `Arc`).
///
/// ```
/// use tanker::breaker::{BreakerLayer, Outcome};
///
/// #[derive(Debug)]
/// enum DbError { Timeout, BadQuery }
///
/// // A bad query is the caller's mistake, not a sign that the database is failing.
/// let layer = BreakerLayer::builder()
///     .classify(|result: Result<&String, &DbError>| match result {
///         Ok(_) => Outcome::Success,
///         Err(DbError::BadQuery) => Outcome::Ignore,
///         Err(DbError::Timeout) => Outcome::Failure,
///     })
///     .build()?;
/// # Ok::<_, tanker::ConfigError>(())
/// ```
pub trait Classify<T, E> {
    /// Classifies one result.
    fn classify(&self, result: Result<&T, &E>) -> Outcome;
}

/// The default classifier: every `Ok` is a success and every `Err` a failure, except a refusal by
/// an inner tanker layer, which is ignored (see [`Classify`]).
///
/// This includes tower's `timeout::error::Elapsed` when a `TimeoutLayer` sits inside the breaker,
/// so slow dependencies cut off by a timeout trip it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorsAsFailures;

impl<T, E> Classify<T, E> for ErrorsAsFailures {
    #[inline]
    fn classify(&self, result: Result<&T, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

impl<F, T, E> Classify<T, E> for F
where
    F: Fn(Result<&T, &E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: Result<&T, &E>) -> Outcome {
        self(result)
    }
}
