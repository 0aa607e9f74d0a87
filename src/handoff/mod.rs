//! The never-blocking front door: hand a record off and return at once.
//!
//! A request handler that must answer in microseconds calls [`Handoff::send`]: the record goes
//! into a bounded queue and the call returns at once with [`Sent::Accepted`], or with
//! [`Sent::Dropped`] if the queue is full. It never blocks, never fails, never panics, and the
//! record is either accepted whole or counted as dropped. A worker task drains the queue through
//! any tower stack (typically breaker → bulkhead → Kafka) with bounded concurrency, and counts
//! every outcome: delivered, shed, rejected, failed.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use tower::{service_fn, BoxError, ServiceBuilder};
//! use tanker::handoff::{Handoff, Sent};
//! use tanker::{breaker::BreakerLayer, bulkhead::BulkheadLayer, ServiceBuilderExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let write_stats = service_fn(|line: String| async move { Ok::<_, BoxError>(line.len()) });
//! let stack = ServiceBuilder::new()
//!     .breaker(BreakerLayer::new())
//!     .bulkhead(BulkheadLayer::new(64)?)
//!     .service(write_stats);
//!
//! let stats = Handoff::builder().capacity(10_000).name("stats").spawn(stack)?;
//!
//! // In the request handler: no await, no error to handle.
//! assert_eq!(stats.send("GET / 200".to_owned()), Sent::Accepted);
//!
//! // At shutdown: stop accepting, drain, and see that every record is accounted for.
//! let report = stats.close(Duration::from_secs(5)).await;
//! assert!(report.drained);
//! assert_eq!(report.counts.delivered, 1);
//! assert!(report.counts.is_balanced());
//! # Ok(())
//! # }
//! ```
//!
//! # Shutdown
//!
//! [`Handoff::close`] stops accepting and waits, up to a deadline, for what was accepted to
//! finish. Dropping the last handle closes the hand-off the same way without waiting: the worker
//! drives the accepted records through the stack, then ends and drops the service.
//!
//! # Panics and broken services
//!
//! The worker catches a panic wherever it runs the stack's code, and counts it:
//!
//! - a panic in `call`, or in a response future, fails that record (counted in `failed`, logged
//!   at ERROR); the worker goes on with the next one;
//! - a panic in `poll_ready`, or an error from it (tower's way of saying a service is dead),
//!   means the service can no longer be trusted. The worker logs it at ERROR, drops the service
//!   and **closes the hand-off**: the record it was starting and every record still queued are
//!   counted as failed, calls already in flight finish as they will, later sends are dropped
//!   (counted in `dropped_closed`), and [`Handoff::close`] returns at once with everything
//!   accounted for. Wrap the service in a retrying or re-creating layer if it should survive
//!   such faults.
//!
//! # Accounting
//!
//! Every record offered is counted once: `offered = accepted + dropped` and
//! `accepted = delivered + expired + shed + rejected + failed + pending`, exactly in every
//! snapshot; see [`HandoffCounts`]. A
//! record refused by a bulkhead or a breaker counts as shed or rejected also when another layer
//! wrapped the refusal in its own error ([`Rejection::find`](crate::Rejection::find)).
//!
//! # Latency of `send`, and an idle worker
//!
//! `send` is a lock-free push into a fixed ring, one atomic add, and one load of the worker's
//! state: no allocation, no lock, and no system call. A worker that runs out of records keeps
//! looking at the queue on a 1 ms tick for 50 ms, then on a 100 ms tick: a sender never has to
//! wake it (waking a task on a sleeping runtime thread would cost that one `send` tens of
//! microseconds), and an idle hand-off costs ten short wake-ups a second, nothing measurable.
//! A record offered after a quiet spell therefore waits up to 100 ms to be sent, which suits
//! data nobody waits for; a sender that finds the queue half full wakes the worker at once, so
//! a burst does not wait for the tick. On a runtime without the time driver the worker has no
//! tick: it parks, and the first sender after a pause wakes it.
//!
//! # Parking, per failure domain
//!
//! A record the stack refused (an open breaker, a full bulkhead) is not lost: it parks in the
//! worker with the [`Domain`](crate::Domain) that refused it, and that domain alone waits
//! before it is tried again (while others deliver, one domain parks at most half of the hand-off's capacity);
//! records for the other domains keep flowing. A record that failed
//! with a dependency fault gets one more try once the dependency looks healthy again. See
//! [Parking](HandoffBuilder#parking) for the rules, the pauses and the bounds. In the
//! counts, a parked record is `pending` (and `parked`), and moves between `parked` and
//! `in_flight` without ever being counted twice: every snapshot is balanced.
//!
//! # Memory
//!
//! Bounded by configuration whatever the dependency does: `capacity` requests queued or
//! parked together, and `concurrency` calls in flight (plus whatever the stack itself
//! buffers, such as librdkafka's bounded queue); `max_bytes` bounds their weight together.

mod buffer;
mod builder;
mod counts;
mod doorbell;
mod error;
mod front;
mod in_flight;
mod parking;
mod publish;
mod shared;
mod wake_marks;
mod weigh;
mod worker;

pub use self::builder::{HandoffBuilder, MAX_CAPACITY};
pub use self::counts::HandoffCounts;
pub use self::error::SpawnError;
pub use self::front::{CloseReport, Handoff};
pub use self::shared::Sent;
pub use self::weigh::{Unweighed, Weigher};
