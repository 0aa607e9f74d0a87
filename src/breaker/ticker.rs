//! A task that moves the sliding window to the next bucket at every boundary, so that successes
//! never read the clock.
//!
//! The task runs on the tokio runtime of the first call that needed it and sleeps on tokio's
//! clock, so paused time drives it in tests. It holds only a weak reference to the breaker and
//! ends when the breaker is dropped. If its runtime shuts down, the task is dropped, the breaker
//! notices through [`Shared::ticking`], successes read the clock again, and the next call made on
//! a runtime starts a new ticker.

use crate::sync::Ordering;
use std::sync::{Arc, Weak};

use tokio::time::{sleep_until, Instant};

use super::shared::Shared;

/// Starts a ticker for `shared` on the current runtime, unless one runs or there is no runtime.
pub(crate) fn start(shared: &Arc<Shared>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if shared
        .ticking
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    // Built outside the task, so that it is dropped (and says so) even if the task never runs.
    let alive = Alive(Arc::downgrade(shared));
    runtime.spawn(async move {
        let alive = alive;
        loop {
            let next = {
                let Some(shared) = alive.0.upgrade() else {
                    return;
                };
                let epoch = shared.window.observe(Instant::now());
                shared.window.next_boundary(epoch)
            };
            sleep_until(next).await;
        }
    });
}

/// Marks the ticker as gone when its task ends or is dropped.
struct Alive(Weak<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.ticking.store(false, Ordering::Release);
            // Let the next call start a new ticker at once, on whatever runtime it runs.
            shared.ticker_tried.store(0, Ordering::Relaxed);
        }
    }
}
