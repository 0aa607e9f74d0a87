//! The atomics of tanker's lock-free protocols, swapped for loom's when model checking.
//!
//! Every atomic that takes part in a decision (the bulkhead's slots, the breaker's state word and
//! window, the hand-off's counters) comes from here, so that `scripts/loom.sh` can build the
//! library with `--cfg tanker_loom` and explore every interleaving of those protocols with
//! [loom](https://docs.rs/loom). A custom cfg name keeps `--cfg loom` from reaching tokio, which
//! reads that name for its own model tests.

#[cfg(not(tanker_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(tanker_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
