//! Integration tests for the bulkhead: one compartment per layer value, bounded in-flight calls,
//! immediate shedding, the optional waiting room, slot release, counters and configuration.
//!
//! Time is paused tokio time driven by `time::advance` (except in `concurrency`); nothing here
//! sleeps. The inner service is tower-test's mock. One module per topic; the helpers are in
//! `tests/support/bulkhead.rs`. The multi-threaded stress tests (`tests/bulkhead_stress.rs`) stay
//! a binary of their own.

#[path = "../support/mod.rs"]
mod support;

mod abandoned_waiters;
mod concurrency;
mod config;
mod contract;
mod counts;
mod extremes;
mod model;
mod panics;
mod readiness;
mod release;
mod sharing;
mod shedding;
mod waiting_room;
