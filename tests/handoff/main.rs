//! Integration tests for the hand-off: `send` never blocks, every record is counted exactly once
//! whatever the stack does, bounded concurrency, the `Service` impl, `close`, broken services,
//! the early wake-up, configuration, and a multi-threaded stress test.
//!
//! Time is paused tokio time (except in `threads`); nothing here sleeps. One module per topic;
//! the helpers (fake dependencies whose fate each request names, settling, the accounting
//! checks) are in `tests/support/handoff.rs`. The hand-off under faults
//! (`tests/handoff_faults.rs`) and its parking (`tests/handoff_parking.rs`) stay binaries of
//! their own.

#[path = "../support/mod.rs"]
mod support;

mod accounting;
mod broken;
mod close;
mod concurrency;
mod config;
mod drop;
mod send;
mod service;
mod threads;
mod types;
mod wakeup;
