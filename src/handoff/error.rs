//! Why a hand-off could not be spawned.

use std::error::Error as StdError;
use std::fmt;

use crate::ConfigError;

/// [`HandoffBuilder::spawn`](super::HandoffBuilder::spawn) refused to start a hand-off.
///
/// ```
/// use tanker::handoff::{Handoff, SpawnError};
/// use tower::{service_fn, BoxError};
///
/// let service = service_fn(|line: String| async move { Ok::<_, BoxError>(line.len()) });
/// // Not inside a tokio runtime: there is nowhere to run the worker.
/// let err = Handoff::builder().spawn(service).unwrap_err();
/// assert!(matches!(err, SpawnError::NoRuntime));
///
/// let service = service_fn(|line: String| async move { Ok::<_, BoxError>(line.len()) });
/// let err = Handoff::builder().capacity(0).spawn(service).unwrap_err();
/// assert_eq!(err.config().map(|e| e.setting()), Some("capacity"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpawnError {
    /// A setting is out of range; the error names it and says what to change.
    Config(ConfigError),
    /// `spawn` was called outside a tokio runtime, so there was nowhere to run the worker. Call
    /// it from within the runtime (an `async` function it runs, or after `Handle::enter`).
    NoRuntime,
}

impl SpawnError {
    /// The refused setting, if that was the reason.
    pub fn config(&self) -> Option<&ConfigError> {
        match self {
            Self::Config(err) => Some(err),
            Self::NoRuntime => None,
        }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(err) => fmt::Display::fmt(err, f),
            Self::NoRuntime => f.write_str(
                "a hand-off must be spawned inside a tokio runtime, which runs its worker; call \
                 `spawn` from async code or after `Handle::enter`",
            ),
        }
    }
}

impl StdError for SpawnError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Config(err) => Some(err),
            Self::NoRuntime => None,
        }
    }
}

impl From<ConfigError> for SpawnError {
    fn from(err: ConfigError) -> Self {
        Self::Config(err)
    }
}
