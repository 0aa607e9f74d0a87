use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Sleep;
use tower::BoxError;
use tower_service::Service;

use super::compartment::{BulkheadHandle, Compartment};
use super::future::{ResponseFuture, Slot};

/// Bounds the calls in flight to the inner service and sheds the rest at once.
///
/// Built by [`BulkheadLayer`](super::BulkheadLayer); see the [module docs](super) for the
/// behaviour and an example. Every `Bulkhead` built from one layer value, and every clone of it,
/// shares one compartment.
///
/// `poll_ready` looks at the compartment and polls the inner service; `call` takes the slot. If
/// no slot is free (and the waiting room, if any, is full or its maximum wait has passed), or if
/// the inner service is not ready, `poll_ready` still returns `Ready(Ok(()))` and the following
/// `call` fails at once with [`BulkheadFull`](super::BulkheadFull). A slot waited for in the
/// waiting room is held by this handle until `call`; a clone starts without one.
pub struct Bulkhead<S> {
    inner: S,
    compartment: Arc<Compartment>,
    /// One byte, written by `poll_ready` and read by `call`: the hot path touches nothing else
    /// of this handle's state.
    state: State,
    /// The slot a waiting caller got, held until `call` (state `Reserved`).
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
    /// A slot was waited for and is held in `reserved` until `call`.
    Reserved,
    /// The next call is shed.
    Shed,
    /// Waiting in the waiting room for a slot.
    Waiting,
}

pin_project! {
    struct Wait {
        #[pin]
        notified: OwnedNotified,
        #[pin]
        deadline: Sleep,
        place: RoomPlace,
        // Others were waiting when this caller came in: it takes a slot only once woken, so that
        // callers are served in the order they came.
        queued: bool,
    }
}

/// A place in the waiting room, given back on drop.
struct RoomPlace {
    compartment: Arc<Compartment>,
}

impl Drop for RoomPlace {
    fn drop(&mut self) {
        self.compartment.leave_room();
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
        BulkheadHandle {
            compartment: self.compartment.clone(),
        }
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
        let Some(wait) = &mut self.wait else {
            return Poll::Ready(false);
        };
        loop {
            let mut wait = wait.as_mut().project();
            // Registered before trying, so that a slot freed in between still wakes us.
            wait.notified.as_mut().enable();
            if !*wait.queued && compartment.try_admit() {
                compartment.pass_on();
                return Poll::Ready(true);
            }
            if wait.notified.as_mut().poll(cx).is_ready() {
                // Our turn: try again, with a fresh registration for the next release.
                *wait.queued = false;
                if let Some(room) = compartment.room() {
                    wait.notified.set(room.notify.clone().notified_owned());
                }
                continue;
            }
            return match wait.deadline.poll(cx) {
                Poll::Ready(()) => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            };
        }
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
            State::Idle => {
                if !self.compartment.looks_full() && !self.compartment.has_waiters() {
                    // The slot itself is taken by `call`, so a caller that polls and never
                    // calls holds nothing. While others wait, a freed slot is theirs: a
                    // newcomer queues behind them (or is shed if the room is full).
                    self.state = State::Ready;
                } else if let Some(wait) = self.enter_waiting_room() {
                    self.wait = Some(wait);
                    self.state = State::Waiting;
                } else {
                    self.state = State::Shed;
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
                self.reserved = Some(Slot::reserved(self.compartment.clone()));
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
    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        match mem::replace(&mut self.state, State::Idle) {
            State::Ready if self.compartment.try_admit() => {
                self.compartment.record_admitted();
                ResponseFuture::called(
                    self.inner.call(request),
                    Slot::for_call(self.compartment.clone()),
                )
            }
            State::Reserved => match self.reserved.take() {
                Some(slot) => {
                    self.compartment.record_admitted();
                    ResponseFuture::called(self.inner.call(request), slot.use_for_call())
                }
                None => self.shed(),
            },
            // `Ready`: the last slot went to another caller since `poll_ready`.
            State::Ready | State::Shed => self.shed(),
            State::Idle | State::Waiting => {
                panic!("Bulkhead::call without a successful poll_ready: poll_ready must be called first")
            }
        }
    }
}

impl<S> Bulkhead<S> {
    #[cold]
    fn shed<F>(&self) -> ResponseFuture<F> {
        self.compartment.record_shed();
        ResponseFuture::shed()
    }
}

impl<S> Bulkhead<S> {
    fn enter_waiting_room(&self) -> Option<Pin<Box<Wait>>> {
        let room = self.compartment.room()?;
        if room.max_wait.is_zero() {
            return None;
        }
        let queued = self.compartment.try_enter_room()?;
        let place = RoomPlace {
            compartment: self.compartment.clone(),
        };
        Some(Box::pin(Wait {
            notified: room.notify.clone().notified_owned(),
            deadline: tokio::time::sleep(room.max_wait),
            place,
            queued,
        }))
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
