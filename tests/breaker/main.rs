//! Integration tests for the circuit breaker: tripping, rejecting, cooling down, probing,
//! classifying, the handle, shared state, logging and configuration; legal but unusual use
//! (`exact`) and unusual runtimes (`runtimes`).
//!
//! Time is paused tokio time driven by `time::advance` (except in `runtimes`, which builds its
//! own runtimes); nothing here sleeps. The inner service is tower-test's mock where a test needs
//! to see or hold individual requests, and an echo service (the request is the outcome) where a
//! test only needs many calls.
//!
//! One module per topic; the helpers are in `tests/support/breaker.rs`. The property test against
//! a reference model (`tests/breaker_model.rs`) and the multi-threaded stress tests
//! (`tests/breaker_stress.rs`) stay binaries of their own, so that their run time and threads do
//! not mix with these.

#[path = "../support/mod.rs"]
mod support;

mod classify;
mod closed;
mod config;
mod contract;
mod exact;
mod half_open;
mod handle;
mod logs;
mod open;
mod runtimes;
mod window;
