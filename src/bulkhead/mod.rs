//! Bounded concurrency with immediate load shedding, one compartment per dependency.
//!
//! A [`BulkheadLayer`] is one compartment of a ship: it bounds how many calls may be in flight
//! to the service it wraps, and sheds every call beyond that bound at once with
//! [`BulkheadFull`], instead of letting callers pile up behind a slow dependency. The inner
//! service never sees a shed call.
//!
//! ```
//! use std::convert::Infallible;
//! use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
//! use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // One compartment of two calls for this dependency. Keep the layer value and reuse it:
//! // every service it builds, and every clone of those, shares the two slots.
//! let bulkhead = BulkheadLayer::new(2)?;
//! let handle = bulkhead.handle();
//!
//! let dependency = service_fn(|n: u32| async move { Ok::<_, Infallible>(n * 2) });
//! let mut svc = ServiceBuilder::new().layer(bulkhead).service(dependency);
//!
//! // Two calls take both slots...
//! let first = svc.ready().await?.call(1);
//! let second = svc.ready().await?.call(2);
//! // ...so the third is shed at once, without waiting.
//! let err = svc.ready().await?.call(3).await.unwrap_err();
//! assert!(err.is::<BulkheadFull>());
//! assert_eq!(handle.counts().shed, 1);
//!
//! // Finishing a call frees its slot.
//! assert_eq!(first.await?, 2);
//! assert_eq!(second.await?, 4);
//! assert_eq!(svc.ready().await?.call(5).await?, 10);
//! assert_eq!(handle.counts().in_flight, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # What is shared
//!
//! The capacity and the counters live in one allocation made when the layer is built. Cloning the
//! layer or a service clones a pointer to it.
//!
//! # Readiness
//!
//! Without a waiting room (the default), `poll_ready` looks at the compartment and polls the inner
//! service; `call` takes the slot, as tower's `LoadShed` decides at `call`. When the compartment
//! is full, or the inner service is not ready, `poll_ready` still returns `Ready(Ok(()))` and
//! `call` returns an immediately ready `BulkheadFull` error: `poll_ready` never returns an error
//! for a temporary condition, and never makes the caller wait because the compartment is full. So
//! a handle that was polled ready but never called holds no slot. Errors of the inner
//! `poll_ready` are passed through.
//!
//! With a [waiting room](BulkheadBuilder::waiting_room), `poll_ready` takes the slot itself and
//! holds it for the handle until its `call` (or gives it back if the handle is dropped first), so
//! that two handles polled ready for one free slot are not both promised it: the second waits in
//! the room, at most the room's maximum wait, instead of being shed by its `call`.
//!
//! A slot is given back the moment the inner future completes, when the response future is
//! dropped before that (cancellation), or when a panic unwinds out of the inner service's `call`:
//! the slot's guard exists before the inner `call` runs.
//!
//! # Cost
//!
//! Every admission decision reads one atomic word, which holds both the slots taken and the
//! count of calls admitted: admission is one compare-and-swap and release one atomic subtract,
//! plus one reference count for the response future. No lock, no allocation, no clock read, no
//! timer. A shed call allocates nothing either ([`BulkheadFull`] is zero-sized). With the
//! `metrics` feature, the in-flight gauge is set to the absolute count read from that word.
//!
//! # Counters
//!
//! [`BulkheadHandle::counts`] takes a snapshot, [`BulkheadCounts`], of the calls in flight, the
//! callers waiting, and, since the layer was built, the calls admitted and the calls shed: the
//! same shape as the breaker's, the keyed layer's and the hand-off's `counts()`.

mod compartment;
mod error;
pub mod future;
mod handle;
mod layer;
mod room;
mod service;
mod slots;

pub use self::error::BulkheadFull;
pub use self::handle::{BulkheadCounts, BulkheadHandle};
pub use self::layer::{BulkheadBuilder, BulkheadLayer};
pub use self::service::Bulkhead;
