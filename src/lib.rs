//! Bulkheads and circuit breakers for tower services.
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod breaker;
mod builder;
pub mod bulkhead;
mod error;

pub use crate::builder::ServiceBuilderExt;
pub use crate::error::ConfigError;
