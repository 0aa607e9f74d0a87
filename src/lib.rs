//! Bulkheads and circuit breakers for tower services.
//!
//! A latency-critical service that also writes non-critical data on the side (stats to Kafka,
//! cached reads from Redis) must not go down when that dependency slows down or stops answering.
//! tanker gives it two compartments of protection, as tower layers that compose with tower's own,
//! axum and tonic:
//!
//! - [`bulkhead`]: a bounded number of calls in flight to the dependency, and immediate load
//!   shedding beyond that bound. A slow dependency can hold at most that many callers.
//! - [`breaker`]: a circuit breaker that counts failures, trips, fails fast while the dependency
//!   is down, probes it after a cool-down, and closes by itself when it answers again.
//!
//! # The recipe
//!
//! Put the breaker outermost, so that an open breaker rejects before anything else runs; the
//! bulkhead inside it, so that shedding never waits; and a timeout innermost, so that a hung call
//! becomes a failure the breaker counts.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
//! use tanker::breaker::{BreakerLayer, BreakerOpen, Outcome};
//! use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
//! use tanker::ServiceBuilderExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // One compartment and one breaker per dependency, built once and reused by every clone.
//! let bulkhead = BulkheadLayer::new(32)?;
//! let breaker = BreakerLayer::builder()
//!     .name("stats-writer")
//!     // Shedding is our own back-pressure, not a sign that the dependency fails.
//!     .classify(|result: Result<&u64, &BoxError>| match result {
//!         Ok(_) => Outcome::Success,
//!         Err(e) if e.is::<BulkheadFull>() => Outcome::Ignore,
//!         Err(_) => Outcome::Failure,
//!     })
//!     .build()?;
//!
//! let write_stats = service_fn(|n: u64| async move { Ok::<_, BoxError>(n) });
//! let mut svc = ServiceBuilder::new()
//!     .breaker(breaker.clone())
//!     .bulkhead(bulkhead.clone())
//!     .timeout(Duration::from_millis(50))
//!     .service(write_stats);
//!
//! match svc.ready().await?.call(7).await {
//!     Ok(n) => assert_eq!(n, 7),
//!     Err(e) if e.is::<BreakerOpen>() => { /* dependency down: failed fast */ }
//!     Err(e) if e.is::<BulkheadFull>() => { /* too many calls in flight: shed */ }
//!     Err(e) => return Err(e),
//! }
//! println!("{:?}", breaker.handle().metrics());
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Both layers return [`tower::BoxError`]. Their own rejections are [`bulkhead::BulkheadFull`]
//! and [`breaker::BreakerOpen`], recognisable with `err.is::<T>()`; errors of the inner service
//! pass through unchanged. Invalid settings are refused when a layer is built, with a
//! [`ConfigError`] that names the setting and says what to change.
//!
//! # Testing your own stack
//!
//! Both layers take time from `tokio::time`, so a test drives them with paused time
//! (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) and tower-test's mock service,
//! without sleeping.
//!
//! # Spawning calls
//!
//! When a task spawned per call awaits a stack of generic tower middleware (tanker's or tower's
//! own `LoadShed`), rustc sometimes fails to prove the future `Send` and reports "implementation
//! of `From` is not general enough". Erasing the stack's type with
//! tower's `ServiceBuilder::boxed_clone` (or `BoxCloneService::new`, both with tower's `util`
//! feature) works around it, at the cost of one allocation per call.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

#[cfg(feature = "axum")]
pub mod axum;
pub mod breaker;
mod builder;
pub mod bulkhead;
mod error;
pub mod handoff;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod metrics;
mod rejection;
mod telemetry;
#[cfg(feature = "tonic")]
pub mod tonic;

pub use crate::builder::ServiceBuilderExt;
pub use crate::error::ConfigError;
pub use crate::rejection::Rejection;
