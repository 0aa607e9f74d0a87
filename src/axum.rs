//! tanker's refusals as axum responses: `503 Service Unavailable`, with `Retry-After` when known.
//!
//! axum needs a route's service to be infallible, so a stack of tanker's layers goes under
//! axum's `HandleErrorLayer`, with [`handle_error`] to turn its errors into responses:
//!
//! ```
//! use std::time::Duration;
//! use axum::{body::Body, error_handling::HandleErrorLayer, http::Request, routing::get, Router};
//! use tower::{BoxError, ServiceBuilder, ServiceExt};
//! use tanker::{breaker::BreakerLayer, bulkhead::BulkheadLayer, ServiceBuilderExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Built once, outside the router: axum clones the route's service for every request, and
//! // every clone shares this compartment and this breaker.
//! let breaker = BreakerLayer::builder().name("stats").build()?;
//! let bulkhead = BulkheadLayer::new(32)?;
//!
//! let app = Router::new().route(
//!     "/stats",
//!     get(|| async { "42 events" }).layer(
//!         ServiceBuilder::new()
//!             .layer(HandleErrorLayer::new(tanker::axum::handle_error))
//!             .breaker(breaker.clone())
//!             .bulkhead(bulkhead.clone())
//!             .timeout(Duration::from_secs(2)),
//!     ),
//! );
//!
//! // An operator takes the dependency out of service: the route answers 503 without calling it.
//! breaker.handle().force_open();
//! let response = app.oneshot(Request::get("/stats").body(Body::empty())?).await?;
//! assert_eq!(response.status(), 503);
//! // Forced open, the breaker cannot say when it will let calls through again.
//! assert!(response.headers().get("retry-after").is_none());
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! [`handle_error`] looks at the error and at its [`source`](std::error::Error::source) chain:
//!
//! | error | status | body |
//! | --- | --- | --- |
//! | a [`Rejection`]: [`BulkheadFull`] or [`BreakerOpen`] | `503 Service Unavailable`, with `Retry-After` when the breaker knows when it will probe | what was refused, e.g. `bulkhead is full`, and a newline |
//! | tower's `timeout::error::Elapsed` | `504 Gateway Timeout` | `request timed out` and a newline |
//! | anything else | `500 Internal Server Error` | `internal server error` and a newline |
//!
//! `Retry-After` is in whole seconds, rounded up and at least 1, so a client that honours it
//! never comes back before the probe. A shed call has no `Retry-After`: a slot may free up at
//! any moment. Neither has a breaker that an operator forced open: no probe happens until it is
//! reset.
//!
//! The text of other errors may describe the inside of the service, so it never reaches the
//! client: it is logged with `tracing` at `debug` level instead.
//!
//! # In a handler
//!
//! A handler that calls a tanker-protected client can return the refusal itself:
//! [`BulkheadFull`], [`BreakerOpen`] and [`Rejection`] implement `IntoResponse`, with the same
//! status and header as above.
//!
//! ```
//! use axum::response::{IntoResponse, Response};
//! use tower::BoxError;
//! use tanker::Rejection;
//!
//! fn answer(result: Result<String, BoxError>) -> Response {
//!     match result {
//!         Ok(stats) => stats.into_response(),
//!         Err(err) => match Rejection::find(err.as_ref()) {
//!             Some(rejection) => rejection.into_response(),
//!             None => (axum::http::StatusCode::BAD_GATEWAY, "stats unavailable").into_response(),
//!         },
//!     }
//! }
//! # assert_eq!(answer(Ok("42".to_owned())).status(), 200);
//! # assert_eq!(answer(Err("refused".into())).status(), 502);
//! ```
//!
//! For a body of your own, take the refusal's response and replace its body and
//! `Content-Type`: the status and `Retry-After` stay.
//!
//! To hand the protected client to handlers as axum `State`, give it a concrete type: a stack of
//! generic layers cannot be named in a handler's signature, and axum cannot infer it. Erase it
//! with tower's `BoxCloneSyncService` (or `ServiceBuilder::boxed_clone_sync`, with tower's `util`
//! feature), at the cost of one allocation per call, or capture the client in a closure.

use std::error::Error as StdError;
use std::time::Duration;

use axum_core::response::{IntoResponse, Response};
use http::header::{HeaderValue, RETRY_AFTER};
use http::StatusCode;
use tower::timeout::error::Elapsed;
use tower::BoxError;

use crate::breaker::BreakerOpen;
use crate::bulkhead::BulkheadFull;
use crate::rejection::chain;
use crate::Rejection;

/// Turns an error of a tanker-protected service into a response: `503` for a [`Rejection`]
/// (with `Retry-After` when known), `504` for a tower timeout, `500` for anything else.
///
/// Made for axum's `HandleErrorLayer`:
/// `HandleErrorLayer::new(tanker::axum::handle_error)`. The [module docs](self) give the
/// mapping in full and an example.
pub async fn handle_error(err: BoxError) -> Response {
    let err: &(dyn StdError + 'static) = err.as_ref();
    if let Some(rejection) = Rejection::find(err) {
        return rejection.into_response();
    }
    if chain(err).any(|e| e.is::<Elapsed>()) {
        tracing::debug!(error = %err, "request timed out");
        return (StatusCode::GATEWAY_TIMEOUT, "request timed out\n").into_response();
    }
    tracing::debug!(error = %err, "unhandled error");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n").into_response()
}

/// `503 Service Unavailable`, with `Retry-After` when the rejection says when to come back; the
/// body says what refused the call.
impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        // The time to the next probe is in the header, in a form clients read.
        let body = match self {
            Self::BulkheadFull => "bulkhead is full\n",
            Self::BreakerOpen {
                retry_after: Some(_),
            } => "circuit breaker is open\n",
            Self::BreakerOpen { retry_after: None } => "circuit breaker is forced open\n",
        };
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        if let Some(after) = self.retry_after() {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(whole_seconds(after)));
        }
        response
    }
}

/// `503 Service Unavailable`, without `Retry-After`, as [`Rejection::BulkheadFull`].
impl IntoResponse for BulkheadFull {
    fn into_response(self) -> Response {
        Rejection::from(self).into_response()
    }
}

/// `503 Service Unavailable`, with `Retry-After` when the breaker will probe, as
/// [`Rejection::BreakerOpen`].
impl IntoResponse for BreakerOpen {
    fn into_response(self) -> Response {
        Rejection::from(self).into_response()
    }
}

/// `after` in whole seconds, rounded up, at least 1.
fn whole_seconds(after: Duration) -> u64 {
    let secs = after.as_secs();
    let secs = if after.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    };
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Domain;

    /// Another layer's error with `err` as its source, as axum wraps errors.
    fn wrapped(err: impl Into<BoxError>) -> BoxError {
        Box::new(axum_core::Error::new(err))
    }

    fn open_for(millis: u64) -> BreakerOpen {
        BreakerOpen::new(Some(Duration::from_millis(millis)), Domain::DETACHED)
    }

    fn retry_after(response: &Response) -> Option<&str> {
        response
            .headers()
            .get(RETRY_AFTER)
            .map(|value| value.to_str().expect("an ASCII header"))
    }

    /// Asserts that `response` is a 503, and returns its `Retry-After`.
    fn unavailable(response: &Response) -> Option<&str> {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        retry_after(response)
    }

    async fn body(response: Response) -> String {
        let bytes = ::axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("a short body");
        String::from_utf8(bytes.to_vec()).expect("a UTF-8 body")
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let header = |millis| retry_after(&open_for(millis).into_response()).map(str::to_owned);
        assert_eq!(header(1_200).as_deref(), Some("2"));
        assert_eq!(header(300).as_deref(), Some("1"));
        assert_eq!(header(0).as_deref(), Some("1"));
        assert_eq!(header(5_000).as_deref(), Some("5"));
        assert_eq!(header(5_001).as_deref(), Some("6"));
        assert_eq!(
            whole_seconds(Duration::MAX),
            u64::MAX,
            "saturates, no overflow"
        );
    }

    #[tokio::test]
    async fn each_refusal_is_503_and_says_what_refused() {
        let response = BulkheadFull::new(Domain::DETACHED).into_response();
        assert_eq!(
            unavailable(&response),
            None,
            "a shed call has no retry time"
        );
        assert_eq!(body(response).await, "bulkhead is full\n");

        let response = open_for(1_200).into_response();
        assert_eq!(unavailable(&response), Some("2"));
        assert_eq!(body(response).await, "circuit breaker is open\n");

        let response = BreakerOpen::new(None, Domain::DETACHED).into_response();
        assert_eq!(
            unavailable(&response),
            None,
            "forced open: no probe to wait for"
        );
        assert_eq!(body(response).await, "circuit breaker is forced open\n");

        let rejection = Rejection::BreakerOpen {
            retry_after: Some(Duration::from_millis(300)),
        };
        assert_eq!(unavailable(&rejection.into_response()), Some("1"));
    }

    #[tokio::test]
    async fn handle_error_finds_refusals_through_sources() {
        let response = handle_error(Box::new(BulkheadFull::new(Domain::DETACHED))).await;
        assert_eq!(unavailable(&response), None);
        let response = handle_error(Box::new(open_for(1_200))).await;
        assert_eq!(unavailable(&response), Some("2"));
        let response = handle_error(wrapped(wrapped(open_for(300)))).await;
        assert_eq!(unavailable(&response), Some("1"));
        let response = handle_error(wrapped(BreakerOpen::new(None, Domain::DETACHED))).await;
        assert_eq!(unavailable(&response), None);
    }

    #[tokio::test]
    async fn handle_error_answers_a_timeout_with_504() {
        let response = handle_error(Box::new(Elapsed::new())).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(retry_after(&response), None);
        assert_eq!(body(response).await, "request timed out\n");

        let response = handle_error(wrapped(Elapsed::new())).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[tokio::test]
    async fn handle_error_hides_other_errors_behind_500() {
        let secret = "password rejected by db-7.internal";
        let response = handle_error(secret.into()).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(retry_after(&response), None);
        let text = body(response).await;
        assert!(!text.contains("db-7"), "leaked the error: {text}");
        assert_eq!(text, "internal server error\n");

        let response = handle_error(wrapped(secret)).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
