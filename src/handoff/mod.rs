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
//! use tanker::handoff::{HandoffBuilder, Sent};
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
//! let stats = HandoffBuilder::new().capacity(10_000).name("stats").spawn(stack)?;
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
//! drives the accepted records through the stack, then ends and drops the service. A panic in
//! the service is caught and counted as a failed record; the worker goes on.
//!
//! # Accounting
//!
//! Every record offered is counted once: `offered = accepted + dropped` and
//! `accepted = delivered + shed + rejected + failed + pending`; see [`HandoffCounts`].
//!
//! # Latency of `send`
//!
//! `send` is a lock-free push into a fixed ring and one atomic add: no allocation, no lock, no
//! system call. The worker does not need waking for each record: it drains on its own short
//! tick ([`idle_poll`](HandoffBuilder::idle_poll), 1 ms by default) and is woken early only when
//! the queue is half full. A record may therefore wait up to one tick before it is sent, which
//! suits data nobody waits for.
//!
//! # Memory
//!
//! Bounded by configuration whatever the dependency does: `capacity` queued requests plus
//! `concurrency` calls in flight (plus whatever the stack itself buffers, such as librdkafka's
//! bounded queue).

mod front;
mod shared;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tower::BoxError;
use tower_service::Service;

pub use self::front::{CloseReport, Handoff, Sent};
pub use self::shared::HandoffCounts;
use self::shared::Shared;
use self::worker::Worker;
use crate::ConfigError;

/// Builds a [`Handoff`] and spawns its worker.
///
/// | setting | default | why |
/// |---|---|---|
/// | [`capacity`](Self::capacity) | 10 000 | a few seconds of records at a typical stats rate; beyond that, dropping is the point |
/// | [`concurrency`](Self::concurrency) | 1024 | a Kafka producer batches many records per request, so many calls wait on delivery reports at once |
/// | [`idle_poll`](Self::idle_poll) | 1 ms | how often an idle worker looks for work, so that senders never have to wake it |
#[derive(Debug, Clone)]
pub struct HandoffBuilder {
    capacity: usize,
    concurrency: usize,
    idle_poll: Duration,
    name: Arc<str>,
}

impl Default for HandoffBuilder {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            concurrency: 1024,
            idle_poll: Duration::from_millis(1),
            name: Arc::from("handoff"),
        }
    }
}

impl HandoffBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most requests waiting in the queue; beyond it, `send` drops. At least 1.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The most calls the worker keeps in flight through the stack at once. At least 1.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// How often an idle worker checks the queue. Between 10 µs and 1 s.
    pub fn idle_poll(mut self, every: Duration) -> Self {
        self.idle_poll = every;
        self
    }

    /// Names the hand-off: the `handoff` field of its log events and the `handoff` label of its
    /// metrics (see [`crate::metrics`]). Default: `"handoff"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Checks the settings and spawns the worker on the current tokio runtime, driving requests
    /// through `service`.
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] if a setting is out of range, or if called outside a tokio
    /// runtime (there would be nowhere to run the worker).
    pub fn spawn<S, Req>(self, service: S) -> Result<Handoff<Req>, ConfigError>
    where
        S: Service<Req> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        S::Response: Send + 'static,
        Req: Send + 'static,
    {
        if self.capacity == 0 {
            return Err(ConfigError::new(
                "capacity",
                "must be at least 1; a hand-off with no queue would drop everything",
            ));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::new(
                "concurrency",
                "must be at least 1: the worker needs to call the service",
            ));
        }
        if self.idle_poll < Duration::from_micros(10) || self.idle_poll > Duration::from_secs(1) {
            return Err(ConfigError::new(
                "idle_poll",
                format!(
                    "must be between 10µs and 1s (got {:?}); 1ms adds at most a millisecond \
                     before a record is sent",
                    self.idle_poll
                ),
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::new(
                "spawn",
                "must be called within a tokio runtime, which runs the hand-off's worker",
            )
        })?;
        let shared = Arc::new(Shared::new(self.capacity, self.name));
        let worker = Worker::new(shared.clone(), service, self.concurrency, self.idle_poll);
        // Each call ends on a channel that counts against tokio's cooperative budget; with
        // thousands of calls in flight that budget, not the work, would pace the worker. It keeps
        // its own budget instead (`worker::BUDGET`), and yields after that many records.
        runtime.spawn(tokio::task::unconstrained(worker.run()));
        Ok(Handoff { shared })
    }
}
