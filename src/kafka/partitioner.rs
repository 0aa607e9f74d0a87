//! The partition of a record, chosen as librdkafka would, and the broker that leads it.
//!
//! - A record with an explicit partition keeps it.
//! - A record with a key gets librdkafka's default mapping (`consistent_random`): the CRC-32 of
//!   the key modulo the number of partitions, so consumers see the same partitions with or
//!   without tanker. It keeps its partition even when the leader is sick: its broker's
//!   compartment decides (a refusal parks it in the hand-off).
//! - A record whose partition has no leader (an election under way) goes through the
//!   compartment of the partitions without a leader (`NO_LEADER`), so that records waiting in
//!   librdkafka for a leader are bounded like any broker's.
//! - A record without a key, or with an empty key (`consistent_random` partitions empty and
//!   missing keys alike, at random), goes where the records before it went, in batches of
//!   [`STICKY_BATCH`] records per partition (as librdkafka's sticky partitioner batches them
//!   per linger), skipping partitions whose leader does not take records: stalled, full, or
//!   with an open breaker, or no leader at all. If no leader takes records, the batch's own
//!   partition is kept (or the next one with a leader) and its broker's compartment decides.
//!
//! Pure functions of the table and the record, tested on their own.

use std::sync::Arc;

use super::broker::{Broker, BrokerId};
use super::leaders::TopicLeaders;
use super::record::Record;

/// Records without a key sent to one partition before moving to the next: enough for
/// librdkafka to fill a batch at a few thousand records a second, few enough to spread load.
pub(super) const STICKY_BATCH: u64 = 64;

/// Where a record goes.
pub(super) enum Route<'a> {
    /// To `partition`, led by `broker`, through that broker's compartment.
    Leader {
        partition: i32,
        broker: &'a Arc<Broker>,
    },
    /// As librdkafka decides, without a compartment: the topic's partitions are not known yet,
    /// the partition does not exist (librdkafka fails the record as the caller's fault), or the
    /// producer's partitioner is not one tanker reproduces.
    Librdkafka,
}

/// Chooses the partition of `record` in `topic`. `by_key` says whether keys map as librdkafka's
/// default partitioner maps them (`consistent_random`); otherwise keyed records are left to
/// librdkafka. `takes` says whether a broker takes records without a key now; it is never
/// asked about `NO_LEADER`.
pub(super) fn route<'a>(
    topic: &'a TopicLeaders,
    record: &Record,
    by_key: bool,
    takes: impl Fn(&Broker) -> bool,
) -> Route<'a> {
    let count = topic.count();
    if count == 0 {
        return Route::Librdkafka;
    }
    let partition = match (record.partition_number(), record.key_bytes()) {
        (Some(partition), _) => partition,
        // `consistent_random` sends an empty key where it sends a missing one.
        (None, Some(key)) if by_key && key.is_empty() => keyless(topic, takes),
        (None, Some(key)) if by_key => consistent(key, count),
        (None, Some(_)) => return Route::Librdkafka,
        (None, None) => keyless(topic, takes),
    };
    match topic.leader(partition) {
        Some(broker) => Route::Leader { partition, broker },
        None => Route::Librdkafka,
    }
}

/// librdkafka's `consistent` partitioner: `rd_crc32(key) % partition_cnt`.
pub(super) fn consistent(key: &[u8], partitions: usize) -> i32 {
    // A topic has at most i32::MAX partitions; the remainder is below their count.
    (crc32(key) % partitions as u32) as i32
}

/// The partition of the next record without a key: the batch's partition if its leader takes
/// records, else the next one whose leader does, else the first of those with a leader from the
/// batch's on, else the batch's partition anyway (every partition is without a leader).
///
/// `takes` is asked once per broker, however many partitions it leads: in an outage of the
/// whole cluster, a record costs one question per broker, not one per partition.
fn keyless(topic: &TopicLeaders, takes: impl Fn(&Broker) -> bool) -> i32 {
    let count = topic.count() as u64;
    let first = (topic.next_keyless() / STICKY_BATCH) % count;
    let mut refusing = Refusing::default();
    let mut fallback = None;
    for step in 0..count {
        let partition = ((first + step) % count) as i32;
        let Some(broker) = topic.leader(partition).filter(|b| b.is_leader()) else {
            continue;
        };
        if !refusing.contains(broker.id()) {
            if takes(broker) {
                return partition;
            }
            refusing.add(broker.id());
        }
        fallback.get_or_insert(partition);
    }
    fallback.unwrap_or(first as i32)
}

/// The brokers one choice found not taking records, on the stack: up to a few (a cluster has
/// few brokers); past that, brokers are asked again.
#[derive(Default)]
struct Refusing {
    ids: [BrokerId; 8],
    len: usize,
}

impl Refusing {
    fn contains(&self, id: BrokerId) -> bool {
        self.ids[..self.len].contains(&id)
    }

    fn add(&mut self, id: BrokerId) {
        if let Some(slot) = self.ids.get_mut(self.len) {
            *slot = id;
            self.len += 1;
        }
    }
}

/// CRC-32 as librdkafka's `rd_crc32` computes it (the IEEE polynomial, reflected, initial
/// value and final xor all ones: the CRC of zlib and Ethernet).
pub(super) fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &byte| {
        CRC_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// The remainders of each byte value, for [`crc32`].
static CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut crc = n as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[n] = crc;
        n += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::broker::NO_LEADER;
    use super::*;

    /// A topic led by `leaders` (`-1`: no leader), its first record without a key numbered 0.
    fn topic(leaders: &[i32]) -> TopicLeaders {
        let now = Instant::now();
        let no_leader = Arc::new(Broker::new(NO_LEADER, now));
        TopicLeaders::new(
            leaders
                .iter()
                .map(|&id| match id {
                    NO_LEADER => no_leader.clone(),
                    id => Arc::new(Broker::new(id, now)),
                })
                .collect(),
            0,
        )
    }

    fn partition(route: Route<'_>) -> Option<i32> {
        match route {
            Route::Leader { partition, .. } => Some(partition),
            Route::Librdkafka => None,
        }
    }

    fn broker(route: Route<'_>) -> Option<i32> {
        match route {
            Route::Leader { broker, .. } => Some(broker.id()),
            Route::Librdkafka => None,
        }
    }

    #[test]
    fn crc32_is_the_standard_one() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn a_keyed_record_keeps_its_partition_whatever_the_health() {
        let topic = topic(&[1, 2, 3, 1, 2, 3]);
        for key in ["user-1", "user-2", "a", "\0"] {
            let record = Record::new("t", "x").key(key);
            let expected = (crc32(key.as_bytes()) % 6) as i32;
            let healthy = partition(route(&topic, &record, true, |_| true));
            let all_sick = partition(route(&topic, &record, true, |_| false));
            assert_eq!(healthy, Some(expected), "{key}");
            assert_eq!(all_sick, Some(expected), "{key}");
        }
        let other_partitioner = route(&topic, &Record::new("t", "x").key("k"), false, |_| true);
        assert!(matches!(other_partitioner, Route::Librdkafka));
    }

    #[test]
    fn an_empty_key_is_routed_as_no_key() {
        // librdkafka's `consistent_random` partitions empty keys at random, as missing ones;
        // the CRC-32 of an empty key would pin them all to partition 0.
        let topic = topic(&[1, 2, 3, 1, 2, 3]);
        let empty = Record::new("t", "x").key("");
        let chosen: Vec<i32> = (0..STICKY_BATCH * 4)
            .map(|_| partition(route(&topic, &empty, true, |_| true)).unwrap())
            .collect();
        for (batch, records) in chosen.chunks(STICKY_BATCH as usize).enumerate() {
            assert!(records.iter().all(|&p| p == batch as i32), "{records:?}");
        }
        // And they avoid a sick broker as records without a key do.
        let avoids_1 = |b: &Broker| b.id() != 1;
        for _ in 0..STICKY_BATCH * 6 {
            let p = partition(route(&topic, &empty, true, avoids_1)).unwrap();
            assert!(p % 3 != 0, "partition {p} is broker 1's");
        }
        // With another partitioner, librdkafka decides, as for any key.
        assert!(matches!(
            route(&topic, &empty, false, |_| true),
            Route::Librdkafka
        ));
    }

    #[test]
    fn an_explicit_partition_is_kept_and_a_nonexistent_one_left_to_librdkafka() {
        let topic = topic(&[1, 2, 3]);
        let to = |p| {
            partition(route(
                &topic,
                &Record::new("t", "x").partition(p),
                true,
                |_| true,
            ))
        };
        assert_eq!(to(2), Some(2));
        assert_eq!(to(7), None, "no such partition: librdkafka says so");
        assert_eq!(to(-3), None);
    }

    #[test]
    fn records_for_a_partition_without_a_leader_share_its_compartment() {
        let topic = topic(&[1, NO_LEADER, 3]);
        let explicit = Record::new("t", "x").partition(1);
        assert_eq!(partition(route(&topic, &explicit, true, |_| true)), Some(1));
        assert_eq!(
            broker(route(&topic, &explicit, true, |_| true)),
            Some(NO_LEADER)
        );
        // A key of partition 1 (the CRC-32 of "k" is 0x0862575D, 1 modulo 3) keeps it.
        let keyed = Record::new("t", "x").key("k");
        assert_eq!(crc32(b"k") % 3, 1);
        assert_eq!(
            broker(route(&topic, &keyed, true, |_| true)),
            Some(NO_LEADER)
        );
        // Records without a key never go there, healthy brokers or not.
        let keyless = Record::new("t", "x");
        let healths: [fn(&Broker) -> bool; 2] = [|_| true, |_| false];
        for takes in healths {
            for _ in 0..STICKY_BATCH * 6 {
                let routed = route(&topic, &keyless, true, takes);
                assert!(matches!(broker(routed), Some(1 | 3)));
            }
        }
        // Unless no partition has a leader: they are bounded by its compartment too.
        let leaderless = self::topic(&[NO_LEADER, NO_LEADER]);
        let routed = route(&leaderless, &keyless, true, |_| true);
        assert_eq!(broker(routed), Some(NO_LEADER));
    }

    #[test]
    fn each_broker_is_asked_once_per_record() {
        use std::cell::Cell;

        let leaders: Vec<i32> = (0..100).map(|p| p % 3 + 1).collect();
        let topic = topic(&leaders);
        let keyless = Record::new("t", "x");
        let asked = Cell::new(0);
        let none = |_: &Broker| {
            asked.set(asked.get() + 1);
            false
        };
        assert!(partition(route(&topic, &keyless, true, none)).is_some());
        assert_eq!(asked.get(), 3, "one question per broker, not per partition");
        // Past the brokers it remembers, it asks again: still an answer.
        let many: Vec<i32> = (1..=20).collect();
        let asked_many = Cell::new(0);
        let many_none = |_: &Broker| {
            asked_many.set(asked_many.get() + 1);
            false
        };
        let wide = self::topic(&many);
        assert!(partition(route(&wide, &keyless, true, many_none)).is_some());
        assert_eq!(asked_many.get(), 20);
    }

    #[test]
    fn keyless_records_stick_to_a_partition_per_batch_then_move() {
        let topic = topic(&[1, 2, 3]);
        let keyless = Record::new("t", "x");
        let chosen: Vec<i32> = (0..STICKY_BATCH * 4)
            .map(|_| partition(route(&topic, &keyless, true, |_| true)).unwrap())
            .collect();
        for (batch, records) in chosen.chunks(STICKY_BATCH as usize).enumerate() {
            assert!(
                records.iter().all(|&p| p == (batch % 3) as i32),
                "{records:?}"
            );
        }
    }

    #[test]
    fn keyless_records_skip_brokers_that_do_not_take_them() {
        let topic = topic(&[1, 2, 3, 1, 2, 3]);
        let keyless = Record::new("t", "x");
        let takes = |b: &Broker| b.id() != 2;
        let mut per_partition = [0u32; 6];
        for _ in 0..STICKY_BATCH * 60 {
            let p = partition(route(&topic, &keyless, true, takes)).unwrap();
            per_partition[p as usize] += 1;
        }
        assert_eq!(per_partition[1], 0, "{per_partition:?}");
        assert_eq!(per_partition[4], 0, "{per_partition:?}");
        assert!(per_partition
            .iter()
            .enumerate()
            .all(|(p, &n)| p % 3 == 1 || n > 0));
        // None takes records: the batch's own partition, its compartment decides.
        let p = partition(route(&topic, &keyless, true, |_| false));
        assert!(p.is_some());
    }
}
