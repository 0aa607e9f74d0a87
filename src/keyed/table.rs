//! The key table shared by every service of one [`KeyedLayer`](super::KeyedLayer): one
//! compartment and one breaker per key, a bound on the keys, and the count of open keys.
//!
//! Calls on known keys never lock. The table publishes an immutable [`Snapshot`] of its map,
//! numbered by a version; a service keeps the snapshot it last saw and checks, with one atomic
//! load per call, that the version has not moved. A service whose snapshot is stale (and a
//! clone made from one: axum clones the service it was given, which is never called itself)
//! takes the current one under a sharded read lock (crossbeam's `ShardedLock`: a reader locks
//! only its own thread's shard, so readers on different cores do not contend). Only a new key
//! (or an eviction) takes the writers' lock: it copies the map, adds the key, and publishes the
//! copy under the next version. Copying costs a walk of the map, which the bound on keys keeps
//! small, and happens once per new key.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_utils::sync::ShardedLock;
use std::time::Duration;

use super::ejection::{Ejection, OpenKeys};
use crate::breaker::{BreakerBuilder, BreakerLayer, BreakerState};
use crate::bulkhead::{BulkheadBuilder, BulkheadHandle};
use crate::metrics as names;
use crate::sync::{AtomicBool, AtomicU64, Ordering};
use crate::telemetry::{Counter, Gauge, Labels};
use crate::{ConfigError, Domain};

/// How a key's label is made from the key.
pub(crate) type LabelFn<K> = Box<dyn Fn(&K) -> String + Send + Sync>;

/// Whether a key is left out of the open count (see
/// [`KeyedBuilder::exempt_from_max_open`](super::KeyedBuilder::exempt_from_max_open)).
pub(crate) type ExemptFn<K> = Box<dyn Fn(&K) -> bool + Send + Sync>;

/// `retry_after` unknown (none seen yet), in [`Table::retry_after`].
const NO_RETRY: u64 = u64::MAX;

/// One key's compartment and breaker.
pub(crate) struct KeyEntry<C> {
    label: Arc<str>,
    breaker: BreakerLayer<C>,
    bulkhead: BulkheadHandle,
    /// Set by calls, cleared by the eviction hand as it passes (the CLOCK approximation of
    /// least recently used): a call pays one load, and a store only when the bit was clear.
    touched: AtomicBool,
    /// Whether the key is counted among the open keys.
    ejection: Ejection,
    /// Whether the key never counts among the open keys.
    exempt: bool,
}

impl<C> KeyEntry<C> {
    /// The key's label, as the layer's label function made it.
    pub(crate) fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The key's breaker, as a layer: its engine and classifier.
    pub(crate) fn breaker(&self) -> &BreakerLayer<C> {
        &self.breaker
    }

    /// The key's compartment.
    pub(crate) fn bulkhead(&self) -> &BulkheadHandle {
        &self.bulkhead
    }

    /// Marks the key as used, for the eviction hand.
    #[inline]
    pub(crate) fn touch(&self) {
        if !self.touched.load(Ordering::Relaxed) {
            self.touched.store(true, Ordering::Relaxed);
        }
    }

    /// Whether this key is counted among the open keys (one load, for the closed path).
    #[inline]
    pub(crate) fn counted_open(&self) -> bool {
        self.ejection.is_open()
    }

    /// Whether nothing holds the key: no call in flight (a probe is a call in the key's
    /// compartment too) and a closed breaker.
    fn idle(&self) -> bool {
        self.bulkhead.compartment().in_flight() == 0
            && self.breaker.handle().state() == BreakerState::Closed
    }
}

/// A version's map of keys to their entries.
///
/// Hashed with foldhash, seeded at random per table, rather than the standard library's
/// SipHash: a lookup is on every call's path, and SipHash alone cost a keyed call more than
/// everything else the layer adds (`cargo bench --bench overhead -- keyed`). foldhash does not
/// claim to resist a client that learns its seed (by timing requests) and then sends keys that
/// collide. What bounds the harm is the table: at most `max_keys` keys, so a lookup walks at most
/// that many, and adding a key costs one pass over them (the eviction hand looks nothing up).
/// Keys that come from untrusted requests are best bounded before they reach the layer (a
/// known host, a tenant that exists).
type Entries<K, C> = HashMap<K, Arc<KeyEntry<C>>, foldhash::quality::RandomState>;

/// The map as one version of the table saw it; never changed once published.
pub(crate) struct Snapshot<K, C> {
    version: u64,
    entries: Entries<K, C>,
}

impl<K: Hash + Eq, C> Snapshot<K, C> {
    /// The entry of `key`, if the key was in the table at this version.
    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<&Arc<KeyEntry<C>>> {
        self.entries.get(key)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&K, &Arc<KeyEntry<C>>)> {
        self.entries.iter()
    }
}

/// What the lock guards: the published snapshot, and the order the eviction hand walks.
struct Keys<K, C> {
    snapshot: Arc<Snapshot<K, C>>,
    /// Every key with its entry, so that the hand's walk looks nothing up: a pick costs one pass
    /// over the keys, whatever their hashes.
    order: Vec<(K, Arc<KeyEntry<C>>)>,
    hand: usize,
}

/// The settings a keyed layer was built with.
pub(crate) struct Settings<K, C> {
    pub(crate) name: Arc<str>,
    pub(crate) label: LabelFn<K>,
    pub(crate) bulkhead: BulkheadBuilder,
    pub(crate) breaker: BreakerBuilder<C>,
    pub(crate) max_keys: usize,
    pub(crate) max_open: Option<usize>,
    pub(crate) exempt: Option<ExemptFn<K>>,
}

/// The table's metric handles (empty without the `metrics` feature).
struct TableMetrics {
    keys: Gauge,
    open: Gauge,
    outage: Gauge,
    evicted: Counter,
    refused: Counter,
}

impl TableMetrics {
    fn new(name: &str) -> Self {
        let labels = Labels::new("keyed", name);
        Self {
            keys: labels.gauge(names::KEYED_KEYS, "keys in a keyed layer's table"),
            open: labels.gauge(
                names::KEYED_OPEN,
                "keys of a keyed layer with an open breaker",
            ),
            outage: labels.gauge(
                names::KEYED_OUTAGE,
                "1 while more keys are open than a keyed layer's cap",
            ),
            evicted: labels.counter(names::KEYED_EVICTED, "idle keys a keyed layer evicted"),
            refused: labels.counter(
                names::KEYED_REFUSED,
                "calls for a new key refused because a keyed layer's table was full of busy keys",
            ),
        }
    }
}

/// The state shared by every service, clone and handle of one keyed layer.
pub(crate) struct Table<K, C> {
    settings: Settings<K, C>,
    /// The version of the published snapshot; read by every call.
    version: AtomicU64,
    /// The published snapshot, for services whose own is stale.
    current: ShardedLock<Arc<Snapshot<K, C>>>,
    keys: Mutex<Keys<K, C>>,
    /// Keys counted open.
    open: OpenKeys,
    /// The last `retry_after` an open key gave, in nanoseconds, for refusals during an outage.
    retry_after: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
    metrics: TableMetrics,
    /// Named in the refusals of the layer as a whole: a cluster-wide outage, a full table.
    pub(crate) domain: Domain,
}

impl<K, C> Table<K, C>
where
    K: Hash + Eq + Clone,
    C: Clone,
{
    pub(crate) fn new(settings: Settings<K, C>) -> Self {
        let empty = Arc::new(Snapshot {
            version: 0,
            entries: Entries::default(),
        });
        Self {
            metrics: TableMetrics::new(&settings.name),
            settings,
            version: AtomicU64::new(0),
            current: ShardedLock::new(empty.clone()),
            keys: Mutex::new(Keys {
                snapshot: empty,
                order: Vec::new(),
                hand: 0,
            }),
            open: OpenKeys::new(),
            retry_after: AtomicU64::new(NO_RETRY),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            domain: Domain::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Keys<K, C>> {
        // Every change under the lock is complete before the guard drops: keep going after a
        // panic elsewhere.
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn name(&self) -> &str {
        &self.settings.name
    }

    /// The published snapshot, under this thread's shard of the read lock.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot<K, C>> {
        // Publishing cannot panic half-way: a poisoned lock still holds a whole snapshot.
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        current.clone()
    }

    /// `snapshot` if it is still the published one, or the published one.
    #[inline]
    pub(crate) fn fresh(&self, snapshot: &Arc<Snapshot<K, C>>) -> Arc<Snapshot<K, C>> {
        if self.is_current(snapshot) {
            return snapshot.clone();
        }
        self.snapshot()
    }

    /// Whether `snapshot` is still the published one: one atomic load.
    #[inline]
    pub(crate) fn is_current(&self, snapshot: &Snapshot<K, C>) -> bool {
        self.version.load(Ordering::Acquire) == snapshot.version
    }

    /// The entry of `key`, added if it is new. Returns `None` when the table holds
    /// `max_keys` keys and none of them is idle.
    #[cold]
    pub(crate) fn insert(&self, key: &K) -> Option<Arc<KeyEntry<C>>> {
        let mut keys = self.lock();
        if let Some(entry) = keys.snapshot.get(key) {
            return Some(entry.clone());
        }
        // Find the victim before copying anything: a refusal costs a walk, not a copy.
        let victim = if keys.snapshot.entries.len() >= self.settings.max_keys {
            match self.victim(&mut keys) {
                Some(victim) => Some(victim),
                None => {
                    drop(keys);
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    self.metrics.refused.increment();
                    tracing::debug!(keyed = %self.settings.name, "key table full of busy keys: call refused");
                    return None;
                }
            }
        } else {
            None
        };
        let entry = Arc::new(self.build_entry(key)?);
        let mut entries = keys.snapshot.entries.clone();
        if let Some(victim) = victim {
            let (evicted, _) = keys.order.swap_remove(victim);
            if let Some(entry) = entries.remove(&evicted) {
                tracing::debug!(keyed = %self.settings.name, key = %entry.label, "idle key evicted");
            }
            self.evicted.fetch_add(1, Ordering::Relaxed);
            self.metrics.evicted.increment();
        }
        entries.insert(key.clone(), entry.clone());
        keys.order.push((key.clone(), entry.clone()));
        self.publish(&mut keys, entries);
        Some(entry)
    }

    fn build_entry(&self, key: &K) -> Option<KeyEntry<C>> {
        let settings = &self.settings;
        let label: Arc<str> = Arc::from((settings.label)(key));
        let name: Arc<str> = Arc::from(format!("{}/{}", settings.name, label));
        // Both templates were built once by the layer's builder: only the name differs here.
        let breaker = settings.breaker.clone().name(name.clone()).build().ok()?;
        let bulkhead = settings.bulkhead.clone().name(name).build().ok()?.handle();
        Some(KeyEntry {
            label,
            breaker,
            bulkhead,
            touched: AtomicBool::new(true),
            ejection: Ejection::new(),
            exempt: settings.exempt.as_ref().is_some_and(|exempt| exempt(key)),
        })
    }

    fn publish(&self, keys: &mut Keys<K, C>, entries: Entries<K, C>) {
        let version = keys.snapshot.version + 1;
        self.metrics.keys.set(entries.len() as u64);
        keys.snapshot = Arc::new(Snapshot { version, entries });
        // The snapshot is in place before its version is: a reader that sees the new version
        // finds the new snapshot.
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = keys.snapshot.clone();
        self.version.store(version, Ordering::Release);
    }

    /// Picks an idle key to evict (its place in `order`), the least recently used as far as
    /// the CLOCK hand can tell: the hand walks the keys once around, in the order they came,
    /// clearing the mark of each key used since it last passed, and stops at the first idle
    /// key without a mark. If every idle key had a mark, the first of them is taken. Returns
    /// `None` if no key is idle. The key taken leaves the open count for good.
    fn victim(&self, keys: &mut Keys<K, C>) -> Option<usize> {
        let mut marked = None;
        for _ in 0..keys.order.len() {
            if keys.hand >= keys.order.len() {
                keys.hand = 0;
            }
            let at = keys.hand;
            keys.hand += 1;
            let entry = &keys.order[at].1;
            let unmarked = !entry.touched.swap(false, Ordering::Relaxed);
            if !entry.idle() {
                continue;
            }
            if unmarked && self.retire(entry) {
                return Some(at);
            }
            marked = marked.or(Some(at));
        }
        let at = marked?;
        self.retire(&keys.order[at].1).then_some(at)
    }

    /// Takes an idle key out of the open count for good, before its eviction. A key still
    /// counted open was closed by its last probe and has had no call since: it leaves the
    /// count first. Fails if a call counted it open again meanwhile.
    fn retire(&self, entry: &KeyEntry<C>) -> bool {
        if entry.counted_open() {
            self.mark_closed(entry);
        }
        self.open.retire(&entry.ejection)
    }

    /// Counts the key's breaker as open (it rejected a call, or let a probe through), and
    /// remembers its `retry_after` for refusals during an outage.
    #[cold]
    pub(crate) fn mark_open(&self, entry: &KeyEntry<C>, retry_after: Option<Duration>) {
        // An exempt key is no part of an outage: neither its count nor its wait.
        if entry.exempt {
            return;
        }
        if let Some(after) = retry_after {
            let nanos = u64::try_from(after.as_nanos()).unwrap_or(NO_RETRY - 1);
            self.retry_after.store(nanos, Ordering::Relaxed);
        }
        let Some(open) = self.open.open(&entry.ejection) else {
            return;
        };
        self.metrics.open.set(open as u64);
        if self.settings.max_open.is_some_and(|max| open == max + 1) {
            self.metrics.outage.set(1);
            tracing::warn!(
                keyed = %self.settings.name,
                open,
                key = %entry.label,
                "more keys open than the cap: cluster-wide outage, every key refused until one heals"
            );
        }
    }

    /// Stops counting the key's breaker as open: it let an ordinary call through.
    #[cold]
    pub(crate) fn mark_closed(&self, entry: &KeyEntry<C>) {
        let Some(open) = self.open.close(&entry.ejection) else {
            return;
        };
        self.metrics.open.set(open as u64);
        if self.settings.max_open.is_some_and(|max| open == max) {
            self.metrics.outage.set(0);
            tracing::info!(keyed = %self.settings.name, open, key = %entry.label, "cluster-wide outage over");
        }
    }

    /// Whether more keys are open than the cap allows: one load of a word written only when a
    /// key opens or closes.
    #[inline]
    pub(crate) fn outage(&self) -> bool {
        match self.settings.max_open {
            Some(max) => self.open.get() > max,
            None => false,
        }
    }

    /// The wait a refusal during an outage advertises: the last one an open key gave.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self.retry_after.load(Ordering::Relaxed) {
            NO_RETRY => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    pub(crate) fn open_keys(&self) -> usize {
        self.open.get()
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Checks the templates once, so that building a key's entry later cannot fail.
pub(crate) fn check_templates<C>(
    bulkhead: &BulkheadBuilder,
    breaker: &BreakerBuilder<C>,
) -> Result<(), ConfigError>
where
    C: Clone,
{
    let compartment = bulkhead.clone().build()?;
    if compartment.handle().compartment().room().is_some() {
        return Err(ConfigError::new(
            "bulkhead",
            "a keyed compartment cannot have a waiting room (the key is known only in `call`, \
             and a caller may not wait there): call `no_waiting_room()` on the template",
        ));
    }
    breaker.clone().build()?;
    Ok(())
}

impl<K, C> fmt::Debug for Table<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.settings.name)
            .field("max_keys", &self.settings.max_keys)
            .field("max_open", &self.settings.max_open)
            .field("open", &self.open.get())
            .finish()
    }
}
