//! A circuit breaker: stop calling a failing dependency, probe it after a cool-down, and resume
//! when it answers again.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
//! use tanker::breaker::{BreakerLayer, BreakerOpen, BreakerState};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let breaker = BreakerLayer::builder()
//!     .name("stats")
//!     .consecutive_failures(3)
//!     .open_for(Duration::from_secs(5))
//!     .jitter(0.0)
//!     .build()?;
//! let handle = breaker.handle();
//!
//! // A dependency that is down.
//! let dependency = service_fn(|_: &str| async { Err::<(), _>("connection refused") });
//! let mut svc = ServiceBuilder::new().layer(breaker).service(dependency);
//!
//! for _ in 0..3 {
//!     assert!(svc.ready().await?.call("event").await.is_err());
//! }
//! assert_eq!(handle.state(), BreakerState::Open);
//!
//! // Open: rejected at once, without calling the dependency, with the time to the next probe.
//! let err = svc.ready().await?.call("event").await.unwrap_err();
//! let open = err.downcast_ref::<BreakerOpen>().expect("rejected by the breaker");
//! assert_eq!(open.retry_after(), Some(Duration::from_secs(5)));
//! # Ok(())
//! # }
//! ```
//!
//! # States
//!
//! - **Closed**: calls go through. Each outcome is [classified](Classify) and counted. The
//!   breaker trips to Open when [`consecutive_failures`](BreakerBuilder::consecutive_failures)
//!   failures come in a row, or when, over the sliding [`window`](BreakerBuilder::window) holding
//!   at least [`minimum_calls`](BreakerBuilder::minimum_calls), the share of failures reaches
//!   [`failure_rate`](BreakerBuilder::failure_rate) or the share of slow calls reaches the
//!   [`slow_calls`](BreakerBuilder::slow_calls) rate. The rates are checked when a failure or a
//!   slow call is counted (a success can only lower them), so a success stays one atomic add.
//! - **Open**: every call is rejected at once with [`BreakerOpen`], which says how long until
//!   the next probe; the inner service is neither polled nor called. The cool-down starts at
//!   [`open_for`](BreakerBuilder::open_for) and grows with each trip that follows a failed probe
//!   ([`backoff`](BreakerBuilder::backoff)), less a random [`jitter`](BreakerBuilder::jitter).
//! - **Half-open**: after the cool-down, at most [`probes`](BreakerBuilder::probes) calls go
//!   through at once; the others are still rejected, so a crowd arriving after the cool-down
//!   cannot storm a recovering dependency. That many successful probes close the breaker (with an
//!   empty window and the shortest cool-down); one failed probe opens it again. A probe whose
//!   future is dropped frees its place without an outcome, and a probe that has not finished
//!   within [`probe_timeout`](BreakerBuilder::probe_timeout) counts as failed as soon as another
//!   call arrives (a late success that comes first still closes the breaker: the dependency did
//!   answer).
//!
//!   A probe keeps its place until its call ends, whatever the breaker does meanwhile: never
//!   more than `probes` calls are in the dependency as probes, across any number of reopenings.
//!   A probe that outlived its timeout has already reopened the breaker; if it still holds a
//!   place when the next cool-down ends and every place is taken, the breaker trips again at once
//!   (open to open, with a longer cool-down) rather than send another call to a dependency that
//!   has not answered the last one. A hung probe therefore keeps the breaker open, never stuck
//!   half-open; put a timeout inside the breaker (tower's `TimeoutLayer`) so that hung calls end
//!   and give their places back.
//! - **Forced open / forced closed**: an operator's override through the [`BreakerHandle`],
//!   until [`reset`](BreakerHandle::reset).
//!
//! Calls admitted in one period (say, while closed) that finish in another (after the breaker
//! opened) are not counted: their period is over. A caller parked in `poll_ready` on an inner
//! service that is not ready is woken when the breaker opens, and rejected. A handle made ready
//! in one period and called in another (balancers and `ReadyCache` keep ready handles) is
//! decided again in `call`: if the breaker opened or was forced open in between, the call is
//! rejected without reaching the inner service.
//!
//! # What counts as a failure
//!
//! The [classifier](Classify) decides, with one rule above it: a refusal by an inner tanker
//! layer (a bulkhead's [`BulkheadFull`](crate::bulkhead::BulkheadFull) or an inner breaker's
//! [`BreakerOpen`], itself or anywhere in the error's source chain, as
//! [`Rejection::find`](crate::Rejection::find) recognises it) is ignored, never a failure: the
//! dependency was not called. So a breaker over a bulkhead does not open because the bulkhead
//! sheds.
//!
//! # What is shared
//!
//! The state lives in one allocation made when the layer is built; every service the layer
//! builds, every clone, and every [`BreakerHandle`] points to it. axum and tonic clone services
//! per request, and they all count toward the same breaker.
//!
//! # Time
//!
//! All timing uses `tokio::time::Instant`, so tests drive the breaker with paused time
//! (`#[tokio::test(start_paused = true)]` and `tokio::time::advance`). Changes that time alone
//! causes (the end of the cool-down, a probe timeout) happen when the next call arrives.
//!
//! # Cost
//!
//! The closed path takes no lock and allocates nothing: one atomic load to admit, one more in
//! `call` to check that the admission still holds, and on success one atomic add into the
//! window, plus one reference count for the response future. It does not read the clock unless
//! slow-call detection is on (apart from about one success in 64, which checks that the window
//! is current); see [`BreakerBuilder::window`] for how the window knows the current bucket
//! without it. The window's counts are consistent in every snapshot: failures and slow calls
//! never exceed calls, whatever the threads do. Failures, rejections and transitions do more work: they are rare
//! or already cheap compared with what they save. Transitions are logged with `tracing`: `warn`
//! when the breaker opens, `info` when it goes half-open or closes.

mod classify;
mod engine;
mod error;
mod events;
pub mod future;
mod handle;
mod layer;
mod policy;
mod service;
mod state;
mod ticker;
mod ticket;
mod window;
mod word;

pub use self::classify::{Classify, ErrorsAsFailures, Outcome};
pub use self::error::BreakerOpen;
pub use self::handle::{BreakerCounts, BreakerHandle};
pub use self::layer::{BreakerBuilder, BreakerLayer};
pub use self::service::Breaker;
pub use self::state::BreakerState;
// The pieces the keyed layer (`crate::keyed`) drives per call.
pub(crate) use self::state::Admission;
pub(crate) use self::ticket::Ticket;
pub(crate) use self::word::Word;
