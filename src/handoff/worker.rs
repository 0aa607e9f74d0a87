//! The background task that drives the queued records through the stack.

use std::any::Any;
use std::fmt;
use std::future::{poll_fn, Future};
use std::mem;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{CatchUnwind, FutureExt};
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tower::BoxError;
use tower_service::Service;

use super::in_flight::InFlight;
use super::parking::{Held, Lot, Refused};
use super::shared::{Fate, Shared};
use crate::rejection::chain;
use crate::telemetry::Throttle;
use crate::{Domain, Rejection};

/// Records the worker finishes or starts in one poll before it yields its thread.
const BUDGET: u32 = 1024;

/// Of each poll's [`BUDGET`], how many parked records may go before new ones.
const LOT_SHARE: u32 = BUDGET / 2;

/// How often a worker that ran out of records looks at the queue by itself, for a while: a
/// steady flow of records then never makes a sender wake it.
const TICK: Duration = Duration::from_millis(1);

/// How long a worker with nothing to start keeps the fast tick before it slows down.
const LINGER: Duration = Duration::from_millis(50);

/// How often a worker that has been idle for [`LINGER`] looks at the queue: ten wake-ups a
/// second, a few microseconds of CPU, so that an idle hand-off costs nothing measurable while a
/// sender still never pays for waking it (a wake-up that crosses threads costs a sender tens of
/// microseconds). A record offered to an idle hand-off waits at most this long to be sent,
/// unless the queue fills to half, which rings the doorbell.
const SLOW_TICK: Duration = Duration::from_millis(100);

/// The worker's tick, or `None` on a runtime without the time driver (tokio's timers panic
/// there; this is the one place that finds out, once, at spawn).
pub(crate) fn tick() -> Option<Interval> {
    catch_unwind(|| every(TICK)).ok()
}

/// A tick of `period` whose first tick is one period away. Needs the time driver.
fn every(period: Duration) -> Interval {
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// What a caught panic said, for the log.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "(not a string)"
    }
}

/// Counts a record's final outcome and gives its weight back.
fn count_done<Req>(shared: &Shared<Req>, record: &Held<Req>, fate: Fate) {
    shared.release_bytes(record.weight);
    shared.finish(fate);
}

/// How a refusal that is not parked is counted.
fn final_refusal(why: Refused) -> Fate {
    match why {
        Refused::Breaker(_) => Fate::Rejected,
        Refused::Bulkhead { .. } => Fate::Shed,
    }
}

/// What the worker does with a call that ended.
enum Ended {
    Delivered,
    /// Refused by an open breaker (with its `retry_after`) or a full bulkhead: park it with
    /// the domain that refused.
    Refused(Domain, Rejection),
    /// Failed with a fault of the dependency's (see [`is_dependency_fault`]).
    DependencyFault,
    /// Failed any other way (the caller's fault, or an error nobody classified).
    Failed,
}

/// What became of a call, by tanker's one definition of a refusal ([`Rejection::find`], which
/// also finds a refusal another layer wrapped).
fn ended<T>(result: Result<T, BoxError>) -> Ended {
    match result {
        Ok(_) => Ended::Delivered,
        Err(error) => match Rejection::find_with_domain(&*error) {
            Some((rejection, domain)) => Ended::Refused(domain, rejection),
            None if is_dependency_fault(&*error) => Ended::DependencyFault,
            None => Ended::Failed,
        },
    }
}

/// Whether an error is the dependency's fault, so that the record may be tried once more when
/// the dependency is healthy again: a tower timeout, or a Kafka error whose
/// [`Fault`](crate::kafka::Fault) is the dependency's, anywhere in the source chain. A caller's
/// fault (a record too large, an unknown topic) and unknown errors are not retried.
fn is_dependency_fault(error: &(dyn std::error::Error + 'static)) -> bool {
    chain(error).any(|e| {
        if e.is::<tower::timeout::error::Elapsed>() {
            return true;
        }
        #[cfg(feature = "kafka")]
        if let Some(kafka) = e.downcast_ref::<crate::kafka::KafkaError>() {
            return kafka.fault() == crate::kafka::Fault::Dependency;
        }
        false
    })
}

type Call<F> = CatchUnwind<AssertUnwindSafe<F>>;

/// How a call ended (its result, or the panic it raised), with its record.
type CallEnd<R, E, Req> = (Result<Result<R, E>, Box<dyn Any + Send>>, Held<Req>);

/// What [`Worker::start`] did with a record.
enum Start {
    /// The call is in flight, or finished (failed, panicked) and counted.
    Done,
    /// The service is not ready: the record is held back until it is.
    Held,
}

/// Closes the hand-off and says the worker ended, unless disarmed: see [`Worker::run`].
struct WorkerGone<Req> {
    shared: Option<Arc<Shared<Req>>>,
}

impl<Req> WorkerGone<Req> {
    fn armed(shared: Arc<Shared<Req>>) -> Self {
        Self {
            shared: Some(shared),
        }
    }

    fn disarm(mut self) {
        self.shared = None;
    }
}

impl<Req> Drop for WorkerGone<Req> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.close();
            shared.worker_ended();
        }
    }
}

pub(crate) struct Worker<S, Req>
where
    S: Service<Req>,
{
    shared: Arc<Shared<Req>>,
    /// `None` once the service broke (its `poll_ready` failed or panicked): it is dropped, and
    /// the hand-off is closed.
    service: Option<S>,
    concurrency: usize,
    /// The calls in the stack, each with its record (kept, with a copy of its request, in case
    /// the stack gives it back).
    calls: InFlight<Call<S::Future>, Held<Req>>,
    /// A record taken while the service was not ready.
    held: Option<Held<Req>>,
    /// Records the stack gave back (parked), by the domain that refused them, each domain with
    /// its own pause; and records waiting for their one more try.
    lot: Lot<Req>,
    /// Records taken from the queue so far: the next one's place in the order of acceptance.
    taken: u64,
    /// Parked records that may still go before new ones in this poll: a draining backlog goes
    /// oldest first, ahead of the queue, for up to half of each poll's budget, so that new
    /// records (for the domains that are well) are never starved.
    lot_share: u32,
    /// The one timer of the lot: the end of the earliest pause of a domain (or of the wait of
    /// the records for their one more try).
    alarm: Option<Pin<Box<Sleep>>>,
    /// When the lot's earliest pause ends, as of the last look.
    next_alarm: Option<Instant>,
    /// The runtime's clock as of this poll (or the last tick): the pauses start from it.
    instant: Instant,
    /// Records older than this (milliseconds on the coarse clock) expire unsent.
    max_age: Option<u32>,
    /// Whether refused records are parked (and there is a timer to try them again).
    park: bool,
    /// Whether a record that failed with a dependency fault gets one more try.
    retry: bool,
    /// Whether a copy of each record stays in the worker while it is in the stack (parking or
    /// one more try is on); otherwise the record is moved into the stack, never cloned.
    keep: bool,
    /// The coarse clock, as of this poll.
    now: u32,
    bell: Pin<Box<OwnedNotified>>,
    /// `None` on a runtime without the time driver: the worker then parks as soon as it is
    /// idle, senders ring it, and it publishes its counters only when it wakes.
    tick: Option<Interval>,
    /// Whether a call ended other than by a refusal since [`busy`](Self::busy) last looked.
    worked: bool,
    /// Whether `tick` is the slow one ([`SLOW_TICK`]).
    slow: bool,
    /// Since when the worker has had nothing to start, as seen at its ticks (read at ticks only,
    /// so that the busy path reads no clock).
    idle_since: Option<Instant>,
    #[cfg(feature = "metrics")]
    published: super::publish::Published,
    /// Spaces out the warnings about dropped records.
    drop_reports: Throttle,
}

impl<S, Req> Worker<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    pub(crate) fn new(
        shared: Arc<Shared<Req>>,
        service: S,
        concurrency: usize,
        tick: Option<Interval>,
        max_age: Option<Duration>,
        park: bool,
        retry: bool,
    ) -> Self {
        let bell = Box::pin(shared.doorbell().notified());
        let max_age = max_age.map(|age| u32::try_from(age.as_millis()).unwrap_or(u32::MAX));
        let timers = tick.is_some();
        // Parking needs a timer to end a domain's pause; without one a refusal is final.
        let park = park && timers;
        // At most as many records parked as the queue holds: the map of domains is bounded by
        // them too.
        let lot = Lot::new(shared.capacity(), timers);
        Self {
            shared,
            service: Some(service),
            // Each call in flight has a berth numbered by a u32 (see `InFlight::push`).
            concurrency: concurrency.min(u32::MAX as usize),
            calls: InFlight::new(),
            held: None,
            lot,
            lot_share: LOT_SHARE,
            taken: 0,
            alarm: None,
            next_alarm: None,
            instant: Instant::now(),
            max_age,
            park,
            retry,
            keep: park || retry,
            now: 0,
            bell,
            tick,
            worked: false,
            slow: false,
            idle_since: None,
            #[cfg(feature = "metrics")]
            published: Default::default(),
            drop_reports: Throttle::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        // If the worker ends any other way (a panic outside the guarded call sites, such as a
        // call's future's, a response's or an error's `Drop`; the runtime shutting down), the hand-off closes and
        // `close` returns instead of waiting for a worker that is gone; what was pending stays
        // counted as pending.
        let ended = WorkerGone::armed(self.shared.clone());
        poll_fn(|cx| {
            let poll = self.poll_run(cx);
            // Each time the worker runs out of work, yields, or ends, its counters go out in
            // one batch.
            self.publish();
            poll
        })
        .await;
        ended.disarm();
        self.shared.worker_ended();
    }

    /// Publishes the counters to the metrics recorder (with the `metrics` feature), and warns,
    /// at most once a second, when records were dropped since the last warning.
    fn publish(&mut self) {
        #[cfg(feature = "metrics")]
        self.publish_metrics();
        if tracing::enabled!(tracing::Level::WARN) {
            let dropped = self.shared.dropped();
            if let Some(since) = self.drop_reports.poll(dropped) {
                tracing::warn!(
                    handoff = self.shared.name(),
                    dropped = since,
                    dropped_total = dropped,
                    queued = self.shared.queued(),
                    "hand-off dropped records: its queue was full or it was closed"
                );
            }
        }
    }

    #[cfg(feature = "metrics")]
    fn publish_metrics(&mut self) {
        let counts = self.shared.counts();
        let queued = self.shared.queued() as u64;
        self.shared
            .metrics()
            .publish(&counts, queued, &mut self.published);
    }

    /// Counts how a call ended, or parks its record for another try.
    fn finish(&mut self, (result, mut record): CallEnd<S::Response, S::Error, Req>) {
        let probe_of = record.probe_of.take();
        let fate = match result {
            Ok(result) => match ended(result.map_err(Into::into)) {
                Ended::Delivered => Fate::Delivered,
                // Parked with the domain that refused; with parking off the refusal is final.
                Ended::Refused(domain, rejection) if self.park => {
                    let probe_of = match probe_of {
                        Some(probed) if probed != domain => {
                            // Another domain refused the probe: its own bay waits and probes
                            // again.
                            self.lot.probe_ended(probed, false, self.instant);
                            None
                        }
                        // Its own domain refused it: the refusal pauses the bay again.
                        probe_of => probe_of,
                    };
                    let why = match rejection {
                        Rejection::BreakerOpen { retry_after } => Refused::Breaker(retry_after),
                        // A call of ours still in the stack frees a slot when it ends.
                        _ => Refused::Bulkhead {
                            calls: !self.calls.is_empty(),
                        },
                    };
                    record.probe_of = probe_of;
                    match self.lot.refused(domain, why, record, self.instant) {
                        Ok(()) => {
                            self.shared.park();
                            return;
                        }
                        // The domain holds its share of the lot already: this refusal is final.
                        Err(refused) => {
                            self.done(refused, final_refusal(why));
                            return;
                        }
                    }
                }
                Ended::Refused(_, Rejection::BreakerOpen { .. }) => Fate::Rejected,
                Ended::Refused(..) => Fate::Shed,
                Ended::DependencyFault if self.retry && !record.retried => {
                    // Not at once: after the next call that succeeds, or `LOOK_AGAIN`.
                    record.retried = true;
                    self.shared.count_retry();
                    self.call_ended(false, probe_of);
                    self.lot.faulted(record, self.instant);
                    self.shared.park();
                    return;
                }
                Ended::DependencyFault | Ended::Failed => {
                    tracing::trace!(handoff = self.shared.name(), "hand-off call failed");
                    Fate::Failed
                }
            },
            Err(panic) => {
                self.panicked("response future", &*panic);
                Fate::Failed
            }
        };
        match fate {
            Fate::Delivered | Fate::Failed => {
                self.call_ended(fate == Fate::Delivered, probe_of);
            }
            // A final refusal of a probe: `done` ends it.
            _ => record.probe_of = probe_of,
        }
        self.done(record, fate);
    }

    /// A call left the stack other than by a refusal: a full bulkhead has a slot again, and a
    /// probe's bay learns how it went.
    fn call_ended(&mut self, delivered: bool, probe_of: Option<Domain>) {
        self.worked = true;
        if !self.park && !self.retry {
            return;
        }
        self.lot.call_ended(delivered, self.instant);
        if let Some(probed) = probe_of {
            self.lot.probe_ended(probed, delivered, self.instant);
        }
    }

    /// Counts a record's final fate and gives its weight back. If it was its bay's probe
    /// and the call did not say how it went (it was never made, or it panicked), the bay waits
    /// and probes again: every way a probe ends goes through here or
    /// [`call_ended`](Self::call_ended), so no bay is left waiting for a probe that is gone.
    fn done(&mut self, mut record: Held<Req>, fate: Fate) {
        if let Some(probed) = record.probe_of.take() {
            self.lot.probe_ended(probed, false, self.instant);
        }
        count_done(&self.shared, &record, fate);
    }

    /// Looks at the lot as of `self.instant`: parked records past their maximum age expire
    /// (from the front of each bay, the oldest, so a backlog older than that goes at once, not
    /// one probe at a time), pauses that are over end, and the alarm is set for the next one.
    fn wake_lot(&mut self) {
        if let Some(age) = self.max_age {
            let (now, shared) = (self.now, &self.shared);
            self.lot.expire(
                |record| now.wrapping_sub(record.stamp) > age,
                |record| {
                    shared.unpark();
                    count_done(shared, &record, Fate::Expired);
                },
            );
        }
        self.next_alarm = self.lot.wake(self.instant);
    }

    /// Whether the alarm rang (and the lot was looked at again); arms it otherwise. Never on a
    /// runtime without the time driver (tokio's timers panic there; the lot then sets no
    /// pause).
    fn poll_alarm(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(at) = self.next_alarm.filter(|_| self.tick.is_some()) else {
            return false;
        };
        let alarm = match &mut self.alarm {
            Some(alarm) => {
                if alarm.deadline() != at {
                    alarm.as_mut().reset(at);
                }
                alarm
            }
            None => self.alarm.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        if alarm.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.instant = Instant::now();
        self.wake_lot();
        true
    }

    /// A parked record whose domain may take it (first, within the poll's share), or the
    /// queue's oldest.
    fn take_next(&mut self) -> Option<Held<Req>> {
        if self.lot_share > 0 {
            if let Some(parked) = self.lot.next_due() {
                self.lot_share -= 1;
                self.shared.unpark();
                return Some(parked);
            }
        }
        // A full lot takes nothing new: the queue fills and drops the newest, as it does
        // without parking.
        if self.lot.has_room() {
            if let Some(envelope) = self.shared.take() {
                self.taken += 1;
                return Some(Held {
                    stamp: envelope.stamp(),
                    weight: envelope.weight(),
                    request: Some(envelope.into_request()),
                    seq: self.taken,
                    retried: false,
                    probe_of: None,
                });
            }
        }
        let parked = self.lot.next_due()?;
        self.shared.unpark();
        Some(parked)
    }

    /// The next record to start: one held back, else see [`take_next`](Self::take_next).
    /// Records past their maximum age are counted as expired on the way, each taking one of
    /// the poll's `budget`.
    fn next_record(&mut self, budget: &mut u32) -> Option<Held<Req>> {
        loop {
            if *budget == 0 {
                return None;
            }
            let mut record = match self.held.take() {
                Some(held) => held,
                None => self.take_next()?,
            };
            match self.max_age {
                Some(age) if self.now.wrapping_sub(record.stamp) > age => {
                    *budget -= 1;
                    if let Some(probed) = record.probe_of.take() {
                        // Not sent, so no sign of the domain's health: the next record probes.
                        self.lot.probe_skipped(probed);
                    }
                    self.done(record, Fate::Expired);
                }
                _ => return Some(record),
            }
        }
    }

    fn panicked(&self, place: &str, payload: &(dyn Any + Send)) {
        tracing::error!(
            handoff = self.shared.name(),
            place,
            panic = panic_message(payload),
            "a hand-off call panicked; its record is counted as failed"
        );
    }

    /// The service cannot be trusted any more: its `poll_ready` failed (tower's way of saying
    /// it is dead) or panicked. The hand-off closes, so that later records are dropped rather
    /// than accepted and failed; what is queued fails; calls in flight finish as they will.
    fn broke(&mut self, why: &dyn fmt::Display) {
        tracing::error!(
            handoff = self.shared.name(),
            error = %why,
            "the hand-off's service broke; the hand-off closes: queued records are counted as \
             failed, later ones dropped"
        );
        self.shared.close();
        if let Some(service) = self.service.take() {
            // Its `drop` is user code too.
            let _ = catch_unwind(AssertUnwindSafe(|| drop(service)));
        }
        // Nothing will be tried again: what is parked fails now, and what the calls still in
        // flight give back is final.
        self.park = false;
        self.retry = false;
        for record in self.lot.clear() {
            self.shared.unpark();
            count_done(&self.shared, &record, Fate::Failed);
        }
    }

    /// Drives one record into the stack: readiness, then the call.
    fn start(&mut self, cx: &mut Context<'_>, mut record: Held<Req>) -> Start {
        let Some(service) = self.service.as_mut() else {
            self.done(record, Fate::Failed);
            return Start::Done;
        };
        match catch_unwind(AssertUnwindSafe(|| service.poll_ready(cx))) {
            Ok(Poll::Ready(Ok(()))) => {
                // The stack gets a copy: the record stays here in case the stack gives it back
                // (parked by a refusal, or one more try after a dependency fault). With both
                // off, nothing comes back: the record itself goes, uncloned.
                let request = if self.keep {
                    record.request.clone()
                } else {
                    record.request.take()
                };
                let Some(request) = request else {
                    self.done(record, Fate::Failed);
                    return Start::Done;
                };
                match catch_unwind(AssertUnwindSafe(|| service.call(request))) {
                    Ok(call) => self
                        .calls
                        .push(AssertUnwindSafe(call).catch_unwind(), record),
                    Err(panic) => {
                        self.panicked("call", &*panic);
                        self.done(record, Fate::Failed);
                    }
                }
            }
            Ok(Poll::Pending) => {
                self.held = Some(record);
                return Start::Held;
            }
            Ok(Poll::Ready(Err(error))) => {
                let error: BoxError = error.into();
                self.broke(&format_args!("poll_ready failed: {error}"));
                self.done(record, Fate::Failed);
            }
            Err(panic) => {
                let message = panic_message(&*panic).to_owned();
                self.broke(&format_args!("poll_ready panicked: {message}"));
                self.done(record, Fate::Failed);
            }
        }
        Start::Done
    }

    /// Counts every call that has ended; returns whether any had.
    fn finish_ready(&mut self, cx: &mut Context<'_>, budget: &mut u32) -> bool {
        let mut any = false;
        while *budget > 0 {
            let Poll::Ready(Some(end)) = self.calls.poll_next(cx) else {
                break;
            };
            *budget -= 1;
            any = true;
            self.finish(end);
        }
        any
    }

    /// Something was started or finished: the worker is busy again, and ticks fast when it next
    /// runs out of records.
    fn busy(&mut self) {
        if self.idle_since.is_none() && !self.slow {
            return;
        }
        if !mem::take(&mut self.worked) && self.lot.any_paused() {
            // A refusal that parked its record is no sign of a dependency taking work: keep
            // slowing down, so that an outage costs ten wake-ups a second, not a thousand.
            return;
        }
        self.idle_since = None;
        if self.slow {
            self.slow = false;
            self.tick = Some(every(TICK));
        }
    }

    /// A tick found nothing to start: after [`LINGER`] of that, the tick slows down.
    fn idle_tick(&mut self) {
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        if !self.slow && since.elapsed() >= LINGER {
            self.slow = true;
            self.tick = Some(every(SLOW_TICK));
        }
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.doorbell().running();
        self.instant = Instant::now();
        self.now = self.shared.set_clock(self.instant);
        self.wake_lot();
        // The task runs outside tokio's cooperative budget (see `HandoffBuilder::spawn`), so it
        // keeps its own: after this many records it yields, and other tasks get the thread.
        let mut budget = BUDGET;
        self.lot_share = LOT_SHARE;
        loop {
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut progress = self.finish_ready(cx, &mut budget);

            // Start new calls, up to the concurrency bound, and poll them as they start: a call
            // that answers at once gives its place back (in a bulkhead, say) before the next.
            // A domain that refused waits on its own: records for the others keep going.
            while self.calls.len() < self.concurrency && budget > 0 {
                let Some(record) = self.next_record(&mut budget) else {
                    break;
                };
                budget -= 1;
                if let Start::Held = self.start(cx, record) {
                    break;
                }
                progress = true;
                self.finish_ready(cx, &mut budget);
            }
            if progress {
                self.busy();
                continue;
            }

            if self.shared.is_drained() {
                // Closed, and every accepted record finished, with no sender between its
                // reservation and its push.
                return Poll::Ready(());
            }

            if budget == 0 {
                continue;
            }
            if self.poll_alarm(cx) {
                continue;
            }

            // Nothing to do until something happens. Could a new record be started now? Parked
            // records wait for the alarm, which wakes the worker; a full lot takes nothing new
            // until a domain's pause ends, so senders need not ring.
            let idle =
                self.held.is_none() && self.calls.len() < self.concurrency && self.lot.has_room();
            let doorbell = self.shared.doorbell();
            // Without timers nothing but the bell can wake an idle worker: it parks, and the next
            // sender rings. With timers it ticks, and senders ring only for a half-full queue.
            let parked = idle && self.tick.is_none();
            if parked {
                // The handshake (see `doorbell.rs`): announce, then look again.
                doorbell.park();
                if self.shared.has_queued() || self.shared.is_drained() {
                    doorbell.awake();
                    continue;
                }
            } else if idle {
                doorbell.ticking();
                if self.shared.has_queued() {
                    // It came between the drain and the state change.
                    continue;
                }
            }
            // Otherwise only a call ending or the service becoming ready can help: their wakers
            // wake the worker, and senders need not ring.

            if self.bell.as_mut().poll(cx).is_ready() {
                self.bell.set(doorbell.notified());
                continue;
            }
            if !parked {
                // Also while blocked, so that the counters and warnings keep going out.
                if let Some(tick) = &mut self.tick {
                    if tick.poll_tick(cx).is_ready() {
                        // The coarse clock follows, so that senders' stamps stay within a tick.
                        self.instant = Instant::now();
                        self.now = self.shared.set_clock(self.instant);
                        self.wake_lot();
                        // Nothing progressed since the last tick (progress resets this): idle,
                        // paused, or blocked on calls that do not end (a frozen dependency).
                        self.idle_tick();
                        continue;
                    }
                }
            }
            return Poll::Pending;
        }
    }
}
