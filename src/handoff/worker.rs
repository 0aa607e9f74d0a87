//! The background task that drains the queue through the stack.

use crate::sync::Ordering;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::panic::{catch_unwind, AssertUnwindSafe};

use futures_util::future::{CatchUnwind, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::futures::OwnedNotified;
use tokio::time::{interval, Interval, MissedTickBehavior};
use tower::BoxError;
use tower_service::Service;

use super::shared::Shared;
use crate::breaker::BreakerOpen;
use crate::bulkhead::BulkheadFull;
#[cfg(feature = "metrics")]
use crate::telemetry::Counter;
use crate::telemetry::Throttle;

/// Records the worker finishes or starts in one poll before it yields its thread.
const BUDGET: u32 = 1024;

/// Adds to `counter` what `now` grew by since `then`, and remembers `now`.
#[cfg(feature = "metrics")]
fn add_since(counter: &Counter, now: u64, then: &mut u64) {
    if now > *then {
        counter.add(now - *then);
        *then = now;
    }
}

pub(crate) struct Worker<S, Req>
where
    S: Service<Req>,
{
    shared: Arc<Shared<Req>>,
    service: S,
    concurrency: usize,
    calls: FuturesUnordered<CatchUnwind<AssertUnwindSafe<S::Future>>>,
    /// A request taken from the queue while the service was not ready.
    held: Option<Req>,
    /// Set when the service's `poll_ready` failed: it is broken for good.
    broken: bool,
    doorbell: Pin<Box<OwnedNotified>>,
    tick: Interval,
    #[cfg(feature = "metrics")]
    published: Published,
    /// Spaces out the warnings about dropped records.
    drop_reports: Throttle,
}

/// What the worker last published to the metrics recorder, to publish the differences: counters
/// of hand-offs that share a name add up, and a value is never published before it has settled.
#[cfg(feature = "metrics")]
#[derive(Default)]
struct Published {
    accepted: u64,
    dropped_full: u64,
    delivered: u64,
    shed: u64,
    rejected: u64,
    failed: u64,
}

impl<S, Req> Worker<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    pub(crate) fn new(
        shared: Arc<Shared<Req>>,
        service: S,
        concurrency: usize,
        idle_poll: Duration,
    ) -> Self {
        let doorbell = Box::pin(shared.doorbell.clone().notified_owned());
        let mut tick = interval(idle_poll);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            shared,
            service,
            concurrency,
            calls: FuturesUnordered::new(),
            held: None,
            broken: false,
            doorbell,
            tick,
            #[cfg(feature = "metrics")]
            published: Published::default(),
            drop_reports: Throttle::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        poll_fn(|cx| {
            let poll = self.poll_run(cx);
            // Each time the worker runs out of work, yields, or ends (and so at least every
            // `idle_poll`), its counters go out in one batch.
            self.publish();
            poll
        })
        .await;
        self.shared.finished.store(true, Ordering::Release);
        self.shared.drained.notify_waiters();
    }

    fn record(&self, outcome: Result<S::Response, S::Error>) {
        let shared = &*self.shared;
        let counter = match outcome {
            Ok(_) => &shared.back.delivered,
            Err(error) => {
                let error: BoxError = error.into();
                if error.is::<BulkheadFull>() {
                    &shared.back.shed
                } else if error.is::<BreakerOpen>() {
                    &shared.back.rejected
                } else {
                    tracing::trace!(handoff = &*shared.name, %error, "hand-off call failed");
                    &shared.back.failed
                }
            }
        };
        // Count the outcome before leaving `in_flight`, so a snapshot never misses the record.
        counter.fetch_add(1, Ordering::Release);
        shared.back.in_flight.fetch_sub(1, Ordering::Release);
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
                    handoff = &*self.shared.name,
                    dropped = since,
                    dropped_total = dropped,
                    queued = self.shared.queue.len(),
                    "hand-off dropped records: its queue was full or it was closed"
                );
            }
        }
    }

    #[cfg(feature = "metrics")]
    fn publish_metrics(&mut self) {
        let shared = &*self.shared;
        let metrics = &shared.metrics;
        let back = &shared.back;
        let delivered = back.delivered.load(Ordering::Acquire);
        let shed = back.shed.load(Ordering::Acquire);
        let rejected = back.rejected.load(Ordering::Acquire);
        let failed = back.failed.load(Ordering::Acquire);
        // Only this worker takes records out of the queue and finishes them, so from here these
        // are exact. `front.accepted` is not used: a sender reserves there before it knows
        // whether its record gets in.
        let in_flight = back.in_flight.load(Ordering::Acquire);
        let queued = shared.queue.len() as u64;
        let accepted = delivered + shed + rejected + failed + in_flight + queued;
        let dropped_full = shared.front.dropped_full.load(Ordering::Acquire);

        let last = &mut self.published;
        for (counter, now, then) in [
            (&metrics.accepted, accepted, &mut last.accepted),
            (&metrics.dropped_full, dropped_full, &mut last.dropped_full),
            (&metrics.delivered, delivered, &mut last.delivered),
            (&metrics.shed, shed, &mut last.shed),
            (&metrics.rejected, rejected, &mut last.rejected),
            (&metrics.failed, failed, &mut last.failed),
        ] {
            add_since(counter, now, then);
        }
        metrics.queued.set(queued);
        metrics.in_flight.set(in_flight);
    }

    /// A call panicked: the record counts as failed and the worker goes on.
    fn panicked(&self) {
        tracing::error!(
            handoff = &*self.shared.name,
            "a hand-off call panicked; counted as failed"
        );
        self.shared.back.failed.fetch_add(1, Ordering::Release);
        self.shared.back.in_flight.fetch_sub(1, Ordering::Release);
    }

    /// Takes the next request: the one held back, or the queue's next.
    fn next_request(&mut self) -> Option<Req> {
        if let Some(request) = self.held.take() {
            return Some(request);
        }
        if self.shared.queue.is_empty() {
            return None;
        }
        // Counted as in flight before it leaves the queue, so that a snapshot never misses it.
        self.shared.back.in_flight.fetch_add(1, Ordering::AcqRel);
        let request = self.shared.queue.pop();
        if request.is_none() {
            self.shared.back.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        request
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // The task runs outside tokio's cooperative budget (see `HandoffBuilder::spawn`), so it
        // keeps its own: after this many records it yields, and other tasks get the thread.
        let mut budget = BUDGET;
        loop {
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // Finish what is done.
            while budget > 0 {
                let Poll::Ready(Some(outcome)) = self.calls.poll_next_unpin(cx) else {
                    break;
                };
                budget -= 1;
                match outcome {
                    Ok(outcome) => self.record(outcome),
                    Err(_) => self.panicked(),
                }
            }

            // Start new calls, up to the concurrency bound.
            let mut started = false;
            while self.calls.len() < self.concurrency && budget > 0 {
                budget -= 1;
                let Some(request) = self.next_request() else {
                    break;
                };
                if self.broken {
                    self.shared.back.failed.fetch_add(1, Ordering::Release);
                    self.shared.back.in_flight.fetch_sub(1, Ordering::Release);
                    continue;
                }
                match self.service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let service = &mut self.service;
                        match catch_unwind(AssertUnwindSafe(|| service.call(request))) {
                            Ok(call) => self.calls.push(AssertUnwindSafe(call).catch_unwind()),
                            Err(_) => self.panicked(),
                        }
                        started = true;
                    }
                    Poll::Ready(Err(error)) => {
                        let error: BoxError = error.into();
                        tracing::error!(
                            handoff = &*self.shared.name,
                            %error,
                            "the hand-off's service failed for good; every record will fail"
                        );
                        self.broken = true;
                        self.shared.back.failed.fetch_add(1, Ordering::Release);
                        self.shared.back.in_flight.fetch_sub(1, Ordering::Release);
                    }
                    Poll::Pending => {
                        self.held = Some(request);
                        break;
                    }
                }
            }
            if started {
                // Poll the new calls once; most finish or register their wakers right away.
                continue;
            }

            let closed = self.shared.front.closed.load(Ordering::SeqCst);
            if closed
                && self.held.is_none()
                && self.shared.queue.is_empty()
                && self.calls.is_empty()
                && self.shared.front.accepted.load(Ordering::SeqCst) <= self.shared.finished()
            {
                // Nothing queued, nothing in flight, and no sender between its reservation and
                // its push: every accepted record is finished.
                return Poll::Ready(());
            }

            // Sleep until the doorbell rings, the next tick, or a call finishes (its waker). At
            // the concurrency bound only a finishing call can help, so senders need not ring.
            if self.calls.len() < self.concurrency {
                self.shared.front.sleeping.store(true, Ordering::Release);
            }
            if self.doorbell.as_mut().poll(cx).is_ready() {
                self.doorbell
                    .set(self.shared.doorbell.clone().notified_owned());
                continue;
            }
            if self.tick.poll_tick(cx).is_ready() {
                continue;
            }
            // A request that arrived between the drain and `sleeping` would otherwise wait a tick.
            if self.held.is_none()
                && !self.shared.queue.is_empty()
                && self.calls.len() < self.concurrency
            {
                continue;
            }
            return Poll::Pending;
        }
    }
}
