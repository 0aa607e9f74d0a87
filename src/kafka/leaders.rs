//! Which broker leads each partition of each topic the producer writes to, learnt from
//! librdkafka's statistics and published for the send path without a lock.
//!
//! The statistics callback builds a [`LeaderMap`] (per topic: the leader of each partition)
//! and publishes it only when it changed, under the next version. A topic whose leaders did not
//! change is shared by the two versions; one whose leaders moved keeps its count of records
//! without a key, so that their batches go on where they were. A service keeps the map it
//! last saw and checks, with one atomic load per call, that the version has not moved; a stale
//! service takes the current map under a sharded read lock (a reader locks only its own
//! thread's shard). This is the keyed layer's publication scheme, for a map that changes only
//! when a leader moves.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::sync::ShardedLock;
use rdkafka::statistics::Statistics;

use super::broker::{Broker, BrokerId, Brokers, Presence, NO_LEADER};
use crate::sync::{AtomicU64, Ordering};

/// One topic's partitions, by partition number: the leader's broker, or the stand-in for the
/// partitions without a leader ([`NO_LEADER`]).
pub(super) struct TopicLeaders {
    partitions: Box<[Arc<Broker>]>,
    /// Records without a key routed so far (from a random start), for the sticky choice of
    /// their partition.
    keyless: AtomicU64,
}

impl TopicLeaders {
    /// The partitions led by `partitions`, the first record without a key numbered `keyless`.
    pub(super) fn new(partitions: Vec<Arc<Broker>>, keyless: u64) -> Self {
        Self {
            partitions: partitions.into_boxed_slice(),
            keyless: AtomicU64::new(keyless),
        }
    }

    /// The number of partitions.
    #[inline]
    pub(super) fn count(&self) -> usize {
        self.partitions.len()
    }

    /// The leader of `partition` if the partition exists: a broker, or the stand-in for the
    /// partitions without a leader (see [`Broker::is_leader`]).
    #[inline]
    pub(super) fn leader(&self, partition: i32) -> Option<&Arc<Broker>> {
        let index = usize::try_from(partition).ok()?;
        self.partitions.get(index)
    }

    /// The next keyless record's number.
    #[inline]
    pub(super) fn next_keyless(&self) -> u64 {
        self.keyless.fetch_add(1, Ordering::Relaxed)
    }

    fn same_leaders(&self, leaders: &[Option<BrokerId>]) -> bool {
        self.partitions.len() == leaders.len()
            && self
                .partitions
                .iter()
                .zip(leaders)
                .all(|(have, new)| have.is_leader().then(|| have.id()) == *new)
    }
}

/// Where the records without a key of a topic seen for the first time start: a random batch,
/// so that producers started together do not all begin with partition 0.
fn random_start() -> u64 {
    // Kept well below `u64::MAX`, so that the count never wraps around mid-batch.
    RandomState::new().build_hasher().finish() >> 16
}

/// Every known topic's leaders, as one version of the table saw them; never changed once
/// published.
#[derive(Default)]
pub(super) struct LeaderMap {
    version: u64,
    /// Looked up for every record, hence foldhash rather than SipHash; no resistance to chosen
    /// collisions is needed, since the names are the producer's own topics.
    topics: HashMap<Box<str>, Arc<TopicLeaders>, foldhash::fast::RandomState>,
}

impl LeaderMap {
    /// The leaders of `topic`'s partitions, once librdkafka's statistics gave them.
    #[inline]
    pub(super) fn topic(&self, topic: &str) -> Option<&TopicLeaders> {
        self.topics.get(topic).map(|topic| &**topic)
    }
}

/// The leaders table of one producer, shared by its services and its statistics callback.
pub(super) struct Leaders {
    /// The version of the published map; read by every call.
    version: AtomicU64,
    current: ShardedLock<Arc<LeaderMap>>,
    brokers: Brokers,
    /// The stand-in leader of every partition without one: one compartment and breaker for
    /// them all, kept out of the brokers the statistics watch.
    no_leader: Arc<Broker>,
    /// How long a broker may hold records without delivering any before it counts as stalled.
    stall_after: Duration,
}

impl Leaders {
    pub(super) fn new(stall_after: Duration) -> Self {
        Self {
            version: AtomicU64::new(0),
            current: ShardedLock::new(Arc::default()),
            brokers: Brokers::default(),
            no_leader: Arc::new(Broker::new(NO_LEADER, Instant::now())),
            stall_after,
        }
    }

    /// The published map.
    pub(super) fn map(&self) -> Arc<LeaderMap> {
        // Publishing cannot panic half-way: a poisoned lock still holds a whole map.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether `map` is still the published one: one atomic load.
    #[inline]
    pub(super) fn is_current(&self, map: &LeaderMap) -> bool {
        self.version.load(Ordering::Acquire) == map.version
    }

    /// A delivery report of a record of `topic`'s `partition` came back with an answer of its
    /// leader's: counted as that broker's progress, for its stall watch.
    ///
    /// Runs for every delivery report: it reads the published map under its read lock (the
    /// polling thread's own shard), without taking a reference to it.
    pub(super) fn answered(&self, topic: &str, partition: i32) {
        let map = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(broker) = map.topic(topic).and_then(|t| t.leader(partition)) {
            broker.answered();
        }
    }

    /// One statistics report: watches each broker (stalls, reconnections) and publishes the
    /// topics' leaders if they changed.
    pub(super) fn update(&self, statistics: &Statistics, now: Instant) {
        // Bootstrap entries (`-1`) are not brokers of the cluster's metadata.
        let listed: Vec<(BrokerId, Presence)> = statistics
            .brokers
            .values()
            .filter(|broker| broker.nodeid >= 0)
            .map(|broker| {
                let presence = if broker.state == "UP" {
                    Presence::Up
                } else {
                    Presence::Listed
                };
                (broker.nodeid, presence)
            })
            .collect();
        for &(id, _) in &listed {
            self.brokers.get(id, now);
        }
        // A broker the report leaves out (librdkafka forgets a broker the metadata stops
        // listing, as when it goes down) is watched as absent: its records still stall.
        let brokers = self.brokers.all();
        let mut returned = false;
        let mut present = Vec::with_capacity(brokers.len());
        for broker in &brokers {
            let presence = listed
                .iter()
                .find(|&&(id, _)| id == broker.id())
                .map_or(Presence::Absent, |&(_, presence)| presence);
            if presence != Presence::Absent {
                present.push(broker);
            }
            let load = broker.load();
            let seen = broker.watch(now, presence, load, self.stall_after);
            returned |= seen.came_up;
            if seen.stalled {
                tracing::warn!(
                    broker = broker.id(),
                    in_flight = load.in_flight,
                    "kafka broker stalled: records in flight and none delivered for {:?}; \
                     records without a key go to other brokers",
                    self.stall_after
                );
            }
        }
        // A broker that comes back is probed at once. So is every other broker in the report:
        // librdkafka connects only to the brokers it has records for, and an open breaker sends
        // none, so after an outage of the whole cluster the first broker back is the only one
        // seen coming back. A probe of a broker still down costs one record, which fails and
        // gets its one more try in the hand-off.
        if returned {
            present.iter().for_each(|broker| broker.probe_now());
        }
        let topics: Vec<(&str, Vec<Option<BrokerId>>)> = statistics
            .topics
            .values()
            .map(|topic| (topic.topic.as_str(), leaders_of(topic)))
            .filter(|(_, leaders)| !leaders.is_empty())
            .collect();
        self.publish(&topics, now);
    }

    /// Publishes `topics` (name, leader of each partition) if they differ from the published
    /// map. Topics the report does not mention are kept.
    pub(super) fn publish(&self, topics: &[(&str, Vec<Option<BrokerId>>)], now: Instant) {
        let old = self.map();
        let changed = topics.iter().any(|(name, leaders)| {
            old.topic(name)
                .is_none_or(|known| !known.same_leaders(leaders))
        });
        if !changed {
            return;
        }
        let mut map = LeaderMap {
            version: old.version + 1,
            topics: HashMap::with_capacity_and_hasher(
                old.topics.len().max(topics.len()),
                Default::default(),
            ),
        };
        for (name, known) in &old.topics {
            map.topics.insert(name.clone(), known.clone());
        }
        for (name, leaders) in topics {
            let keyless = match old.topic(name) {
                Some(known) if known.same_leaders(leaders) => continue,
                Some(known) => {
                    tracing::debug!(topic = *name, ?leaders, "kafka partition leaders changed");
                    known.keyless.load(Ordering::Relaxed)
                }
                None => random_start(),
            };
            let partitions = leaders
                .iter()
                .map(|leader| match leader {
                    Some(id) => self.brokers.get(*id, now),
                    None => self.no_leader.clone(),
                })
                .collect();
            map.topics.insert(
                Box::from(*name),
                Arc::new(TopicLeaders::new(partitions, keyless)),
            );
        }
        let version = map.version;
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = Arc::new(map);
        self.version.store(version, Ordering::Release);
    }
}

/// The leader of each partition of `topic`, by partition number (`None` for a partition
/// without a leader); empty while librdkafka does not know the topic's partitions yet.
fn leaders_of(topic: &rdkafka::statistics::Topic) -> Vec<Option<BrokerId>> {
    // Partition -1 is librdkafka's queue of records not assigned to a partition yet.
    let count = topic
        .partitions
        .keys()
        .filter(|&&p| p >= 0)
        .map(|&p| p as usize + 1)
        .max()
        .unwrap_or(0);
    let mut leaders = vec![None; count];
    for partition in topic.partitions.values() {
        if let Ok(index) = usize::try_from(partition.partition) {
            if partition.leader >= 0 && !partition.unknown {
                leaders[index] = Some(partition.leader);
            }
        }
    }
    leaders
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Leaders {
        Leaders::new(Duration::from_millis(500))
    }

    fn ids(leaders: &TopicLeaders) -> Vec<Option<BrokerId>> {
        (0..leaders.count() as i32)
            .map(|p| leaders.leader(p).filter(|b| b.is_leader()).map(|b| b.id()))
            .collect()
    }

    #[test]
    fn a_topic_is_unknown_until_published() {
        let leaders = table();
        let map = leaders.map();
        assert!(map.topic("stats").is_none());
        leaders.publish(&[("stats", vec![Some(1), Some(2), None])], Instant::now());
        assert!(!leaders.is_current(&map), "the version moved");
        let map = leaders.map();
        assert!(leaders.is_current(&map));
        let stats = map.topic("stats").expect("published");
        assert_eq!(stats.count(), 3);
        assert_eq!(ids(stats), vec![Some(1), Some(2), None]);
        assert!(stats.leader(3).is_none() && stats.leader(-1).is_none());
    }

    #[test]
    fn the_same_leaders_are_not_published_again() {
        let leaders = table();
        let now = Instant::now();
        leaders.publish(&[("stats", vec![Some(1), Some(2)])], now);
        let map = leaders.map();
        leaders.publish(&[("stats", vec![Some(1), Some(2)])], now);
        assert!(
            leaders.is_current(&map),
            "nothing changed, nothing published"
        );
    }

    #[test]
    fn a_moved_leader_is_published_and_other_topics_kept() {
        let leaders = table();
        let now = Instant::now();
        leaders.publish(&[("a", vec![Some(1), Some(2)]), ("b", vec![Some(3)])], now);
        let before = leaders.map();
        leaders.publish(&[("a", vec![Some(1), Some(3)])], now);
        let after = leaders.map();
        assert!(!leaders.is_current(&before));
        assert_eq!(ids(after.topic("a").unwrap()), vec![Some(1), Some(3)]);
        assert_eq!(ids(after.topic("b").unwrap()), vec![Some(3)]);
        // The same broker is one `Broker`, whichever topic names it.
        let three_a = after.topic("a").unwrap().leader(1).unwrap();
        let three_b = after.topic("b").unwrap().leader(0).unwrap();
        assert!(Arc::ptr_eq(three_a, three_b));
    }

    #[test]
    fn partitions_without_a_leader_share_one_stand_in_outside_the_brokers() {
        let leaders = table();
        let now = Instant::now();
        leaders.publish(&[("a", vec![Some(1), None]), ("b", vec![None])], now);
        let map = leaders.map();
        let a = map.topic("a").unwrap().leader(1).expect("a stand-in");
        let b = map.topic("b").unwrap().leader(0).expect("a stand-in");
        assert_eq!(a.id(), NO_LEADER);
        assert!(!a.is_leader() && map.topic("a").unwrap().leader(0).unwrap().is_leader());
        assert!(
            Arc::ptr_eq(a, b),
            "one compartment for every leaderless partition"
        );
        assert!(
            leaders.brokers.all().iter().all(|b| b.is_leader()),
            "the statistics never watch the stand-in as a broker"
        );
        // It counts as "no leader" when the next report is compared.
        leaders.publish(&[("a", vec![Some(1), None])], now);
        assert!(leaders.is_current(&map));
    }

    #[test]
    fn a_delivery_is_counted_as_its_leaders_progress() {
        let leaders = table();
        let now = Instant::now();
        leaders.publish(&[("a", vec![Some(1), Some(2)])], now);
        let map = leaders.map();
        let [one, two] = [0, 1].map(|p| map.topic("a").unwrap().leader(p).unwrap().clone());
        leaders.answered("a", 1);
        leaders.answered("a", 1);
        leaders.answered("unknown", 0);
        leaders.answered("a", 7);
        assert_eq!((one.load().delivered, two.load().delivered), (0, 2));
        // Before its compartment is known: nothing in flight, answers counted all the same.
        assert_eq!(two.load().in_flight, 0);
    }

    #[test]
    fn a_moved_leader_keeps_the_topics_keyless_batches_going() {
        let leaders = table();
        let now = Instant::now();
        leaders.publish(&[("a", vec![Some(1), Some(2)]), ("b", vec![Some(3)])], now);
        let before = leaders.map();
        let taken: Vec<u64> = (0..100)
            .map(|_| before.topic("a").unwrap().next_keyless())
            .collect();
        leaders.publish(&[("a", vec![Some(1), Some(3)])], now);
        let after = leaders.map();
        assert_eq!(
            after.topic("a").unwrap().next_keyless(),
            taken[99] + 1,
            "the count goes on: the batch is not restarted at partition 0"
        );
        let unchanged = |map: &LeaderMap| map.topic("b").unwrap() as *const TopicLeaders;
        assert_eq!(
            unchanged(&before),
            unchanged(&after),
            "an unchanged topic is shared"
        );
    }

    #[test]
    fn a_new_topics_keyless_records_start_at_a_random_batch() {
        let starts: Vec<u64> = (0..4)
            .map(|_| {
                let leaders = table();
                leaders.publish(&[("a", vec![Some(1), Some(2), Some(3)])], Instant::now());
                leaders.map().topic("a").unwrap().next_keyless()
            })
            .collect();
        // Four equal draws of 48 random bits would be a one in 2^144 chance.
        assert!(starts.windows(2).any(|w| w[0] != w[1]), "{starts:?}");
        assert!(starts.iter().all(|&start| start < 1 << 48), "{starts:?}");
    }
}
