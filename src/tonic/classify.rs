//! [`GrpcClassifier`]: a breaker classifier that reads gRPC statuses.

use std::error::Error as StdError;
use std::fmt;

use http::Response;
use tonic::{Code, Status};
use tower::BoxError;

use super::code::{header_code, MAX_CODE};
use crate::breaker::{Classify, Outcome};
use crate::Rejection;
#[cfg(doc)]
use crate::{breaker::BreakerOpen, bulkhead::BulkheadFull};

/// A [breaker classifier](Classify) for a gRPC client: counts transport errors, timeouts and the
/// server's failure statuses, and ignores tanker's own refusals.
///
/// Give it to [`BreakerBuilder::classify`](crate::breaker::BreakerBuilder::classify) for a
/// breaker around a tonic [`Channel`], in the stack of the [module docs](super):
///
/// ```
/// use tanker::breaker::BreakerLayer;
/// use tanker::tonic::GrpcClassifier;
/// use tonic::Code;
///
/// let breaker = BreakerLayer::builder()
///     .name("inventory")
///     .classify(GrpcClassifier::new().with(Code::DataLoss))
///     .build()?;
/// # Ok::<_, tanker::ConfigError>(())
/// ```
///
/// # How it counts
///
/// For a breaker whose inner service returns `http::Response<B>` (what a [`Channel`] returns, for
/// any body `B`), and whose error is a [`BoxError`] (as when tanker's bulkhead or tower's timeout
/// sit inside the breaker) or a [`Status`] (as when `.map_err(tanker::tonic::status)` does):
///
/// | Result | Outcome |
/// |---|---|
/// | An error that is, or has in its [`source`](std::error::Error::source) chain, a refusal by tanker ([`Rejection::find`]): a [`BulkheadFull`], a [`BreakerOpen`] of an inner breaker, or a [`Status`] made from either | [`Ignore`](Outcome::Ignore): shedding is tanker's back-pressure, not news about the server |
/// | Any other error: a transport error (connection refused or reset), tower's timeout, ... | [`Failure`](Outcome::Failure), whatever its code if it is a [`Status`]: no server answered |
/// | A response whose headers carry a `grpc-status` in the failure set | [`Failure`](Outcome::Failure) |
/// | A response whose headers carry any other `grpc-status`, `OK` included | [`Success`](Outcome::Success): the server is up and answering |
/// | A response whose headers carry a malformed `grpc-status` (not a code from 0 to 16, written as gRPC writes it) | [`Success`](Outcome::Success): no telling what the server meant, and one odd response says little about its health; tonic itself reports it to the caller as `UNKNOWN` |
/// | A response without `grpc-status` in its headers, with an HTTP status other than `200 OK` (a proxy's `503`, say) | by the code gRPC's [HTTP to gRPC status mapping] gives it: `429`, `502`, `503` and `504` are `UNAVAILABLE`, `400` is `INTERNAL`, `401` `UNAUTHENTICATED`, `403` `PERMISSION_DENIED`, `404` `UNIMPLEMENTED`, any other `UNKNOWN`; a failure if that code is in the set |
/// | A `200 OK` response without `grpc-status` in its headers | [`Success`](Outcome::Success): its status comes in the trailers, see below |
///
/// A status code outside the failure set counts as a success rather than being ignored: the
/// server answered, which is what the breaker asks of it. A half-open breaker's probe answered
/// `NOT_FOUND` closes it.
///
/// # Which codes are failures
///
/// By default, the codes that say the *server* is down, overloaded or broken, whatever the caller
/// asked ([`new`](Self::new), [`DEFAULT_FAILURES`](Self::DEFAULT_FAILURES)):
///
/// - `UNAVAILABLE`: the server, or a proxy in front of it, cannot take the call now (down,
///   draining, shedding load, as a server-side tanker bulkhead or breaker answers).
/// - `DEADLINE_EXCEEDED`: the server, or a proxy, ran out of time: slowness.
/// - `RESOURCE_EXHAUSTED`: out of memory, connections, or quota. If your server answers it for one
///   caller's quota or for an oversized request, [`without`](Self::without) it.
/// - `INTERNAL`: the server broke one of its own invariants.
/// - `UNKNOWN`: an error the server could not classify (tonic's [`Status::from_error`] gives it
///   to any error that is not, and does not carry, a status).
///
/// Not by default, though they are errors on the server's side:
///
/// - `ABORTED`: the call lost a race (a transaction conflict, a failed compare-and-swap). The
///   server works as designed, and the caller should retry at a higher level; counting it would
///   let a burst of contention on a few keys open the breaker for every call.
/// - `DATA_LOSS`: data was lost or corrupted. Serious, and worth an alert, but a fact about some
///   data rather than about the server's ability to answer: opening the breaker would also fail
///   the calls on healthy data. Add it with [`with`](Self::with) where data loss means the
///   dependency is broken as a whole.
///
/// The other codes (`INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`,
/// `FAILED_PRECONDITION`, `OUT_OF_RANGE`, `UNIMPLEMENTED`, `UNAUTHENTICATED`, `CANCELLED`, `OK`)
/// are about the request or the caller, and a healthy server answers them every day.
///
/// # What it cannot see
///
/// A gRPC server sends a call's status in the trailers, after the response's messages. A tower
/// layer sees the response when its headers arrive, and the breaker classifies it then, before
/// any message or trailer. So the classifier reads only the statuses a server sends in the
/// headers, in a *trailers-only* response: the way a server answers a call that fails before it
/// sends any message, which is how gRPC servers (tonic's included) answer most errors of unary
/// calls and every refusal by a layer. A status sent in the trailers after a response body (a
/// streaming call that fails midway, or a server that sends an empty body then its error) is out
/// of its sight: such a call counts as a success. tower's timeout inside the breaker likewise
/// covers the call only until the response's headers arrive.
///
/// # Errors of other types
///
/// The breaker passes the classifier its inner service's error type, and this classifier handles
/// [`BoxError`] and [`Status`]. A breaker directly around a [`Channel`], with nothing inside it,
/// sees tonic's `transport::Error`: put the recipe's timeout inside it, or a
/// `.map_err(BoxError::from)`.
///
/// [`Channel`]: https://docs.rs/tonic/0.14/tonic/transport/struct.Channel.html
/// [HTTP to gRPC status mapping]: https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcClassifier {
    /// One bit per code, `1 << code`: the codes that are failures.
    failures: u32,
}

impl GrpcClassifier {
    /// The codes that are failures by default: `UNAVAILABLE`, `DEADLINE_EXCEEDED`,
    /// `RESOURCE_EXHAUSTED`, `INTERNAL` and `UNKNOWN`. The [type docs](Self#which-codes-are-failures)
    /// say why these.
    pub const DEFAULT_FAILURES: [Code; 5] = [
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::ResourceExhausted,
        Code::Internal,
        Code::Unknown,
    ];

    /// Counts the [`DEFAULT_FAILURES`](Self::DEFAULT_FAILURES), besides errors. The same as
    /// [`default`](Self::default).
    pub const fn new() -> Self {
        let mut classifier = Self::errors_only();
        let mut i = 0;
        while i < Self::DEFAULT_FAILURES.len() {
            classifier = classifier.with(Self::DEFAULT_FAILURES[i]);
            i += 1;
        }
        classifier
    }

    /// Counts no status code as a failure: only errors (transport errors, timeouts) fail a call,
    /// and tanker's refusals are still ignored. Add the codes you want with [`with`](Self::with).
    ///
    /// ```
    /// use tanker::tonic::GrpcClassifier;
    /// use tonic::Code;
    ///
    /// let unavailable_only = GrpcClassifier::errors_only().with(Code::Unavailable);
    /// assert!(unavailable_only.is_failure(Code::Unavailable));
    /// assert!(!unavailable_only.is_failure(Code::Internal));
    /// ```
    pub const fn errors_only() -> Self {
        Self { failures: 0 }
    }

    /// Also counts `code` as a failure.
    pub const fn with(self, code: Code) -> Self {
        Self {
            failures: self.failures | bit(code),
        }
    }

    /// No longer counts `code` as a failure: a response with it is a success.
    ///
    /// ```
    /// use tanker::tonic::GrpcClassifier;
    /// use tonic::Code;
    ///
    /// // This server answers RESOURCE_EXHAUSTED for a caller over its quota: the caller's business.
    /// let classifier = GrpcClassifier::new().without(Code::ResourceExhausted);
    /// assert!(!classifier.is_failure(Code::ResourceExhausted));
    /// assert!(classifier.is_failure(Code::Unavailable));
    /// ```
    pub const fn without(self, code: Code) -> Self {
        Self {
            failures: self.failures & !bit(code),
        }
    }

    /// Whether a response with `code` counts as a failure.
    pub const fn is_failure(&self, code: Code) -> bool {
        self.failures & bit(code) != 0
    }

    /// The codes that count as failures, in the order of their numbers.
    pub fn failures(&self) -> impl Iterator<Item = Code> {
        let classifier = *self;
        (0..=MAX_CODE)
            .map(Code::from_i32)
            .filter(move |&code| classifier.is_failure(code))
    }

    /// Classifies a response by the status code it carries in its headers, if any.
    fn response<B>(&self, response: &Response<B>) -> Outcome {
        match header_code(response) {
            Some(code) if self.is_failure(code) => Outcome::Failure,
            _ => Outcome::Success,
        }
    }
}

/// `DEFAULT_FAILURES`: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL` and
/// `UNKNOWN`.
impl Default for GrpcClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for GrpcClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcClassifier")
            .field("failures", &Failures(self))
            .finish()
    }
}

/// The failure codes of a classifier, printed as a set.
struct Failures<'a>(&'a GrpcClassifier);

impl fmt::Debug for Failures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.failures()).finish()
    }
}

/// For a stack whose layers box their errors: tanker's bulkhead or tower's timeout inside the
/// breaker. See [how it counts](GrpcClassifier#how-it-counts).
impl<B> Classify<Response<B>, BoxError> for GrpcClassifier {
    fn classify(&self, result: Result<&Response<B>, &BoxError>) -> Outcome {
        match result {
            Ok(response) => self.response(response),
            Err(err) => error(err.as_ref()),
        }
    }
}

/// For a stack that maps its errors to statuses inside the breaker. See
/// [how it counts](GrpcClassifier#how-it-counts).
impl<B> Classify<Response<B>, Status> for GrpcClassifier {
    fn classify(&self, result: Result<&Response<B>, &Status>) -> Outcome {
        match result {
            Ok(response) => self.response(response),
            Err(status) => error(status),
        }
    }
}

/// The bit of `code` in a set of codes. Every code is at most `MAX_CODE`, below 32.
const fn bit(code: Code) -> u32 {
    1 << (code as u32)
}

/// An error reached the breaker: a failure, unless tanker refused the call before it was sent.
fn error(err: &(dyn StdError + 'static)) -> Outcome {
    if Rejection::find(err).is_some() {
        Outcome::Ignore
    } else {
        Outcome::Failure
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;
    use tower::timeout::error::Elapsed;

    use super::super::code::{parse_code, GRPC_STATUS};
    use super::super::status;
    use super::*;
    use crate::breaker::BreakerOpen;
    use crate::bulkhead::BulkheadFull;
    use crate::rejection::Wrapped;
    use crate::Domain;

    /// A response with the HTTP status `http` and, if given, a `grpc-status` header.
    fn response(http: u16, grpc_status: Option<&'static str>) -> Response<()> {
        let mut builder = Response::builder().status(http);
        if let Some(value) = grpc_status {
            builder = builder.header(GRPC_STATUS, value);
        }
        builder.body(()).expect("valid response")
    }

    /// A trailers-only response that carries `code`, as a server sends it.
    fn trailers_only(code: Code) -> Response<()> {
        let status = Status::new(code, "from the server");
        let mut response = Response::new(());
        status
            .add_header(response.headers_mut())
            .expect("valid status headers");
        response
    }

    fn of_response(classifier: GrpcClassifier, response: &Response<()>) -> Outcome {
        Classify::<_, BoxError>::classify(&classifier, Ok(response))
    }

    fn of_error(classifier: GrpcClassifier, err: BoxError) -> Outcome {
        Classify::<Response<()>, _>::classify(&classifier, Err(&err))
    }

    fn of_status(classifier: GrpcClassifier, status: &Status) -> Outcome {
        Classify::<Response<()>, _>::classify(&classifier, Err(status))
    }

    const ALL_CODES: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    #[test]
    fn default_counts_exactly_the_server_side_codes() {
        let classifier = GrpcClassifier::default();
        assert_eq!(classifier, GrpcClassifier::new());
        for code in ALL_CODES {
            let expected = if GrpcClassifier::DEFAULT_FAILURES.contains(&code) {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert_eq!(
                of_response(classifier, &trailers_only(code)),
                expected,
                "{code:?}"
            );
            assert_eq!(classifier.is_failure(code), expected == Outcome::Failure);
        }
        // Races and lost data are not signs of a failing server, by default.
        assert!(!classifier.is_failure(Code::Aborted));
        assert!(!classifier.is_failure(Code::DataLoss));
        assert_eq!(
            classifier.failures().collect::<Vec<_>>(),
            [
                Code::Unknown,
                Code::DeadlineExceeded,
                Code::ResourceExhausted,
                Code::Internal,
                Code::Unavailable,
            ]
        );
    }

    #[test]
    fn a_response_without_grpc_status_in_its_headers_is_a_success() {
        // The status, if any, comes in the trailers, out of the classifier's sight.
        let ok = response(200, None);
        assert_eq!(of_response(GrpcClassifier::new(), &ok), Outcome::Success);
        let all = ALL_CODES
            .into_iter()
            .fold(GrpcClassifier::errors_only(), GrpcClassifier::with);
        assert_eq!(of_response(all, &ok), Outcome::Success);
    }

    #[test]
    fn grpc_status_header_is_read_as_grpc_writes_it() {
        for (value, expected) in [
            ("14", Outcome::Failure),
            ("2", Outcome::Failure),
            ("0", Outcome::Success),
            ("5", Outcome::Success),
        ] {
            let response = response(200, Some(value));
            assert_eq!(of_response(GrpcClassifier::new(), &response), expected);
        }
        for (number, code) in ALL_CODES.into_iter().enumerate() {
            assert_eq!(parse_code(number.to_string().as_bytes()), Some(code));
        }
    }

    #[test]
    fn a_malformed_grpc_status_is_not_a_failure() {
        let everything = ALL_CODES
            .into_iter()
            .fold(GrpcClassifier::errors_only(), GrpcClassifier::with);
        for value in [
            "",
            "17",
            "99",
            "014",
            "+14",
            "-1",
            " 14",
            "14 ",
            "1x",
            "unavailable",
            "140",
        ] {
            assert_eq!(parse_code(value.as_bytes()), None, "{value:?}");
            assert_eq!(
                of_response(everything, &response(200, Some(value))),
                Outcome::Success,
                "{value:?}"
            );
        }
        assert_eq!(parse_code(&[0xff, b'4']), None);
        assert_eq!(parse_code(b"4294967310"), None);
        // Also with an HTTP error: the header is there, so the HTTP status is not consulted.
        assert_eq!(
            of_response(everything, &response(503, Some("x"))),
            Outcome::Success
        );
    }

    #[test]
    fn grpc_status_header_wins_over_the_http_status() {
        assert_eq!(
            of_response(GrpcClassifier::new(), &response(503, Some("5"))),
            Outcome::Success
        );
    }

    #[test]
    fn http_errors_without_grpc_status_map_as_grpc_says() {
        let classifier = GrpcClassifier::new();
        for (http, code) in [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (429, Code::Unavailable),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (500, Code::Unknown),
            (204, Code::Unknown),
        ] {
            let response = response(http, None);
            assert_eq!(header_code(&response), Some(code), "{http}");
            let expected = if classifier.is_failure(code) {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert_eq!(of_response(classifier, &response), expected, "{http}");
        }
    }

    #[test]
    fn a_custom_set_counts_only_its_codes() {
        let classifier = GrpcClassifier::errors_only()
            .with(Code::Aborted)
            .with(Code::DataLoss)
            .with(Code::Unavailable)
            .without(Code::Unavailable);
        assert_eq!(
            classifier.failures().collect::<Vec<_>>(),
            [Code::Aborted, Code::DataLoss]
        );
        let without = GrpcClassifier::new().without(Code::ResourceExhausted);
        for (classifier, response, expected) in [
            (classifier, trailers_only(Code::Aborted), Outcome::Failure),
            (classifier, trailers_only(Code::DataLoss), Outcome::Failure),
            (
                classifier,
                trailers_only(Code::Unavailable),
                Outcome::Success,
            ),
            (classifier, response(503, None), Outcome::Success),
            (
                without,
                trailers_only(Code::ResourceExhausted),
                Outcome::Success,
            ),
            (without, trailers_only(Code::Internal), Outcome::Failure),
            (without, response(503, None), Outcome::Failure),
        ] {
            assert_eq!(
                of_response(classifier, &response),
                expected,
                "{classifier:?}, {response:?}"
            );
        }
        // Adding or removing twice changes nothing.
        assert_eq!(
            GrpcClassifier::new().with(Code::Internal),
            GrpcClassifier::new()
        );
        assert_eq!(without.without(Code::ResourceExhausted), without);
    }

    #[test]
    fn errors_only_still_fails_errors() {
        let classifier = GrpcClassifier::errors_only();
        assert_eq!(classifier.failures().count(), 0);
        assert_eq!(
            of_response(classifier, &trailers_only(Code::Unavailable)),
            Outcome::Success
        );
        assert_eq!(
            of_error(classifier, "connection refused".into()),
            Outcome::Failure
        );
        assert_eq!(
            of_error(classifier, Box::new(BulkheadFull::new(Domain::DETACHED))),
            Outcome::Ignore
        );
    }

    #[test]
    fn transport_errors_and_timeouts_are_failures() {
        let classifier = GrpcClassifier::new();
        let errors: [BoxError; 4] = [
            "connection reset by peer".into(),
            Box::new(Elapsed::new()),
            Box::new(Wrapped(Box::new(Elapsed::new()))),
            Box::new(Status::cancelled("from a layer")),
        ];
        for err in errors {
            let shown = format!("{err:?}");
            assert_eq!(of_error(classifier, err), Outcome::Failure, "{shown}");
        }
        // As statuses, whatever their code: no server answered.
        for status in [
            status(Box::new(Elapsed::new())),
            status("connection refused".into()),
            Status::not_found("from a layer"),
        ] {
            assert_eq!(
                of_status(classifier, &status),
                Outcome::Failure,
                "{status:?}"
            );
        }
    }

    #[test]
    fn tankers_refusals_are_ignored() {
        let classifier = GrpcClassifier::new();
        let open = || BreakerOpen::new(Some(Duration::from_secs(1)), Domain::DETACHED);
        // Boxed, as tanker's layers return them, also wrapped by another layer or as a status.
        let errors: [BoxError; 4] = [
            Box::new(BulkheadFull::new(Domain::DETACHED)),
            Box::new(open()),
            Box::new(Wrapped(Box::new(BulkheadFull::new(Domain::DETACHED)))),
            Box::new(Status::from(Rejection::BulkheadFull)),
        ];
        for err in errors {
            let shown = format!("{err:?}");
            assert_eq!(of_error(classifier, err), Outcome::Ignore, "{shown}");
        }
        // As statuses whose source is the refusal, mapped inside the breaker.
        for status in [
            Status::from(BulkheadFull::new(Domain::DETACHED)),
            status(Box::new(open())),
        ] {
            assert_eq!(
                of_status(classifier, &status),
                Outcome::Ignore,
                "{status:?}"
            );
        }
        // A server's UNAVAILABLE looks the same on the wire but has no refusal behind it.
        assert_eq!(
            of_status(classifier, &Status::unavailable("bulkhead is full")),
            Outcome::Failure
        );
    }

    #[test]
    fn classifier_is_debug_as_its_set_of_codes() {
        assert_eq!(
            format!(
                "{:?}",
                GrpcClassifier::errors_only().with(Code::Unavailable)
            ),
            "GrpcClassifier { failures: {Unavailable} }"
        );
    }
}
