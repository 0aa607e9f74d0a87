//! The hand-off's settings, checked before its worker is spawned.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::BoxError;
use tower_service::Service;

use super::error::SpawnError;
use super::front::Handoff;
use super::shared::Shared;
use super::weigh::{Unweighed, Weigher};
use super::worker::{self, Worker};
use crate::ConfigError;

/// The most places a hand-off's queue may have. The queue is allocated when the hand-off is
/// spawned, so a larger one would take gigabytes before the first record.
pub const MAX_CAPACITY: usize = 1 << 24;

/// Builds a [`Handoff`] and spawns its worker.
///
/// | setting | default | why |
/// |---|---|---|
/// | [`capacity`](Self::capacity) | 50 000 | records park here while the dependency is down: 25 s of a whole outage at 2000 records/s is kept whole (one sick domain among healthy ones parks up to half), and only records beyond that are refused for good or dropped. The places are allocated up front: 50 000 × the request's size (about 7 MiB for a Kafka [`Record`](crate::kafka::Record)), plus what the records point to |
/// | [`concurrency`](Self::concurrency) | 1024 | a Kafka producer batches many records per request, so many calls wait on delivery reports at once |
/// | [`max_age`](Self::max_age) | 5 min | a record older than that is discarded unsent (counted as expired): a parked one at the worker's next look even while its domain still refuses, a queued one when its turn comes; so a long outage ends with fresh data, parking never stays full of stale records, and a closed hand-off behind a breaker that never closes again still ends |
/// | [`max_bytes`](Self::max_bytes) | none | bounding by bytes needs to know what a record weighs: give a weight function (for Kafka, `.max_bytes(64 << 20, Record::weight)`, as the README's quick start does) |
/// | [`park`](Self::park) | on | a record refused by an open breaker or a full bulkhead waits for the domain that refused it instead of being lost, while the other domains' records flow; while other domains deliver, one domain parks at most half of `capacity` (beyond, its refusals are final), and parked and queued records share `capacity`, beyond which the newest are dropped |
/// | [`retry_failed`](Self::retry_failed) | on | a record the dependency failed (a timeout, brokers down) most likely was not written; one more try once the dependency takes records again keeps it. At least once: it may have been written after all |
///
/// # Parking
///
/// The worker keeps a copy of each record while it is in the stack (the request type must be
/// `Clone`; for a Kafka [`Record`](crate::kafka::Record) that is a few reference counts). When
/// the stack gives the record back without trying it, the record is *parked*, not lost:
///
/// - refused by an open breaker ([`BreakerOpen`](crate::breaker::BreakerOpen)) or a full
///   bulkhead ([`BulkheadFull`](crate::bulkhead::BulkheadFull)), it parks with the
///   [`Domain`](crate::Domain) that refused it: that breaker or compartment, not the whole
///   stack. Each domain waits on its own: a breaker until its
///   [`retry_after`](crate::breaker::BreakerOpen::retry_after) has passed, or 100 ms, whichever
///   comes first (a half-open breaker may close well before); a full bulkhead until one of the
///   hand-off's own calls ends, or 100 ms, whichever comes first; with none of its calls in the
///   stack, or once a probe sent after a call ended is refused again (that call went to another
///   domain), 1 ms doubling up to 100 ms. Then
///   the domain gets one record (its probe: the oldest that has not used its one more try),
///   and once that one is delivered its records go again, oldest first. Meanwhile the worker
///   keeps taking new records: those for a domain that is well flow at the offered rate, and
///   those for a waiting domain are refused again at once (a refusal costs the dependency
///   nothing) and join its line. Behind a per-broker [`KeyedLayer`](crate::keyed::KeyedLayer),
///   one sick broker parks only its own records; one breaker over the whole stack (or a keyed
///   layer's cluster-wide outage) is one domain, so everything parks behind one pause;
/// - failed with a dependency fault (a tower timeout, or a Kafka error whose
///   [`Fault`](crate::kafka::Fault) is the dependency's), it gets one more try, unless
///   [`retry_failed`](Self::retry_failed) is off: not at once, but after the next call that
///   succeeds, or after 100 ms if no domain is refusing, or after 1 s in any case. A caller's
///   fault is never retried.
///
/// While some call was delivered in the last second (other domains are healthy), one domain
/// parks at most **half of `capacity`** (rounded up). Past that, the domain's refusals are
/// final, counted as [`rejected`](super::HandoffCounts::rejected) (an open breaker) or
/// [`shed`](super::HandoffCounts::shed) (a full bulkhead), so that one sick domain never fills
/// the hand-off and stops the others: the other half stays for the queue and for the other
/// domains. When nothing is delivered (the whole dependency is down, or one breaker covers the
/// whole stack), there is no one to keep room for, and a domain may park up to the whole
/// `capacity`.
///
/// Parked records older than [`max_age`](Self::max_age) expire at the worker's next look (each
/// time it runs, at least every 100 ms), oldest first in each domain, whether or not the
/// domain still refuses: after an outage longer than `max_age`, the stale backlog goes at
/// once, not one probe at a time.
///
/// A backlog drains oldest first, ahead of new records, for up to half of each turn of the
/// worker (512 records), so that new records are never starved; beyond that, records offered
/// meanwhile may overtake it. Parked and queued records share the one `capacity`: while
/// records are parked, a sender finds the queue full as soon as queued plus parked records
/// reach it, and the newest are dropped, as always. So the hand-off holds at most `capacity`
/// records waiting (give or take the senders racing the check) plus `concurrency` in the
/// stack; [`max_bytes`](Self::max_bytes) bounds the weight of all of
/// them together. With both `park` and `retry_failed` off, the worker keeps no copy: the
/// record itself goes into the stack, never cloned. If the service breaks (its `poll_ready`
/// fails or panics), what is parked is counted as failed at once.
///
/// ```
/// use tanker::handoff::Handoff;
/// use tower::{service_fn, BoxError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let service = service_fn(|line: String| async move { Ok::<_, BoxError>(line.len()) });
/// let err = Handoff::builder().concurrency(0).spawn(service).unwrap_err();
/// assert_eq!(err.config().unwrap().setting(), "concurrency");
/// # }
/// ```
#[derive(Clone)]
pub struct HandoffBuilder<W = Unweighed> {
    capacity: usize,
    concurrency: usize,
    max_age: Duration,
    park: bool,
    retry_failed: bool,
    max_bytes: usize,
    weigher: W,
    name: Arc<str>,
}

impl Handoff<()> {
    /// A [`HandoffBuilder`] with the defaults: the same entry point as the layers'
    /// (`BreakerLayer::builder()`, `BulkheadLayer::builder()`).
    ///
    /// ```
    /// use tanker::handoff::Handoff;
    ///
    /// let builder = Handoff::builder().name("stats").capacity(10_000);
    /// # let _ = builder;
    /// ```
    pub fn builder() -> HandoffBuilder {
        HandoffBuilder::default()
    }
}

impl Default for HandoffBuilder {
    fn default() -> Self {
        Self {
            capacity: 50_000,
            concurrency: 1024,
            max_age: Duration::from_secs(300),
            park: true,
            retry_failed: true,
            max_bytes: usize::MAX,
            weigher: Unweighed,
            name: Arc::from("handoff"),
        }
    }
}

impl<W> fmt::Debug for HandoffBuilder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandoffBuilder")
            .field("capacity", &self.capacity)
            .field("concurrency", &self.concurrency)
            .field("max_age", &self.max_age)
            .field("park", &self.park)
            .field("retry_failed", &self.retry_failed)
            .field("max_bytes", &self.max_bytes)
            .field("weigher", &std::any::type_name::<W>())
            .field("name", &self.name)
            .finish()
    }
}

impl<W> HandoffBuilder<W> {
    /// Bounds the records the hand-off holds (queued, parked and in the stack) by their total
    /// weight as well as by their number: a `send` that would go over `bytes` drops the record,
    /// counted as dropped because the hand-off is full. `weigh` tells what a record weighs:
    /// [`Record::weight`](crate::kafka::Record::weight) for Kafka records (payload, key and
    /// headers), or any `Fn(&Req) -> usize`. A record heavier than `bytes` on its own is always
    /// dropped. At least 1.
    ///
    /// Memory then stays within `capacity` places plus `bytes` of what the records point to,
    /// whatever the dependency does. It costs `send` one call of `weigh` and one atomic add.
    ///
    /// ```
    /// use tanker::handoff::{Handoff, Sent};
    /// use tower::{service_fn, BoxError};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let never = service_fn(|_: String| std::future::pending::<Result<(), BoxError>>());
    /// let lines = Handoff::builder()
    ///     .max_bytes(10, |line: &String| line.len())
    ///     .spawn(never)
    ///     .unwrap();
    /// assert_eq!(lines.send("0123456".to_owned()), Sent::Accepted);
    /// assert_eq!(lines.send("0123456".to_owned()), Sent::Dropped); // 14 bytes > 10
    /// assert_eq!(lines.send("012".to_owned()), Sent::Accepted);
    /// # }
    /// ```
    pub fn max_bytes<V>(self, bytes: usize, weigh: V) -> HandoffBuilder<V> {
        HandoffBuilder {
            capacity: self.capacity,
            concurrency: self.concurrency,
            max_age: self.max_age,
            park: self.park,
            retry_failed: self.retry_failed,
            max_bytes: bytes,
            weigher: weigh,
            name: self.name,
        }
    }

    /// The most requests waiting in the queue; beyond it, `send` drops. Between 1 and
    /// [`MAX_CAPACITY`]; the queue is allocated when the hand-off is spawned.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The most calls the worker keeps in flight through the stack at once. At least 1 (and at
    /// most `u32::MAX`: more is taken as that).
    ///
    /// The worker polls each call as it starts it, so a call that answers at once never counts
    /// against a smaller bulkhead further down: a burst is shed only if the dependency really is
    /// slower than the burst.
    ///
    /// The worker keeps a place for each call it has had in flight at once (a box the size of
    /// the stack's response future, and a waker), reused for later calls so that a call costs
    /// no allocation: that memory grows to the most calls ever in flight at once, bounded by
    /// this setting, and is given back when the worker ends.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// How long a record may wait, from `send` to the start of its last call, before it is
    /// discarded unsent and counted as [`expired`](super::HandoffCounts::expired). More than
    /// 1 ms; [`Duration::MAX`] (or anything over 24 days) means no limit. On a runtime without
    /// the time driver there is no limit either: the worker cannot keep its clock moving there.
    ///
    /// Parked records (see [Parking](Self#parking)) are looked at each time the worker runs,
    /// and expire then even while their domain still refuses; queued ones when their turn
    /// comes. Ages are read on the hand-off's coarse clock, which the worker moves each time it
    /// runs (at least every 100 ms while it has nothing to do): a record may be discarded up to
    /// that much early.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Whether records refused by an open breaker or a full bulkhead are parked and tried again
    /// (see [Parking](Self#parking); while others deliver, one domain parks at most half of
    /// [`capacity`](Self::capacity)). Default: on. Off, a refusal is final: the record is counted
    /// as [`rejected`](super::HandoffCounts::rejected) or [`shed`](super::HandoffCounts::shed)
    /// at once, and a sick dependency costs records instead of queue space.
    pub fn park(mut self, park: bool) -> Self {
        self.park = park;
        self
    }

    /// Whether a record that failed with a fault of the dependency's gets one more try once the
    /// stack takes records again (see [Parking](Self#parking)). Default: on. Off, every failure
    /// is final, and nothing is ever written twice by the hand-off.
    pub fn retry_failed(mut self, retry: bool) -> Self {
        self.retry_failed = retry;
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
        if self.max_age <= Duration::from_millis(1) {
            return Err(ConfigError::new(
                "max_age",
                format!(
                    "must be more than 1 ms (got {:?}): every record would expire before it is \
                     sent; use Duration::MAX for no limit",
                    self.max_age
                ),
            ));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::new(
                "max_bytes",
                "must be at least 1: a hand-off that may hold no bytes would drop everything",
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
    /// as soon as it is idle, and the first sender after a pause wakes it; records are not parked
    /// (a refusal is final), since trying again needs a timer. (Finding that out makes tokio's
    /// panic hook print its "timers are disabled" message once.)
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
        Req: Clone + Send + 'static,
        W: Weigher<Req>,
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
        let weigh = self.weigher.into_weigh();
        let shared = Arc::new(Shared::new(self.capacity, self.name, weigh, self.max_bytes));
        // Ages beyond the coarse clock's safe range (24 days) mean no limit; so does a runtime
        // without the time driver, where the worker cannot keep the clock moving while it parks.
        let max_age =
            (self.max_age.as_millis() < 1 << 31 && tick.is_some()).then_some(self.max_age);
        let worker = Worker::new(
            shared.clone(),
            service,
            self.concurrency,
            tick,
            max_age,
            self.park,
            self.retry_failed,
        );
        // A call may end on a channel or a timer that counts against tokio's cooperative budget;
        // with thousands of calls in flight that budget, not the work, would pace the worker. It
        // keeps its own budget instead (`worker::BUDGET`), and yields after that many records.
        runtime.spawn(tokio::task::unconstrained(worker.run()));
        Ok(Handoff::new(shared))
    }
}
