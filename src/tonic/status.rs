//! Errors of a tanker stack as gRPC [`Status`]es: refusals as `UNAVAILABLE` with the breaker's
//! back-off as pushback, tower's timeouts as `DEADLINE_EXCEEDED`.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::Status;
use tower::timeout::error::Elapsed;
use tower::BoxError;

use crate::breaker::BreakerOpen;
use crate::bulkhead::BulkheadFull;
use crate::rejection::chain;
use crate::{Domain, Rejection};

/// The metadata key of gRPC's server pushback: how many milliseconds a client should wait before
/// it retries (gRPC proposal A6, "Retry Throttling and Pushback").
const RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// Maps an error of a stack of tower layers to the [`Status`] a gRPC client or server should see.
///
/// - An error that already is a [`Status`] is returned unchanged.
/// - A refusal by tanker ([`BulkheadFull`] or [`BreakerOpen`]), itself or anywhere in the
///   error's [`source`](std::error::Error::source) chain, becomes `UNAVAILABLE`, as the
///   `From<Rejection>` conversion builds it (with `grpc-retry-pushback-ms` when the breaker
///   knows when it will probe again).
/// - tower's `timeout::error::Elapsed`, itself or in the chain, becomes `DEADLINE_EXCEEDED`.
/// - Anything else goes through tonic's own [`Status::from_error`]: a status among the sources
///   is found, a connection error becomes `UNAVAILABLE`, and the rest is `UNKNOWN`.
///
/// Except for a status returned unchanged, the original error is kept as the status's
/// [`source`](std::error::Error::source), so `Rejection::find(&status)` and
/// `status.source()` still see it.
///
/// Made to be given to `ServiceBuilder::map_err` (tower's `util` feature) or
/// `ServiceExt::map_err`; see the [module docs](super) for a client and a server.
///
/// ```
/// use tower::BoxError;
/// use tonic::Code;
///
/// let timeout: BoxError = tower::timeout::error::Elapsed::new().into();
/// assert_eq!(tanker::tonic::status(timeout).code(), Code::DeadlineExceeded);
///
/// let already: BoxError = tonic::Status::not_found("no such stream").into();
/// assert_eq!(tanker::tonic::status(already).code(), Code::NotFound);
/// ```
pub fn status(err: BoxError) -> Status {
    let err = match err.downcast::<Status>() {
        Ok(status) => return *status,
        Err(err) => err,
    };
    if let Some(rejection) = Rejection::find(err.as_ref()) {
        return with_source(unavailable(rejection), err);
    }
    if chain(err.as_ref()).any(|e| e.is::<Elapsed>()) {
        let message = err.to_string();
        return with_source(Status::deadline_exceeded(message), err);
    }
    Status::from_error(err)
}

/// `UNAVAILABLE` with the rejection's message, and the pushback hint when the retry time is known.
fn unavailable(rejection: Rejection) -> Status {
    let mut status = Status::unavailable(rejection.to_string());
    if let Some(after) = rejection.retry_after() {
        status.metadata_mut().insert(
            MetadataKey::from_static(RETRY_PUSHBACK_MS),
            MetadataValue::from(pushback_millis(after)),
        );
    }
    status
}

/// Whole milliseconds, rounded up so that a client that waits that long does not come back
/// before the breaker lets a probe through.
fn pushback_millis(after: Duration) -> u64 {
    let millis = after.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX)
}

fn with_source(mut status: Status, source: BoxError) -> Status {
    status.set_source(Arc::from(source));
    status
}

/// `UNAVAILABLE`, with the shed call's message; no pushback, since a slot may free up any moment.
impl From<BulkheadFull> for Status {
    fn from(full: BulkheadFull) -> Self {
        with_source(unavailable(Rejection::from(full)), Box::new(full))
    }
}

/// `UNAVAILABLE`, with `grpc-retry-pushback-ms` set to the breaker's
/// [`retry_after`](BreakerOpen::retry_after) when it is known.
impl From<BreakerOpen> for Status {
    fn from(open: BreakerOpen) -> Self {
        with_source(unavailable(Rejection::from(open)), Box::new(open))
    }
}

/// `UNAVAILABLE`, as the conversion of the [`BulkheadFull`] or [`BreakerOpen`] it stands for
/// builds it.
impl From<Rejection> for Status {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::BulkheadFull => BulkheadFull::new(Domain::DETACHED).into(),
            Rejection::BreakerOpen { retry_after } => {
                BreakerOpen::new(retry_after, Domain::DETACHED).into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use tonic::Code;

    use super::*;
    use crate::rejection::Wrapped;

    fn pushback(status: &Status) -> Option<&str> {
        let value = status.metadata().get(RETRY_PUSHBACK_MS)?;
        Some(value.to_str().expect("ascii"))
    }

    #[test]
    fn bulkhead_full_is_unavailable_without_pushback() {
        let status = Status::from(BulkheadFull::new(Domain::DETACHED));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "bulkhead is full");
        assert_eq!(pushback(&status), None);
        assert_eq!(Rejection::find(&status), Some(Rejection::BulkheadFull));
    }

    #[test]
    fn open_breaker_is_unavailable_with_pushback_in_millis() {
        let status = Status::from(BreakerOpen::new(
            Some(Duration::from_secs(5)),
            Domain::DETACHED,
        ));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(pushback(&status), Some("5000"));
        assert_eq!(
            Rejection::find(&status).and_then(|r| r.retry_after()),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn pushback_rounds_up_to_the_next_millisecond() {
        let status = Status::from(BreakerOpen::new(
            Some(Duration::from_micros(1_200)),
            Domain::DETACHED,
        ));
        assert_eq!(pushback(&status), Some("2"));
        assert_eq!(pushback_millis(Duration::ZERO), 0);
        assert_eq!(pushback_millis(Duration::from_nanos(1)), 1);
        assert_eq!(pushback_millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn forced_open_breaker_has_no_pushback() {
        let status = Status::from(BreakerOpen::new(None, Domain::DETACHED));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "circuit breaker is forced open");
        assert_eq!(pushback(&status), None);
    }

    #[test]
    fn rejection_converts_like_the_error_it_stands_for() {
        let after = Some(Duration::from_millis(750));
        let from_rejection = Status::from(Rejection::BreakerOpen { retry_after: after });
        let from_error = Status::from(BreakerOpen::new(after, Domain::DETACHED));
        assert_eq!(from_rejection.code(), from_error.code());
        assert_eq!(from_rejection.message(), from_error.message());
        assert_eq!(pushback(&from_rejection), Some("750"));

        let shed = Status::from(Rejection::BulkheadFull);
        assert_eq!(shed.code(), Code::Unavailable);
        assert_eq!(shed.message(), "bulkhead is full");
    }

    #[test]
    fn status_finds_a_rejection_anywhere_in_the_chain() {
        let open = BreakerOpen::new(Some(Duration::from_secs(2)), Domain::DETACHED);
        let direct = status(Box::new(open));
        assert_eq!(direct.code(), Code::Unavailable);
        assert_eq!(pushback(&direct), Some("2000"));

        let deep = status(Box::new(Wrapped(Box::new(Wrapped(Box::new(
            BulkheadFull::new(Domain::DETACHED),
        ))))));
        assert_eq!(deep.code(), Code::Unavailable);
        assert_eq!(Rejection::find(&deep), Some(Rejection::BulkheadFull));
    }

    #[test]
    fn status_maps_elapsed_to_deadline_exceeded() {
        let direct = status(Box::new(Elapsed::new()));
        assert_eq!(direct.code(), Code::DeadlineExceeded);
        assert!(direct.source().is_some_and(|e| e.is::<Elapsed>()));

        let wrapped = status(Box::new(Wrapped(Box::new(Elapsed::new()))));
        assert_eq!(wrapped.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn status_returns_a_status_unchanged() {
        let mut original = Status::permission_denied("not yours");
        original
            .metadata_mut()
            .insert("x-reason", MetadataValue::from_static("owner"));
        let mapped = status(Box::new(original));
        assert_eq!(mapped.code(), Code::PermissionDenied);
        assert_eq!(mapped.message(), "not yours");
        assert_eq!(
            mapped.metadata().get("x-reason").map(|v| v.as_bytes()),
            Some(&b"owner"[..])
        );
    }

    #[test]
    fn status_leaves_other_errors_to_tonic() {
        let other = status("connection reset by a gremlin".into());
        assert_eq!(other.code(), Code::Unknown);
        assert_eq!(other.message(), "connection reset by a gremlin");

        let inner = status(Box::new(Wrapped(Box::new(Status::aborted("lost a race")))));
        assert_eq!(inner.code(), Code::Aborted);
    }
}
