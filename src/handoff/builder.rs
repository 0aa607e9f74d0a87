//! The hand-off's settings, checked before its worker is spawned.

use std::sync::Arc;

use tower::BoxError;
use tower_service::Service;

use super::error::SpawnError;
use super::front::Handoff;
use super::shared::Shared;
use super::worker::{self, Worker};
use crate::ConfigError;

/// The most places a hand-off's queue may have. The queue is allocated when the hand-off is
/// spawned, so a larger one would take gigabytes before the first record.
pub const MAX_CAPACITY: usize = 1 << 24;

/// Builds a [`Handoff`] and spawns its worker.
///
/// | setting | default | why |
/// |---|---|---|
/// | [`capacity`](Self::capacity) | 10 000 | a few seconds of records at a typical stats rate; beyond that, dropping is the point |
/// | [`concurrency`](Self::concurrency) | 1024 | a Kafka producer batches many records per request, so many calls wait on delivery reports at once |
///
/// ```
/// use tanker::handoff::HandoffBuilder;
/// use tower::{service_fn, BoxError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let service = service_fn(|line: String| async move { Ok::<_, BoxError>(line.len()) });
/// let err = HandoffBuilder::new().concurrency(0).spawn(service).unwrap_err();
/// assert_eq!(err.config().unwrap().setting(), "concurrency");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HandoffBuilder {
    capacity: usize,
    concurrency: usize,
    name: Arc<str>,
}

impl Default for HandoffBuilder {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            concurrency: 1024,
            name: Arc::from("handoff"),
        }
    }
}

impl HandoffBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most requests waiting in the queue; beyond it, `send` drops. Between 1 and
    /// [`MAX_CAPACITY`]; the queue is allocated when the hand-off is spawned.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The most calls the worker keeps in flight through the stack at once. At least 1.
    ///
    /// The worker polls each call as it starts it, so a call that answers at once never counts
    /// against a smaller bulkhead further down: a burst is shed only if the dependency really is
    /// slower than the burst.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Names the hand-off: the `handoff` field of its log events and the `handoff` label of its
    /// metrics (see [`crate::metrics`]). Default: `"handoff"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Checks the settings against a queue of `Req`.
    fn check<Req>(&self) -> Result<(), ConfigError> {
        if self.capacity == 0 {
            return Err(ConfigError::new(
                "capacity",
                "must be at least 1; a hand-off with no queue would drop everything",
            ));
        }
        // Each place holds a request and a word of bookkeeping.
        let place = std::mem::size_of::<Req>() + std::mem::size_of::<usize>();
        let fits = match self.capacity.checked_mul(place) {
            Some(bytes) => bytes <= isize::MAX as usize,
            None => false,
        };
        if self.capacity > MAX_CAPACITY || !fits {
            return Err(ConfigError::new(
                "capacity",
                format!(
                    "must be at most {MAX_CAPACITY} (got {}): the queue is allocated up front; \
                     a few seconds of records is enough, beyond that dropping is the point",
                    self.capacity
                ),
            ));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::new(
                "concurrency",
                "must be at least 1: the worker needs to call the service",
            ));
        }
        Ok(())
    }

    /// Checks the settings and spawns the worker on the current tokio runtime, driving requests
    /// through `service`.
    ///
    /// The worker uses tokio's time driver when the runtime has one: after traffic it looks at
    /// the queue on a 1 ms tick for a while, then on a 100 ms tick, so that senders never wake
    /// it. On a runtime without it (no `enable_time`) the hand-off works too: the worker parks
    /// as soon as it is idle, and the first sender after a pause wakes it. (Finding that out makes tokio's panic hook print its
    /// "timers are disabled" message once.)
    ///
    /// # Errors
    ///
    /// [`SpawnError::Config`] if a setting is out of range, naming it;
    /// [`SpawnError::NoRuntime`] if called outside a tokio runtime.
    pub fn spawn<S, Req>(self, service: S) -> Result<Handoff<Req>, SpawnError>
    where
        S: Service<Req> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        S::Response: Send + 'static,
        Req: Send + 'static,
    {
        self.check::<Req>()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SpawnError::NoRuntime)?;
        let tick = worker::tick();
        if tick.is_none() {
            tracing::warn!(
                handoff = &*self.name,
                "the tokio runtime has no time driver: the hand-off's worker parks as soon as it \
                 is idle, and the first sender after a pause wakes it"
            );
        }
        let shared = Arc::new(Shared::new(self.capacity, self.name));
        let worker = Worker::new(shared.clone(), service, self.concurrency, tick);
        // Each call ends on a channel that counts against tokio's cooperative budget; with
        // thousands of calls in flight that budget, not the work, would pace the worker. It keeps
        // its own budget instead (`worker::BUDGET`), and yields after that many records.
        runtime.spawn(tokio::task::unconstrained(worker.run()));
        Ok(Handoff::new(shared))
    }
}
