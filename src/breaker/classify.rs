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

/// The default classifier: every `Ok` is a success and every `Err` a failure.
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
