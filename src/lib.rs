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
//! - [`keyed`]: both of them per key, the key taken from each request (a host, a tenant, a
//!   Kafka broker), so that one sick part of a dependency costs only its own calls.
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
//! println!("{:?}", breaker.handle().counts());
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
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `kafka` | yes | `tanker::kafka`: the Kafka leaf, on rdkafka with its bundled librdkafka (needs a C toolchain) |
//! | `metrics` | no | counters and gauges through the `metrics` facade; [`metrics`] lists them |
//! | `axum` | no | `tanker::axum`: refusals as `503` with `Retry-After`, for axum's `HandleErrorLayer` |
//! | `tonic` | no | `tanker::tonic`: refusals as `Status::unavailable` with gRPC retry pushback, and a breaker classifier for gRPC statuses |
//! | `full` | no | all of the above |
//!
//! The layers and the hand-off need none of them: `default-features = false` builds them
//! without rdkafka and its C library. Without `metrics`, nothing is recorded and
//! nothing is compiled in for it.
//!
//! # Observability
//!
//! Every component takes a name (`.name("redis")` on its builder) that labels its log events
//! (fields `bulkhead`, `breaker`, `handoff`, `producer`) and its metrics. Logging goes through
//! `tracing`:
//!
//! - a breaker's state changes at `warn` (opened) and `info` (half-open, closed), with the
//!   reason and the number of calls rejected since the previous change;
//! - shedding (bulkhead) and dropping (hand-off) at `warn`, at most once a second per component,
//!   with the count since the last report (a shedding bulkhead reads the clock for this only at
//!   check points, at most every 64 shed calls, so a report may come that many calls late);
//! - nothing at `info` or above for a call that goes through;
//! - librdkafka's client errors and its own log lines (a Kafka that is down fails every
//!   reconnection) at most once a second per producer, each event once, with `reports`, the
//!   number of reports since the last line; the others at `debug`.
//!
//! # Recipes
//!
//! ## The incident stack: Kafka behind a hand-off
//!
//! A request handler hands records to a [`handoff::Handoff`], whose worker drives them to
//! `KafkaService`, which sends each record through a bulkhead and a breaker of the broker that
//! leads its partition. `send` never blocks and never fails; a frozen Kafka, or one frozen
//! broker, costs the handler nothing. The `kafka` module docs show the stack, and
//! `cargo run --release --example incident` shows it through an incident.
//!
//! ## One compartment per dependency
//!
//! Build each layer value once per dependency and clone it wherever the dependency is called:
//! every clone, and every service built from it, shares one compartment and one breaker.
//! Separate dependencies get separate layer values, so that a slow Redis cannot take the slots of
//! Kafka calls.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, BoxError, ServiceBuilder};
//! use tanker::{breaker::BreakerLayer, bulkhead::BulkheadLayer, ServiceBuilderExt};
//!
//! # fn main() -> Result<(), tanker::ConfigError> {
//! struct Guard {
//!     breaker: BreakerLayer,
//!     bulkhead: BulkheadLayer,
//! }
//!
//! fn guard(name: &str, max_in_flight: usize) -> Result<Guard, tanker::ConfigError> {
//!     Ok(Guard {
//!         breaker: BreakerLayer::builder().name(name).build()?,
//!         bulkhead: BulkheadLayer::builder().name(name).max_in_flight(max_in_flight).build()?,
//!     })
//! }
//!
//! let redis = guard("redis", 64)?;
//! let pricing = guard("pricing-api", 16)?;
//! let lookup = ServiceBuilder::new()
//!     .breaker(redis.breaker.clone())
//!     .bulkhead(redis.bulkhead.clone())
//!     .timeout(Duration::from_millis(20))
//!     .service(service_fn(|key: String| async move { Ok::<_, BoxError>(key) }));
//! let quote = ServiceBuilder::new()
//!     .breaker(pricing.breaker.clone())
//!     .bulkhead(pricing.bulkhead.clone())
//!     .timeout(Duration::from_millis(200))
//!     .service(service_fn(|sku: u64| async move { Ok::<_, BoxError>(sku * 100) }));
//! # drop((lookup, quote));
//! assert_eq!(redis.bulkhead.handle().name(), "redis");
//! # Ok(())
//! # }
//! ```
//!
//! ## Wrapping Redis
//!
//! A `service_fn` over a multiplexed connection (a clone is a handle to the same connection)
//! makes Redis a tower service; the recipe's layers go around it:
//!
//! ```no_run
//! use std::time::Duration;
//! use redis::AsyncCommands;
//! use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
//! use tanker::breaker::{BreakerLayer, BreakerOpen, Outcome};
//! use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
//! use tanker::ServiceBuilderExt;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), BoxError> {
//! let conn = redis::Client::open("redis://127.0.0.1:6379")?
//!     .get_multiplexed_async_connection()
//!     .await?;
//! let breaker = BreakerLayer::builder()
//!     .name("redis")
//!     .classify(|result: Result<&Option<String>, &BoxError>| match result {
//!         Ok(_) => Outcome::Success,
//!         Err(e) if e.is::<BulkheadFull>() => Outcome::Ignore,
//!         Err(_) => Outcome::Failure,
//!     })
//!     .build()?;
//! let get = ServiceBuilder::new()
//!     .breaker(breaker)
//!     .bulkhead(BulkheadLayer::builder().name("redis").max_in_flight(64).build()?)
//!     .timeout(Duration::from_millis(20))
//!     .service(service_fn(move |key: String| {
//!         let mut conn = conn.clone();
//!         async move { conn.get::<_, Option<String>>(key).await }
//!     }));
//!
//! match get.clone().oneshot("user:42".to_owned()).await {
//!     Ok(value) => println!("cached: {value:?}"),
//!     // Redis is frozen or overloaded: answer without the cache, at once.
//!     Err(e) if e.is::<BreakerOpen>() || e.is::<BulkheadFull>() => println!("no cache"),
//!     Err(e) => println!("cache miss: {e}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `examples/redis.rs` runs it through a `CLIENT PAUSE`, and `tests/redis.rs` checks it against
//! a real `redis-server`.
//!
//! ## axum
//!
//! Put `HandleErrorLayer::new(tanker::axum::handle_error)` (feature `axum`) above the layers of
//! a route: a refusal becomes `503 Service Unavailable` with `Retry-After` from the breaker, a
//! timeout `504`, anything else `500`. Build the layer values outside the router: axum clones
//! the route's service per request, and the clones share them. See the `tanker::axum` docs and
//! `examples/axum.rs`.
//!
//! ## tonic
//!
//! On a client, wrap the `Channel` with the recipe and `.map_err(tanker::tonic::status)` (feature
//! `tonic`), and hand the stack to the generated client: a refusal reaches the caller as
//! `Status::unavailable` with gRPC's retry pushback; `tanker::tonic::GrpcClassifier` makes the
//! breaker count the server's failure statuses too. On a server, the same `map_err` outermost
//! lets tonic answer refusals as statuses. See the `tanker::tonic` docs and `examples/tonic.rs`.
//!
//! ## Testing your own stack
//!
//! Both layers take time from `tokio::time`, so a test drives them with paused time
//! (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) and tower-test's mock service,
//! without sleeping:
//!
//! ```
//! use std::time::Duration;
//! use tower::{BoxError, Layer, ServiceExt};
//! use tower_test::mock;
//! use tanker::breaker::{BreakerLayer, BreakerOpen, BreakerState};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let breaker = BreakerLayer::builder()
//!     .consecutive_failures(2)
//!     .open_for(Duration::from_secs(5))
//!     .jitter(0.0)
//!     .build()?;
//! let (inner, mut dependency) = mock::pair::<&str, &str>();
//! let svc = breaker.layer(inner);
//!
//! // The dependency fails twice: the breaker opens.
//! dependency.allow(2);
//! for _ in 0..2 {
//!     let call = tokio::spawn(svc.clone().oneshot("ping"));
//!     let (_, reply) = dependency.next_request().await.unwrap();
//!     reply.send_error("down");
//!     assert!(call.await?.is_err());
//! }
//! assert_eq!(breaker.handle().state(), BreakerState::Open);
//!
//! // Open: rejected at once, without reaching the dependency.
//! let err = svc.clone().oneshot("ping").await.unwrap_err();
//! assert!(err.is::<BreakerOpen>());
//!
//! // Five seconds later, on the paused clock, a probe goes through and closes it.
//! tokio::time::advance(Duration::from_secs(5)).await;
//! dependency.allow(1);
//! let call = tokio::spawn(svc.clone().oneshot("ping"));
//! let (_, reply) = dependency.next_request().await.unwrap();
//! reply.send_response("pong");
//! assert_eq!(call.await?.unwrap(), "pong");
//! assert_eq!(breaker.handle().state(), BreakerState::Closed);
//! # Ok(())
//! # }
//! ```
//!
//! # Spawning calls
//!
//! A task spawned per call that awaits `svc.oneshot(req)` (or `svc.ready()`) fails to compile
//! when the innermost service's error type is `BoxError`:
//!
//! ```text
//! error: implementation of `From` is not general enough
//!   = note: `Box<(dyn std::error::Error + Send + Sync + 'static)>` must implement
//!           `From<Box<(dyn std::error::Error + Send + Sync + '0)>>`, for any lifetime `'0`...
//! ```
//!
//! It happens with tanker's bulkhead or breaker alone, and with tower's own `Timeout` alone:
//!
//! ```compile_fail
//! use tower::{service_fn, BoxError, Layer, ServiceExt};
//! use tanker::bulkhead::BulkheadLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = BulkheadLayer::new(4).unwrap().layer(service_fn(|n: u64| async move {
//!     tokio::task::yield_now().await;
//!     Ok::<_, BoxError>(n)
//! }));
//! // error: implementation of `From` is not general enough
//! tokio::spawn(async move { svc.oneshot(1).await });
//! # }
//! ```
//!
//! The cause is in rustc, not in the middleware: to prove a spawned future `Send`, rustc checks
//! the types it holds with their lifetimes erased. tower's `Oneshot` and `Ready` are declared
//! with `S: Service<Req>`, so that check has to prove `Bulkhead<S>: Service<Req>`, whose
//! `S::Error: Into<BoxError>` becomes `Box<dyn Error + '0>: Into<Box<dyn Error + 'static>>` for
//! an arbitrary lifetime `'0`, which does not hold. Every middleware that converts its inner
//! error into a `BoxError` (tower's `Timeout`, `LoadShed`...) meets it. Two ways out:
//!
//! - erase the stack's type with tower's `ServiceBuilder::boxed_clone` (or
//!   `BoxCloneService::new`, both with tower's `util` feature), at the cost of one allocation
//!   per call;
//! - or, without a box, poll the service yourself instead of through `oneshot`:
//!
//! ```
//! use std::future::poll_fn;
//! use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};
//! use tanker::bulkhead::BulkheadLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let dependency = service_fn(|n: u64| async move {
//!     tokio::task::yield_now().await;
//!     Ok::<_, BoxError>(n)
//! });
//! let bulkhead = BulkheadLayer::new(4)?;
//!
//! // Boxed: `oneshot` in a spawned task compiles.
//! let boxed = ServiceBuilder::new()
//!     .boxed_clone()
//!     .layer(bulkhead.clone())
//!     .service(dependency.clone());
//! assert_eq!(tokio::spawn(boxed.oneshot(1)).await??, 1);
//!
//! // Unboxed: `poll_ready` then `call`, by hand.
//! let mut svc = bulkhead.layer(dependency);
//! let call = tokio::spawn(async move {
//!     poll_fn(|cx| svc.poll_ready(cx)).await?;
//!     svc.call(2).await
//! });
//! assert_eq!(call.await??, 2);
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

#[cfg(feature = "axum")]
pub mod axum;
pub mod breaker;
mod builder;
pub mod bulkhead;
mod clock;
mod domain;
mod error;
pub mod handoff;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod keyed;
pub mod metrics;
mod rejection;
mod sync;
mod telemetry;
#[cfg(feature = "tonic")]
pub mod tonic;

pub use crate::builder::ServiceBuilderExt;
pub use crate::domain::Domain;
pub use crate::error::ConfigError;
pub use crate::rejection::Rejection;

/// The README's Rust snippets, compiled and run as doc tests (they use the Kafka leaf and a
/// metrics recorder, so they need both features: `cargo test --all-features` runs them).
#[cfg(all(doctest, feature = "kafka", feature = "metrics"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The spawn trap of "Spawning calls", reproduced for each layer alone: these must not compile.
/// If rustc ever accepts one, its test fails, and the docs and the README must change.
///
/// The bulkhead:
///
/// ```compile_fail
/// use tower::{service_fn, BoxError, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = tanker::bulkhead::BulkheadLayer::new(4).unwrap().layer(service_fn(|n: u64| async move {
///     tokio::task::yield_now().await;
///     Ok::<_, BoxError>(n)
/// }));
/// tokio::spawn(async move { svc.oneshot(1).await });
/// # }
/// ```
///
/// The breaker:
///
/// ```compile_fail
/// use tower::{service_fn, BoxError, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let breaker = tanker::breaker::BreakerLayer::builder().build().unwrap();
/// let svc = breaker.layer(service_fn(|n: u64| async move {
///     tokio::task::yield_now().await;
///     Ok::<_, BoxError>(n)
/// }));
/// tokio::spawn(async move { svc.oneshot(1).await });
/// # }
/// ```
///
/// The same code with `.boxed_clone()` compiles (`tests/spawn.rs`).
#[cfg(doctest)]
pub struct SpawnTrap;
