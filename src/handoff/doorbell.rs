//! How senders wake an idle worker without paying for it when the worker is awake.
//!
//! The worker is in one of three states, kept in one atomic word:
//!
//! - `AWAKE`: running after a ring or a park, or waiting for something other than new records
//!   (a call to finish, the service to become ready). A sender rings nothing: one load is its
//!   whole cost. A worker that ticks runs its turns in `TICKING` (see `Doorbell::running`).
//! - `TICKING`: idle, looking at the queue on its own tick (fast after traffic, slow after a
//!   quiet spell). A sender rings only when the queue is half full, so that a burst is not left
//!   waiting a tick.
//! - `PARKED`: idle with no timer at all (a runtime without the time driver). The first sender
//!   to find it parked rings.
//!
//! The handshake that loses no wake-up (Dekker's pattern):
//!
//! - the worker stores `PARKED`, then checks again whether there is work, and sleeps only if
//!   there is none;
//! - a sender changes what the worker checks (pushes a record, or takes back a reservation),
//!   then loads the state, and rings if it is `PARKED`.
//!
//! Every one of those accesses is sequentially consistent, so in their single total order either
//! the worker's check comes after the sender's change (it sees the work) or the sender's load
//! comes after the worker's store (it sees `PARKED` and rings). The ring itself is a tokio
//! `Notify` permit, which is kept if the worker has not started waiting yet.
//!
//! `loom_tests` checks the handshake with the real state word and loom's `Notify` in place of
//! tokio's (which loom cannot see).

use crate::sync::{AtomicU32, Ordering};

/// Every change of the state is a read-modify-write, so that the changes are totally ordered (a
/// sender's `swap` in `ring` and the worker's `park` cannot be reordered against each other);
/// only the senders' fast path reads it with a plain load.
///
/// Where the hand-off relies on the single total order of `SeqCst` accesses (the doorbell's
/// handshake; a sender's reservation against `close`), this marks the point between the two
/// accesses of one side. In a normal build it is nothing: `SeqCst` accesses alone give that
/// order (C++20 [atomics.order]), and a sender pays no fence. loom treats `SeqCst` accesses as
/// `AcqRel` (tokio-rs/loom#180) and would report wake-ups lost that cannot be; in the model it
/// is a `SeqCst` fence, which loom does model, and which is no stronger than what the accesses
/// give here.
#[inline(always)]
pub(crate) fn seq_cst_point() {
    #[cfg(tanker_loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

const AWAKE: u32 = 0;
const TICKING: u32 = 1;
const PARKED: u32 = 2;

pub(crate) struct Doorbell {
    state: AtomicU32,
    bell: std::sync::Arc<tokio::sync::Notify>,
    /// The bell of the loom models, which cannot see tokio's.
    #[cfg(tanker_loom)]
    model_bell: loom::sync::Notify,
}

impl Doorbell {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU32::new(AWAKE),
            bell: std::sync::Arc::new(tokio::sync::Notify::new()),
            #[cfg(tanker_loom)]
            model_bell: loom::sync::Notify::new(),
        }
    }

    /// Called by a sender after it changed what the worker looks at. `half_full` is asked only
    /// while the worker ticks.
    #[inline]
    pub(crate) fn after_push(&self, half_full: impl FnOnce() -> bool) {
        seq_cst_point();
        match self.state.load(Ordering::SeqCst) {
            AWAKE => {}
            PARKED => self.ring(),
            _ => {
                if half_full() {
                    self.ring();
                }
            }
        }
    }

    /// Wakes the worker whatever its state (close, the last handle dropped).
    #[cold]
    pub(crate) fn ring(&self) {
        if self.state.swap(AWAKE, Ordering::SeqCst) != AWAKE {
            self.notify();
        }
    }

    /// Wakes the worker even if it looks awake: it may be about to check, and the permit it
    /// finds later costs it one more look at the queue.
    #[cold]
    pub(crate) fn ring_always(&self) {
        self.state.swap(AWAKE, Ordering::SeqCst);
        self.notify();
    }

    fn notify(&self) {
        #[cfg(not(tanker_loom))]
        self.bell.notify_one();
        #[cfg(tanker_loom)]
        self.model_bell.notify();
    }

    /// The worker runs a turn. A worker that was parked is awake, so that senders stop ringing.
    /// A ticking one stays ticking: senders then ask whether the queue is half full, as they do
    /// between its turns, which is cheaper than the worker writing the state twice a turn (each
    /// write would cost the next sender a cache miss on the line it reads at every push). So with
    /// timers, the state is written only when a half-full queue rings and when the worker goes
    /// back to ticking after that.
    #[inline]
    pub(crate) fn running(&self) {
        if self.state.load(Ordering::Relaxed) == PARKED {
            self.state.swap(AWAKE, Ordering::SeqCst);
        }
    }

    /// The worker found work after it announced it would park: senders need not ring. Writes
    /// only on a change.
    #[inline]
    pub(crate) fn awake(&self) {
        if self.state.load(Ordering::Relaxed) != AWAKE {
            self.state.swap(AWAKE, Ordering::SeqCst);
        }
    }

    /// The worker looks at the queue on its own tick.
    pub(crate) fn ticking(&self) {
        if self.state.load(Ordering::Relaxed) != TICKING {
            self.state.swap(TICKING, Ordering::SeqCst);
        }
    }

    /// The worker is about to sleep with no timer: first half of the handshake. It must check
    /// for work again after this, and go back to `awake` if it finds some.
    pub(crate) fn park(&self) {
        self.state.swap(PARKED, Ordering::SeqCst);
        seq_cst_point();
    }

    /// A future that completes when the bell rings (or rang since the last one completed).
    pub(crate) fn notified(&self) -> tokio::sync::futures::OwnedNotified {
        self.bell.clone().notified_owned()
    }

    /// Blocks the model's worker thread until the bell rings.
    #[cfg(all(test, tanker_loom))]
    pub(crate) fn wait(&self) {
        self.model_bell.wait();
    }
}

#[cfg(all(test, tanker_loom))]
mod loom_tests {
    use super::*;
    use crate::sync::AtomicUsize;
    use loom::sync::Arc;

    /// A sender pushes one record (a `SeqCst` add standing for the ring's tail) and rings if the
    /// worker is parked; the worker takes what it finds, parks, re-checks and sleeps. If a
    /// wake-up could be lost, the worker would sleep forever with a record queued and loom would
    /// report a deadlock.
    #[test]
    fn loom_a_push_always_wakes_a_parking_worker() {
        loom::model(|| {
            let bell = Arc::new(Doorbell::new());
            let queued = Arc::new(AtomicUsize::new(0));
            let senders: Vec<_> = (0..2)
                .map(|_| {
                    let (bell, queued) = (bell.clone(), queued.clone());
                    loom::thread::spawn(move || {
                        queued.fetch_add(1, Ordering::SeqCst);
                        bell.after_push(|| false);
                    })
                })
                .collect();
            let mut taken = 0;
            while taken < 2 {
                let now = queued.load(Ordering::SeqCst);
                if now > 0 {
                    queued.fetch_sub(now, Ordering::SeqCst);
                    taken += now;
                    bell.awake();
                    continue;
                }
                bell.park();
                if queued.load(Ordering::SeqCst) > 0 {
                    bell.awake();
                    continue;
                }
                bell.wait();
            }
            for sender in senders {
                sender.join().unwrap();
            }
        });
    }
}

#[cfg(all(test, not(tanker_loom)))]
mod tests {
    use super::*;

    /// A ticking worker's turns write nothing on the line senders read at every push; a worker
    /// that parked is awake as soon as it runs, so that senders stop ringing.
    #[test]
    fn a_turn_leaves_a_ticking_state_alone_and_wakes_a_parked_one() {
        let bell = Doorbell::new();
        bell.ticking();
        bell.running();
        assert_eq!(bell.state.load(Ordering::Relaxed), TICKING);
        bell.park();
        bell.running();
        assert_eq!(bell.state.load(Ordering::Relaxed), AWAKE);
    }
}
