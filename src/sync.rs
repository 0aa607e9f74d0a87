//! The atomics of tanker's lock-free protocols, swapped for loom's when model checking.
//!
//! Every atomic that takes part in a decision (the bulkhead's slots, the breaker's state word and
//! window, the hand-off's counters, the worker's wake marks) comes from here, with the
//! `AtomicWaker` of the wake marks, so that `scripts/loom.sh` can build the
//! library with `--cfg tanker_loom` and explore every interleaving of those protocols with
//! [loom](https://docs.rs/loom). A custom cfg name keeps `--cfg loom` from reaching tokio, which
//! reads that name for its own model tests.

#[cfg(not(tanker_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(tanker_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// The waker of a task woken from other threads: `futures_util`'s `AtomicWaker`, or, when model
/// checking, loom's (whose `register` takes the waker by value).
#[cfg(not(tanker_loom))]
pub(crate) use futures_util::task::AtomicWaker;

#[cfg(tanker_loom)]
#[derive(Debug, Default)]
pub(crate) struct AtomicWaker(loom::future::AtomicWaker);

#[cfg(tanker_loom)]
impl AtomicWaker {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.0.register_by_ref(waker);
    }

    pub(crate) fn wake(&self) {
        self.0.wake();
    }
}
