//! The background task that drains the queue through the stack.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
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
use crate::metrics as names;
use crate::telemetry::{Counter, Gauge, Labels, Throttle};

/// Records the worker finishes or starts in one poll before it yields its thread.
const BUDGET: u32 = 1024;

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
    metrics: Metrics,
    /// Spaces out the warnings about dropped records.
    drop_reports: Throttle,
}

/// The hand-off's metric handles (empty without the `metrics` feature). The worker publishes
/// the shared counters into them in batches, so that `send` does no more work with metrics on.
struct Metrics {
    accepted: Counter,
    dropped_full: Counter,
    dropped_closed: Counter,
    delivered: Counter,
    shed: Counter,
    rejected: Counter,
    failed: Counter,
    queued: Gauge,
    in_flight: Gauge,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let labels = Labels::new("handoff", name);
        let dropped = |reason| {
            labels.counter_with(
                names::HANDOFF_DROPPED,
                "records a hand-off refused",
                Some(("reason", reason)),
            )
        };
        let failed = |reason| {
            labels.counter_with(
                names::HANDOFF_FAILED,
                "accepted records a hand-off's stack did not deliver",
                Some(("reason", reason)),
            )
        };
        Self {
            accepted: labels.counter(names::HANDOFF_ACCEPTED, "records a hand-off queued"),
            dropped_full: dropped("full"),
            dropped_closed: dropped("closed"),
            delivered: labels.counter(
                names::HANDOFF_DELIVERED,
                "records a hand-off's stack delivered",
            ),
            shed: failed("shed"),
            rejected: failed("rejected"),
            failed: failed("error"),
            queued: labels.gauge(names::HANDOFF_QUEUED, "records in a hand-off's queue"),
            in_flight: labels.gauge(names::HANDOFF_IN_FLIGHT, "records in a hand-off's stack"),
        }
    }
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
        let metrics = Metrics::new(&shared.name);
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
            metrics,
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

    /// Publishes the counters to the metrics recorder, and warns (at most once a second) when
    /// records were dropped since the last warning.
    fn publish(&self) {
        let counts = self.shared.counts();
        let metrics = &self.metrics;
        metrics.accepted.absolute(counts.accepted);
        metrics
            .dropped_full
            .absolute(counts.dropped - counts.dropped_closed);
        metrics.dropped_closed.absolute(counts.dropped_closed);
        metrics.delivered.absolute(counts.delivered);
        metrics.shed.absolute(counts.shed);
        metrics.rejected.absolute(counts.rejected);
        metrics.failed.absolute(counts.failed);
        metrics.queued.set(counts.queued);
        metrics.in_flight.set(counts.in_flight);

        if counts.dropped > 0 && tracing::enabled!(tracing::Level::WARN) {
            if let Some(dropped) = self.drop_reports.due(counts.dropped) {
                tracing::warn!(
                    handoff = &*self.shared.name,
                    dropped,
                    dropped_total = counts.dropped,
                    dropped_closed_total = counts.dropped_closed,
                    queued = counts.queued,
                    "hand-off dropped records: its queue was full or it was closed"
                );
            }
        }
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
