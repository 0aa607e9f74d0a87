//! Integration tests for the circuit breaker: tripping, rejecting, cooling down, probing,
//! classifying, the handle, shared state, logging and configuration.
//!
//! Time is always paused tokio time driven by `time::advance`; nothing here sleeps. The inner
//! service is tower-test's mock where a test needs to see or hold individual requests, and an
//! echo service (the request is the outcome) where a test only needs many calls.
//!
//! One module per topic; the helpers are in `tests/support/breaker.rs`.

#[path = "../support/mod.rs"]
mod support;

mod classify;
mod closed;
mod config;
mod contract;
mod half_open;
mod handle;
mod logs;
mod open;
mod window;
