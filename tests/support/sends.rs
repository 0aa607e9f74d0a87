//! How long `Handoff::send` takes, told apart from how busy the machine is.
//!
//! A send is a few atomic operations, but on a busy machine the scheduler sometimes preempts the
//! test thread in the middle of one, and the time measured is then the other threads'. The
//! thread's context-switch counters (`/proc/thread-self/status`) tell the cases apart for a send
//! over the bound: preempted (an involuntary switch: left out of the figures, counted), or
//! blocked (a voluntary switch: the thread gave up the CPU itself, for a lock, a wait or a
//! sleep, which a send must never do).

// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::fmt;
use std::time::{Duration, Instant};

/// The sends timed so far.
pub(crate) struct SendTimes {
    /// What a send should take at most.
    bound: Duration,
    /// Every send's duration, preempted sends left out.
    took: Vec<Duration>,
    /// The longest send, preempted sends left out.
    pub(crate) longest: Duration,
    /// Sends over the bound during which the thread was preempted.
    pub(crate) preempted: u64,
    /// The longest of those.
    pub(crate) longest_preempted: Duration,
    /// Sends over the bound during which the thread gave up the CPU itself.
    pub(crate) blocked: u64,
}

impl SendTimes {
    /// No sends yet; a send should take less than `bound`.
    pub(crate) fn new(bound: Duration) -> Self {
        Self {
            bound,
            took: Vec::new(),
            longest: Duration::ZERO,
            preempted: 0,
            longest_preempted: Duration::ZERO,
            blocked: 0,
        }
    }

    /// Runs `send` and times it.
    pub(crate) fn time<T>(&mut self, send: impl FnOnce() -> T) -> T {
        let before = context_switches();
        let started = Instant::now();
        let sent = send();
        let took = started.elapsed();
        self.count(took, before);
        sent
    }

    fn count(&mut self, took: Duration, before: Option<Switches>) {
        if took >= self.bound {
            if let (Some(before), Some(after)) = (before, context_switches()) {
                if after.voluntary != before.voluntary {
                    self.blocked += 1;
                } else if after.involuntary != before.involuntary {
                    self.preempted += 1;
                    self.longest_preempted = self.longest_preempted.max(took);
                    return;
                }
            }
        }
        self.longest = self.longest.max(took);
        self.took.push(took);
    }

    /// How many sends were timed, preempted ones included.
    pub(crate) fn len(&self) -> usize {
        self.took.len() + self.preempted as usize
    }

    /// The `q`-quantile of the sends' durations, preempted sends left out.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        let mut took = self.took.clone();
        took.sort_unstable();
        let at = ((took.len() as f64 - 1.0) * q).round() as usize;
        took.get(at).copied().unwrap_or_default()
    }
}

impl fmt::Debug for SendTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendTimes")
            .field("sends", &self.len())
            .field("p50", &self.quantile(0.5))
            .field("p99_9", &self.quantile(0.999))
            .field("longest", &self.longest)
            .field("bound", &self.bound)
            .field("preempted", &self.preempted)
            .field("longest_preempted", &self.longest_preempted)
            .field("blocked", &self.blocked)
            .finish()
    }
}

/// A thread's context switches so far.
#[derive(Debug, Clone, Copy)]
struct Switches {
    voluntary: u64,
    involuntary: u64,
}

/// The calling thread's context switches, from `/proc/thread-self/status` (`None` where there is
/// no such file: every slow send then counts against the bound).
fn context_switches() -> Option<Switches> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))?
            .trim()
            .parse()
            .ok()
    };
    Some(Switches {
        voluntary: field("voluntary_ctxt_switches:")?,
        involuntary: field("nonvoluntary_ctxt_switches:")?,
    })
}
