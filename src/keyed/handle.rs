//! The public handles that read a keyed layer's table and each key's bulkhead and breaker.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use super::table::{KeyEntry, Table};
use crate::breaker::BreakerHandle;
use crate::bulkhead::BulkheadHandle;

/// Reads a keyed layer's table: its keys, each key's bulkhead and breaker, and the counts of
/// open, evicted and refused keys.
///
/// Obtained from [`KeyedLayer::handle`](super::KeyedLayer::handle) or
/// [`Keyed::handle`](super::Keyed::handle); cheap to clone. A key's breaker is controlled
/// through its [`BreakerHandle`] (force it open, reset it).
pub struct KeyedHandle<K, C> {
    table: Arc<Table<K, C>>,
}

impl<K, C> Clone for KeyedHandle<K, C> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
        }
    }
}

impl<K, C> KeyedHandle<K, C>
where
    K: Hash + Eq + Clone,
    C: Clone,
{
    pub(crate) fn new(table: Arc<Table<K, C>>) -> Self {
        Self { table }
    }

    /// The layer's name, as given to the builder (it labels its log events and metrics, and
    /// prefixes each key's bulkhead and breaker name).
    pub fn name(&self) -> &str {
        self.table.name()
    }

    /// The bulkhead and breaker of `key`, if the key is in the table.
    pub fn get(&self, key: &K) -> Option<KeyHandle<K>> {
        let snapshot = self.table.snapshot();
        snapshot.get(key).map(|entry| KeyHandle::new(key, entry))
    }

    /// Every key in the table, with its bulkhead and breaker, in no particular order.
    pub fn keys(&self) -> Vec<KeyHandle<K>> {
        self.table
            .snapshot()
            .entries()
            .map(|(key, entry)| KeyHandle::new(key, entry))
            .collect()
    }

    /// A snapshot of the table's counters.
    pub fn counts(&self) -> KeyedCounts {
        let table = &self.table;
        KeyedCounts {
            keys: table.snapshot().entries().count(),
            open_keys: table.open_keys(),
            evicted: table.evicted(),
            refused: table.refused(),
        }
    }

    /// Whether more keys are open than [`max_open`](super::KeyedBuilder::max_open) allows: the
    /// layer then treats the fault as one outage of the whole cluster.
    pub fn outage(&self) -> bool {
        self.table.outage()
    }

    /// The identity the layer as a whole gives its refusals: during a cluster-wide
    /// [`outage`](Self::outage), and for a new key refused by a full table. A key's own refusals
    /// name its breaker's or compartment's domain ([`KeyHandle::breaker`], [`KeyHandle::bulkhead`]).
    pub fn domain(&self) -> crate::Domain {
        self.table.domain
    }
}

impl<K, C> fmt::Debug for KeyedHandle<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedHandle")
            .field("table", &self.table)
            .finish()
    }
}

/// One key of a keyed layer: its label, its bulkhead and its breaker.
#[derive(Clone)]
pub struct KeyHandle<K> {
    key: K,
    label: Arc<str>,
    bulkhead: BulkheadHandle,
    breaker: BreakerHandle,
}

impl<K: Clone> KeyHandle<K> {
    fn new<C>(key: &K, entry: &KeyEntry<C>) -> Self {
        Self {
            key: key.clone(),
            label: entry.label().clone(),
            bulkhead: entry.bulkhead().clone(),
            breaker: entry.breaker().handle(),
        }
    }
}

impl<K> KeyHandle<K> {
    /// The key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The key's label (its `Display`, or the layer's label function).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The key's compartment: calls in flight, admitted, shed.
    pub fn bulkhead(&self) -> &BulkheadHandle {
        &self.bulkhead
    }

    /// The key's breaker: its state and counters, and its controls.
    pub fn breaker(&self) -> &BreakerHandle {
        &self.breaker
    }
}

impl<K: fmt::Debug> fmt::Debug for KeyHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHandle")
            .field("key", &self.key)
            .field("bulkhead", &self.bulkhead)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// A snapshot of a keyed layer's counters, from [`KeyedHandle::counts`].
///
/// Each counter is read on its own, one after the other, so under load they may be a few calls
/// apart. A key's own counters are its bulkhead's and breaker's
/// ([`KeyHandle::bulkhead`], [`KeyHandle::breaker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedCounts {
    /// How many keys the table holds.
    pub keys: usize,
    /// How many keys are counted open: keys whose breaker rejected a call or let a probe
    /// through, and has not let an ordinary call through since. Keys exempt from the cap
    /// ([`exempt_from_max_open`](super::KeyedBuilder::exempt_from_max_open)) never count.
    pub open_keys: usize,
    /// Idle keys evicted to make room for new ones since the layer was built.
    pub evicted: u64,
    /// Calls for a new key refused, since the layer was built, because the table held
    /// [`max_keys`](super::KeyedBuilder::max_keys) keys and none was idle.
    pub refused: u64,
}
