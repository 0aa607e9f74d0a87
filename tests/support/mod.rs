//! Helpers shared by the integration tests.

pub(crate) mod breaker;
pub(crate) mod capture;

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
