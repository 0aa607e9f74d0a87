//! A task that moves the sliding window to the next bucket at every boundary, so that successes
//! need not read the clock.
//!
//! A ticker runs on the tokio runtime of the call that started it and sleeps on tokio's clock, so
//! paused time drives it in tests. It holds only a weak reference to its owner and ends when the
//! breaker is dropped. The window's [`TickerSeat`](super::window::TickerSeat) names the one
//! ticker it counts on: if that ticker's runtime shuts down, or stays alive but idle so that the
//! ticker misses a bucket, the seat is freed (see [the window](super::window)), successes read
//! the clock, and the next call starts a ticker on its own runtime. A ticker that finds the seat
//! taken by another ends at its next wake-up.
//!
//! On a runtime without the time driver no ticker can run: the first attempt finds it out (tokio
//! reports it by panicking when a timer is made; that panic is caught here, on the caller's
//! thread, and tokio's message is printed once by the panic hook), and from then on this
//! breaker's successes read the clock. Nothing is spawned. In a build with `panic = "abort"` the
//! check cannot be made, so no ticker is started there, and successes read the clock.

use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{Arc, Weak};

use tokio::time::{Instant, Sleep};

use super::window::Window;

/// Ticker ids, unique in the process (not part of any decision protocol, so a plain atomic).
static NEXT_ID: StdAtomicU64 = StdAtomicU64::new(1);

/// Starts a ticker for `owner`'s window on the current runtime, unless one runs, one was tried in
/// this bucket, there is no runtime, or the runtime has no timers.
#[cold]
pub(crate) fn start<T>(owner: &Arc<T>)
where
    T: AsRef<Window> + Send + Sync + 'static,
{
    let window = (**owner).as_ref();
    if !window.ticker().may_try(window.epoch()) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let id = NEXT_ID.fetch_add(1, StdOrdering::Relaxed);
    if !window.ticker().claim(id) {
        return;
    }
    let epoch = window.tick(Instant::now());
    let Some(sleep) = timer(window.next_boundary(epoch)) else {
        window.ticker().release(id);
        window.ticker().timers_missing();
        return;
    };
    // Built outside the task, so that the seat is freed even if the task never runs.
    let seat = Seat {
        owner: Arc::downgrade(owner),
        id,
    };
    runtime.spawn(async move {
        let seat = seat;
        tokio::pin!(sleep);
        // Tick first: the task may first run long after it was spawned.
        while let Some(next) = seat.tick() {
            sleep.as_mut().reset(next);
            sleep.as_mut().await;
        }
    });
}

/// A timer for `deadline`, or `None` if the current runtime has no time driver.
#[cfg(panic = "unwind")]
fn timer(deadline: Instant) -> Option<Sleep> {
    std::panic::catch_unwind(|| tokio::time::sleep_until(deadline)).ok()
}

/// Without unwinding the check would abort the process: never start a ticker.
#[cfg(not(panic = "unwind"))]
fn timer(_deadline: Instant) -> Option<Sleep> {
    None
}

/// A ticker's hold on its owner; frees the window's seat when the task ends or is dropped.
struct Seat<T: AsRef<Window>> {
    owner: Weak<T>,
    id: u64,
}

impl<T: AsRef<Window>> Seat<T> {
    /// Moves the window to the current bucket; returns when the next one begins, or `None` if the
    /// breaker is gone or counts on another ticker.
    fn tick(&self) -> Option<Instant> {
        let owner = self.owner.upgrade()?;
        let window = (*owner).as_ref();
        if !window.ticker().is(self.id) {
            return None;
        }
        let epoch = window.tick(Instant::now());
        Some(window.next_boundary(epoch))
    }
}

impl<T: AsRef<Window>> Drop for Seat<T> {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.upgrade() {
            (*owner).as_ref().ticker().release(self.id);
        }
    }
}
