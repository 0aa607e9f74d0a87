//! A call's claim on the breaker, from `call` to the end of its response future.

use std::sync::Arc;

use tokio::time::Instant;

use super::classify::Outcome;
use super::engine::Engine;
use super::word::Word;

/// What a ticket stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// An ordinary call admitted while closed, in the period of `word`.
    Call { word: Word },
    /// A probe's place, known by `id`, in the half-open period of `generation`; given back if
    /// the ticket is dropped before the call finishes.
    Probe { generation: u64, id: u64 },
    /// The outcome was recorded.
    Spent,
}

/// A call's claim on the breaker, with the start time of the call when slow calls are detected.
pub(crate) struct Ticket {
    engine: Arc<Engine>,
    claim: Claim,
    started: Option<Instant>,
}

impl Ticket {
    #[inline]
    pub(crate) fn call(engine: Arc<Engine>, word: Word) -> Self {
        Self {
            engine,
            claim: Claim::Call { word },
            started: None,
        }
    }

    pub(crate) fn probe(engine: Arc<Engine>, generation: u64, id: u64) -> Self {
        Self {
            engine,
            claim: Claim::Probe { generation, id },
            started: None,
        }
    }

    /// Marks the start of the call, when slow calls are detected.
    #[inline]
    pub(crate) fn start(&mut self) {
        if self.engine.times_calls() {
            self.started = Some(Instant::now());
        }
    }

    /// Records the call's outcome.
    #[inline]
    pub(crate) fn finish(mut self, outcome: Outcome) {
        match std::mem::replace(&mut self.claim, Claim::Spent) {
            Claim::Call { word } => self.engine.record(word, self.started, outcome),
            Claim::Probe { generation, id } => {
                self.engine
                    .finish_probe(generation, id, self.started, outcome)
            }
            Claim::Spent => {}
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Claim::Probe { generation, id } = self.claim {
            self.engine.abandon_probe(generation, id);
        }
    }
}
