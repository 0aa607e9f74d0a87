//! The optional waiting room: a bounded count of places, each held at most its maximum wait.
//!
//! # Design
//!
//! A caller that holds a place may stop being polled at any moment without dropping its handle
//! (its `ready()` future dropped by a timeout or a `select!`, the handle kept). Nothing runs for
//! such an abandoned waiter, so the room never depends on a waiter doing something:
//!
//! * **Wake-ups are broadcast** (`Notify::notify_waiters`), never handed to one waiter. A freed
//!   slot wakes every caller waiting at that moment and the first to run takes it; a waiter that
//!   is not polled cannot swallow a wake-up that was meant for the others, as a `notify_one`
//!   permit could. The cost, one wake per waiter per freed slot, is paid only while callers wait,
//!   and the room is bounded.
//! * **Places expire.** Every place holds a deadline, and the room keeps the latest deadline of
//!   its places (`claim_until`). Once it has passed, every place in the room is stale, and the
//!   next caller that needs a place opens a new *generation* of the room with itself as its only
//!   member. A stale waiter that is dropped or polled later leaves its own generation, which
//!   changes nothing. So an abandoned waiter holds its place no longer than its maximum wait.
//!
//! The count of places and the generation share one atomic word, so entering and leaving are
//! one compare-and-swap each and a decision never reads two counters.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::Origin;
use crate::sync::{AtomicU64, Ordering};

/// One place: the low 32 bits of the word count the places taken in the current generation.
const PLACE: u64 = 1;
/// The high 32 bits number the generation.
const GENERATION: u64 = 1 << 32;
const PLACES_MASK: u64 = GENERATION - 1;

/// The largest room the word can count.
pub(crate) const MAX_PLACES: usize = u32::MAX as usize;

/// The longest wait the room keeps track of; a longer one is clamped to it, as tokio clamps a
/// `sleep` (about 30 years, far beyond any process, and far within a `u64` of nanoseconds).
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(86_400 * 365 * 30);

pub(crate) struct WaitingRoom {
    /// Places taken and their generation.
    places: AtomicU64,
    capacity: u64,
    max_wait: Duration,
    /// The latest deadline of a place of the current generation, in nanoseconds after `origin`.
    claim_until: AtomicU64,
    origin: Origin,
    notify: Arc<Notify>,
}

/// A place taken in the room, as [`WaitingRoom::enter`] hands it out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    generation: u64,
    /// When this caller's maximum wait ends.
    deadline: Instant,
    /// Until when callers that came before may still claim a freed slot, if any were waiting.
    behind_until: Option<Instant>,
}

impl Place {
    /// When this caller's maximum wait ends.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Until when callers that came before may still claim a freed slot, if any were waiting
    /// when this caller came.
    pub(crate) fn behind_until(&self) -> Option<Instant> {
        self.behind_until
    }
}

impl WaitingRoom {
    /// A registration for the next broadcast of a freed slot, owned so that a waiting handle
    /// can keep it.
    pub(crate) fn notified(&self) -> OwnedNotified {
        self.notify.clone().notified_owned()
    }

    /// A room of `capacity` places (at most [`MAX_PLACES`]), each held at most `max_wait`
    /// (clamped to [`LONGEST_WAIT`]).
    pub(crate) fn new(capacity: usize, max_wait: Duration) -> Self {
        Self {
            places: AtomicU64::new(0),
            capacity: capacity.min(MAX_PLACES) as u64,
            max_wait: max_wait.min(LONGEST_WAIT),
            claim_until: AtomicU64::new(0),
            origin: Origin::now(),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Takes a place if there is one (a stale room counts as empty). Returns the place and the
    /// number of places now taken, or `None` when the room is full of callers still waiting.
    pub(crate) fn enter(&self) -> Option<(Place, u64)> {
        let now = Instant::now();
        let deadline = now + self.max_wait;
        let mut word = self.places.load(Ordering::SeqCst);
        loop {
            let taken = word & PLACES_MASK;
            let live = taken > 0 && !self.stale(now);
            let next = if !live {
                // Everybody here (if anybody) has waited past their deadline: a new generation.
                (word & !PLACES_MASK).wrapping_add(GENERATION) | PLACE
            } else if taken < self.capacity {
                word + PLACE
            } else {
                return None;
            };
            // The claim is raised before the place is taken, so that nobody sees the place
            // without its deadline and takes it for stale.
            let behind_until = live.then(|| self.claim_until());
            self.claim_until
                .fetch_max(self.origin.nanos(deadline), Ordering::SeqCst);
            match self
                .places
                .compare_exchange_weak(word, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    let place = Place {
                        generation: next >> 32,
                        deadline,
                        behind_until,
                    };
                    return Some((place, next & PLACES_MASK));
                }
                Err(now) => word = now,
            }
        }
    }

    /// Gives a place back. Returns the places still taken, or `None` if the place was stale and
    /// had been reclaimed by a new generation already.
    pub(crate) fn leave(&self, place: &Place) -> Option<u64> {
        let mut word = self.places.load(Ordering::SeqCst);
        loop {
            if word >> 32 != place.generation || word & PLACES_MASK == 0 {
                return None;
            }
            match self.places.compare_exchange_weak(
                word,
                word - PLACE,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some((word - PLACE) & PLACES_MASK),
                Err(now) => word = now,
            }
        }
    }

    /// Places taken, stale ones included (one load; for the release path).
    #[inline]
    pub(crate) fn occupied(&self) -> bool {
        self.places.load(Ordering::SeqCst) & PLACES_MASK > 0
    }

    /// Callers waiting whose maximum wait is not over. Reads the clock only if places are taken.
    pub(crate) fn waiting(&self) -> u64 {
        let taken = self.places.load(Ordering::SeqCst) & PLACES_MASK;
        if taken == 0 || self.stale(Instant::now()) {
            0
        } else {
            taken
        }
    }

    /// Whether callers wait whose claim on a freed slot still holds: a newcomer queues behind
    /// them rather than take the slot. Reads the clock only if places are taken.
    #[inline]
    pub(crate) fn has_waiters(&self) -> bool {
        self.occupied() && !self.stale(Instant::now())
    }

    /// Wakes every waiter: a slot is free.
    pub(crate) fn wake_all(&self) {
        self.notify.notify_waiters();
    }

    fn stale(&self, now: Instant) -> bool {
        self.origin.nanos(now) >= self.claim_until.load(Ordering::SeqCst)
    }

    fn claim_until(&self) -> Instant {
        self.origin.at(self.claim_until.load(Ordering::SeqCst))
    }
}
