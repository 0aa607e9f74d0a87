//! tanker's refusals as gRPC statuses: `UNAVAILABLE`, with the breaker's back-off as a hint.
//!
//! tanker's layers return [`tower::BoxError`]; gRPC speaks [`Status`]. This module converts one
//! into the other: each refusal ([`BulkheadFull`], [`BreakerOpen`], [`Rejection`]) becomes
//! [`Status::unavailable`], and [`status()`] maps any error of a tanker stack, to be used as
//! `.map_err(tanker::tonic::status)`. For a breaker around a client, [`GrpcClassifier`] counts
//! the server's failure statuses as well as transport errors and timeouts.
//!
//! # Client side
//!
//! Wrap the [`Channel`] of a dependency in a breaker, a bulkhead and a timeout, map the errors to
//! statuses, and give the stack to the generated client as its transport:
//!
//! ```no_run
//! use std::time::Duration;
//! use tonic::transport::Endpoint;
//! use tonic::Code;
//! use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
//! use tower::{BoxError, ServiceBuilder};
//! use tanker::breaker::BreakerLayer;
//! use tanker::bulkhead::BulkheadLayer;
//! use tanker::tonic::GrpcClassifier;
//! use tanker::{Rejection, ServiceBuilderExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Built once per dependency; every clone of the client shares them.
//! let breaker = BreakerLayer::builder()
//!     .name("inventory")
//!     // Transport errors, timeouts and the server's UNAVAILABLE & co. trip it; shedding doesn't.
//!     .classify(GrpcClassifier::new())
//!     .build()?;
//! let bulkhead = BulkheadLayer::new(64)?;
//!
//! let channel = Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//! let transport = ServiceBuilder::new()
//!     .map_err(tanker::tonic::status)
//!     .breaker(breaker)
//!     .bulkhead(bulkhead)
//!     .timeout(Duration::from_millis(250))
//!     .service(channel);
//! let mut client = HealthClient::new(transport);
//!
//! match client.check(HealthCheckRequest::default()).await {
//!     Ok(response) => println!("{:?}", response.into_inner().status()),
//!     // Refused by tanker: the request never left this process.
//!     Err(status) if Rejection::find(&status).is_some() => {
//!         assert_eq!(status.code(), Code::Unavailable);
//!     }
//!     // The timeout fired, or the server answered with an error.
//!     Err(status) => println!("failed: {status}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Without the `map_err`, the generated client still gets a [`Status`] for every error, but
//! tonic's own conversion makes both tanker's refusals and tower's timeouts `UNKNOWN`.
//!
//! The breaker sees what the [`Channel`] returns: an HTTP response, or an error. With the
//! breaker's default classifier, transport errors and timeouts fail a call and every response
//! counts as a success, also one that carries an error status, and tanker's own refusals (the
//! bulkhead shedding a call) count as failures. [`GrpcClassifier`] fixes all three: it ignores
//! tanker's refusals, and it reads the status of a response that carries it in its headers, as
//! a server answers a call it fails before sending any message. A status that arrives in the
//! trailers, after a response body, is out of a tower layer's sight: see
//! [what it cannot see](GrpcClassifier#what-it-cannot-see).
//!
//! # Server side
//!
//! tonic's server turns a layer's error into a response only when the error is a [`Status`] (or
//! has one among its sources); any other error (a bare [`BulkheadFull`], say) resets the HTTP/2
//! stream, and the client sees `INTERNAL` ("h2 protocol error") instead of `UNAVAILABLE`. So put
//! `.map_err(tanker::tonic::status)` outermost in the layers given to `Server::builder().layer`:
//!
//! ```no_run
//! use tonic::transport::Server;
//! use tower::{BoxError, ServiceBuilder};
//! use tanker::bulkhead::BulkheadLayer;
//! use tanker::ServiceBuilderExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! // At most 256 requests handled at once; the excess is answered UNAVAILABLE at once.
//! let layers = ServiceBuilder::new()
//!     .map_err(tanker::tonic::status)
//!     .bulkhead(BulkheadLayer::new(256)?)
//!     .into_inner();
//! Server::builder()
//!     .layer(layers)
//!     .add_service(health)
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! A layer given to `Server::builder().layer` wraps every service of the server. A server-side
//! bulkhead holds its slot until the handler returns its response: all of a unary call, but only
//! up to the first message of a streaming response.
//!
//! [`Channel`]: https://docs.rs/tonic/0.14/tonic/transport/struct.Channel.html
//! [`Status`]: ::tonic::Status
//! [`Status::unavailable`]: ::tonic::Status::unavailable
//! [`BulkheadFull`]: crate::bulkhead::BulkheadFull
//! [`BreakerOpen`]: crate::breaker::BreakerOpen
//! [`Rejection`]: crate::Rejection

mod classify;
mod code;
mod status;

pub use self::classify::GrpcClassifier;
pub use self::status::status;
