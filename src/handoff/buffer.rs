//! The bounded queue between the senders and the worker.
//!
//! Its interface is deliberately narrow (push the newest, take the oldest, count), so that a
//! different store (bounded by bytes, parking records while the dependency is down, or spooled to
//! disk) can sit behind it without the senders or the worker changing.

#[cfg(not(tanker_loom))]
use crossbeam_queue::ArrayQueue;

/// A bounded multi-producer, single-consumer FIFO.
///
/// The doorbell's handshake (see `doorbell.rs`) relies on two properties of this queue: `push`
/// is a sequentially consistent read-modify-write, and `is_empty` reads with sequentially
/// consistent loads. crossbeam's `ArrayQueue` moves its tail with a `SeqCst` compare-and-swap and
/// reads head and tail with `SeqCst` loads; the loom build models the same with its own atomics.
pub(crate) struct Buffer<T> {
    #[cfg(not(tanker_loom))]
    ring: ArrayQueue<T>,
    #[cfg(tanker_loom)]
    ring: loom_ring::Ring<T>,
}

impl<T> Buffer<T> {
    /// A queue of `capacity` places, all allocated now. `capacity` is at least 1 and has been
    /// checked by the builder.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            #[cfg(not(tanker_loom))]
            ring: ArrayQueue::new(capacity),
            #[cfg(tanker_loom)]
            ring: loom_ring::Ring::new(capacity),
        }
    }

    /// Appends `item` as the newest, or gives it back if the queue is full.
    #[inline]
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        self.ring.push(item)
    }

    /// Takes the oldest item.
    #[inline]
    pub(crate) fn take(&self) -> Option<T> {
        self.ring.pop()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.ring.is_full()
    }

    /// Items in the queue (a snapshot).
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.ring.capacity()
    }
}

/// A model of the ring for loom: a lock for the items, and their count in an atomic that is
/// changed by a `SeqCst` read-modify-write and read with `SeqCst` loads, as the real ring's tail.
#[cfg(tanker_loom)]
mod loom_ring {
    use std::collections::VecDeque;

    use crate::sync::{AtomicUsize, Ordering};

    pub(super) struct Ring<T> {
        items: loom::sync::Mutex<VecDeque<T>>,
        len: AtomicUsize,
        capacity: usize,
    }

    impl<T> Ring<T> {
        pub(super) fn new(capacity: usize) -> Self {
            Self {
                items: loom::sync::Mutex::new(VecDeque::new()),
                len: AtomicUsize::new(0),
                capacity,
            }
        }

        pub(super) fn push(&self, item: T) -> Result<(), T> {
            let mut items = self.items.lock().unwrap();
            if items.len() == self.capacity {
                return Err(item);
            }
            items.push_back(item);
            self.len.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        pub(super) fn pop(&self) -> Option<T> {
            let mut items = self.items.lock().unwrap();
            let item = items.pop_front()?;
            self.len.fetch_sub(1, Ordering::SeqCst);
            Some(item)
        }

        pub(super) fn is_empty(&self) -> bool {
            self.len.load(Ordering::SeqCst) == 0
        }

        pub(super) fn is_full(&self) -> bool {
            self.len.load(Ordering::SeqCst) == self.capacity
        }

        pub(super) fn len(&self) -> usize {
            self.len.load(Ordering::SeqCst)
        }

        pub(super) fn capacity(&self) -> usize {
            self.capacity
        }
    }
}
