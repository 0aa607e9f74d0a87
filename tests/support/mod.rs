//! Helpers shared by the integration tests.

pub(crate) mod breaker;
pub(crate) mod bulkhead;
pub(crate) mod capture;
pub(crate) mod handoff;
pub(crate) mod sends;

use std::error::Error as StdError;
use std::fmt;

/// The error a fake dependency returns when it fails.
#[derive(Debug)]
#[allow(dead_code)] // not every test binary has a fake dependency
pub(crate) struct DependencyDown;

impl fmt::Display for DependencyDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dependency down")
    }
}

impl StdError for DependencyDown {}

/// An error of another layer that keeps the error it wraps (a refusal, say) as its source.
#[derive(Debug)]
#[allow(dead_code)] // not every test binary wraps errors
pub(crate) struct Wrapped(pub(crate) Box<dyn StdError + Send + Sync>);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wrapped")
    }
}

impl StdError for Wrapped {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.0.as_ref())
    }
}
