use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower_service::Service;

use super::compartment::Compartment;
use super::future::{ResponseFuture, Slot};
use super::handle::BulkheadHandle;
use super::room::Place;

/// Bounds the calls in flight to the inner service and sheds the rest at once.
///
/// Built by [`BulkheadLayer`](super::BulkheadLayer); see the [module docs](super) for the
/// behaviour and an example. Every `Bulkhead` built from one layer value, and every clone of it,
/// shares one compartment.
///
/// Without a waiting room, `poll_ready` looks at the compartment and polls the inner service;
/// `call` takes the slot. If no slot is free, or if the inner service is not ready, `poll_ready`
/// still returns `Ready(Ok(()))` and the following `call` fails at once with
/// [`BulkheadFull`](super::BulkheadFull). With a waiting room, `poll_ready` takes the slot (after
/// waiting for it, at most the room's maximum wait) and this handle holds it until `call`; a
/// clone starts without one.
pub struct Bulkhead<S> {
    inner: S,
    compartment: Arc<Compartment>,
    /// One byte, written by `poll_ready` and read by `call`: the hot path touches nothing else
    /// of this handle's state.
    state: State,
    /// The slot held for this handle until `call` (state `Reserved`).
    reserved: Option<Slot>,
    /// The place in the waiting room (state `Waiting`).
    wait: Option<Pin<Box<Wait>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `poll_ready` has not run since the last `call`.
    Idle,
    /// The compartment had room and the inner service is ready; `call` takes the slot.
    Ready,
    /// A slot is held in `reserved` until `call`.
    Reserved,
    /// The next call is shed.
    Shed,
    /// Waiting in the waiting room for a slot.
    Waiting,
}

pin_project! {
    struct Wait {
        // Made before each attempt to take a slot: `notify_waiters` wakes every `Notified` made
        // before it, polled or not, so a slot freed after a failed attempt always wakes us.
        #[pin]
        notified: OwnedNotified,
        // The end of the wait, or, while `queued`, the end of the claim of those ahead.
        #[pin]
        timer: Sleep,
        place: RoomPlace,
        // Others were waiting when this caller came in: it takes a slot only once woken by a
        // freed slot, or once the claim of those ahead has run out, so that a newcomer does not
        // take the slot freed for a caller that was woken and has not run yet.
        queued: bool,
    }
}

/// A place in the waiting room, given back on drop.
struct RoomPlace {
    compartment: Arc<Compartment>,
    place: Place,
}

impl Drop for RoomPlace {
    fn drop(&mut self) {
        self.compartment.leave_room(&self.place);
    }
}

impl<S> Bulkhead<S> {
    pub(crate) fn from_compartment(inner: S, compartment: Arc<Compartment>) -> Self {
        Self {
            inner,
            compartment,
            state: State::Idle,
            reserved: None,
            wait: None,
        }
    }

    /// The counters of the compartment this service belongs to.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.compartment.clone())
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the bulkhead, giving back any reserved slot, and returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Polls the waiting room until a slot is free or the maximum wait has passed.
    ///
    /// Returns `Ready(true)` with a slot taken, `Ready(false)` when the wait is over without one.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let compartment = &self.compartment;
        let (Some(wait), Some(room)) = (&mut self.wait, compartment.room()) else {
            return Poll::Ready(false);
        };
        loop {
            let mut wait = wait.as_mut().project();
            if !*wait.queued && compartment.reserve() {
                compartment.pass_on();
                return Poll::Ready(true);
            }
            if wait.notified.as_mut().poll(cx).is_ready() {
                // A slot was freed: try for it, with a fresh registration for the next one.
                *wait.queued = false;
                wait.notified.set(room.notified());
                continue;
            }
            match wait.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if *wait.queued => {
                    // Those ahead have had their chance: wait on our own account now.
                    *wait.queued = false;
                    let deadline = wait.place.place.deadline();
                    wait.timer.as_mut().reset(deadline);
                    continue;
                }
                Poll::Ready(()) => return Poll::Ready(false),
            }
        }
    }

    /// Takes the slot for a handle of a compartment with a waiting room, or a place in the room.
    fn reserve_or_wait(&mut self) {
        let Some(room) = self.compartment.room() else {
            return;
        };
        // While others wait with a claim on freed slots, a newcomer queues behind them.
        if !room.has_waiters() && self.compartment.reserve() {
            self.reserved = Some(Slot::taken(self.compartment.clone()));
            self.state = State::Reserved;
        } else if let Some(wait) = self.enter_waiting_room() {
            self.wait = Some(wait);
            self.state = State::Waiting;
        } else {
            self.state = State::Shed;
        }
    }

    fn enter_waiting_room(&self) -> Option<Pin<Box<Wait>>> {
        let room = self.compartment.room()?;
        // Registered before entering, so that a slot freed from now on wakes us.
        let notified = room.notified();
        let place = self.compartment.enter_room()?;
        let queued = place.behind_until().is_some();
        let until: Instant = place.behind_until().unwrap_or(place.deadline());
        Some(Box::pin(Wait {
            notified,
            timer: tokio::time::sleep_until(until.min(place.deadline())),
            place: RoomPlace {
                compartment: self.compartment.clone(),
                place,
            },
            queued,
        }))
    }
}

impl<S, Request> Service<Request> for Bulkhead<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.state {
            State::Ready | State::Reserved => {}
            State::Shed => return Poll::Ready(Ok(())),
            State::Idle if self.compartment.room().is_none() => {
                // The slot itself is taken by `call`, so a caller that polls and never calls
                // holds nothing.
                if self.compartment.full() {
                    self.state = State::Shed;
                    return Poll::Ready(Ok(()));
                }
                self.state = State::Ready;
            }
            State::Idle => {
                self.reserve_or_wait();
                if self.state == State::Shed {
                    return Poll::Ready(Ok(()));
                }
            }
            State::Waiting => {}
        }

        if self.state == State::Waiting {
            let admitted = ready!(self.poll_wait(cx));
            // Leaving the room gives the place back. A slot that was waited for is held until
            // `call`, so that nobody takes it in between.
            self.wait = None;
            if admitted {
                self.reserved = Some(Slot::taken(self.compartment.clone()));
                self.state = State::Reserved;
            } else {
                self.state = State::Shed;
                return Poll::Ready(Ok(()));
            }
        }

        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(err)) => {
                self.reserved = None;
                self.state = State::Idle;
                Poll::Ready(Err(err.into()))
            }
            Poll::Pending => {
                // Shed rather than queue behind a dependency that cannot take the call.
                self.reserved = None;
                self.state = State::Shed;
                Poll::Ready(Ok(()))
            }
        }
    }

    /// # Panics
    ///
    /// Panics if called without a preceding `poll_ready` that returned `Ready(Ok(()))`, as the
    /// tower contract allows.
    // Always inlined: the admitted path is two atomic operations, and left to itself the
    // compiler kept it out of line behind a call, at 15 % of a bulkhead's whole cost
    // (`cargo bench --bench overhead -- ready_call`); shedding is cold and stays out of line.
    #[inline(always)]
    fn call(&mut self, request: Request) -> Self::Future {
        // The slot's guard exists before the inner `call` runs: a panic unwinding from it drops
        // the guard, which gives the slot back.
        let slot = match mem::replace(&mut self.state, State::Idle) {
            State::Ready if self.compartment.admit() => Slot::taken(self.compartment.clone()),
            State::Reserved => match self.reserved.take() {
                Some(slot) => {
                    self.compartment.count_admission();
                    slot
                }
                None => return self.shed(),
            },
            // `Ready`: the last slot went to another caller since `poll_ready`.
            State::Ready | State::Shed => return self.shed(),
            State::Idle | State::Waiting => {
                panic!("Bulkhead::call without a successful poll_ready: poll_ready must be called first")
            }
        };
        ResponseFuture::called(self.inner.call(request), slot)
    }
}

impl<S> Bulkhead<S> {
    #[cold]
    fn shed<F>(&self) -> ResponseFuture<F> {
        self.compartment.record_shed();
        ResponseFuture::shed(self.compartment.domain())
    }
}

impl<S: Clone> Clone for Bulkhead<S> {
    /// The clone shares the compartment but not this handle's reservation: it starts idle.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            compartment: self.compartment.clone(),
            state: State::Idle,
            reserved: None,
            wait: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .field("compartment", &self.handle())
            .finish()
    }
}
