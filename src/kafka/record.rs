//! What is written to Kafka, and what comes back.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::util::IntoOpaque;

/// One record to produce: owned bytes, cheap to clone.
///
/// A `Record` is one pointer to its fields, shared by its clones: a clone costs one atomic
/// increment and copies no bytes (its payload's `Bytes` is not cloned either), and a queue of
/// records holds pointers, not whole records. Building one costs one allocation; the builder
/// methods change it in place while it is not shared.
///
/// Serialising your own type into a `Record` is a step of your stack (`map_request`), so that
/// the layers and the hand-off stay generic.
///
/// ```
/// use tanker::kafka::Record;
///
/// let record = Record::new("page-views", b"{\"path\":\"/\"}".to_vec())
///     .key("user-42")
///     .header("source", "web");
/// assert_eq!(record.topic(), "page-views");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    fields: Arc<Fields>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    topic: Cow<'static, str>,
    key: Option<Bytes>,
    payload: Bytes,
    headers: Vec<(Cow<'static, str>, Bytes)>,
    partition: Option<i32>,
    timestamp: Option<i64>,
}

impl Record {
    /// A record for `topic` carrying `payload`. A `&'static str` topic is not copied.
    pub fn new(topic: impl Into<Cow<'static, str>>, payload: impl Into<Bytes>) -> Self {
        Self {
            fields: Arc::new(Fields {
                topic: topic.into(),
                key: None,
                payload: payload.into(),
                headers: Vec::new(),
                partition: None,
                timestamp: None,
            }),
        }
    }

    /// The fields, to change: copied first if a clone shares them.
    fn fields_mut(&mut self) -> &mut Fields {
        Arc::make_mut(&mut self.fields)
    }

    /// Sets the key, which picks the partition unless [`partition`](Self::partition) is set.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.fields_mut().key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Bytes>) -> Self {
        self.fields_mut().headers.push((name.into(), value.into()));
        self
    }

    /// Sends the record to this partition instead of letting the partitioner choose.
    pub fn partition(mut self, partition: i32) -> Self {
        self.fields_mut().partition = Some(partition);
        self
    }

    /// Sets the record's timestamp, in milliseconds since the Unix epoch (default: when it is
    /// produced).
    pub fn timestamp(mut self, millis: i64) -> Self {
        self.fields_mut().timestamp = Some(millis);
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.fields.topic
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.fields.payload
    }

    /// The key, if any.
    pub fn key_bytes(&self) -> Option<&Bytes> {
        self.fields.key.as_ref()
    }

    /// The partition set by [`partition`](Self::partition), if any.
    pub(super) fn partition_number(&self) -> Option<i32> {
        self.fields.partition
    }

    /// The headers.
    pub fn headers(&self) -> &[(Cow<'static, str>, Bytes)] {
        &self.fields.headers
    }

    /// What the record weighs in memory, in bytes: its payload, key, headers and an owned topic
    /// name, plus the record itself. For a hand-off bounded by bytes:
    /// `Handoff::builder().max_bytes(64 << 20, Record::weight)`.
    ///
    /// Payloads that share one buffer (`Bytes` clones) are each counted whole, so the weight
    /// errs on the heavy side.
    ///
    /// ```
    /// use tanker::kafka::Record;
    ///
    /// let record = Record::new("stats", vec![0u8; 100]).key("k1").header("h", "v");
    /// assert!(record.weight() >= 100 + 2 + 1 + 1);
    /// ```
    pub fn weight(&self) -> usize {
        let Fields {
            topic,
            key,
            payload,
            headers,
            ..
        } = &*self.fields;
        let topic = match topic {
            Cow::Borrowed(_) => 0,
            Cow::Owned(name) => name.len(),
        };
        let headers: usize = headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        // The pointer, and the shared allocation: two counters and the fields.
        std::mem::size_of::<Self>()
            + 2 * std::mem::size_of::<usize>()
            + std::mem::size_of::<Fields>()
            + topic
            + payload.len()
            + key.as_ref().map_or(0, Bytes::len)
            + headers
    }

    /// The record as librdkafka takes it, borrowing its bytes, with `delivery` as the opaque
    /// value its delivery report brings back, for `partition` if given (the leaf's routing),
    /// else for the record's own.
    pub(super) fn to_base<D: IntoOpaque>(
        &self,
        partition: Option<i32>,
        delivery: D,
    ) -> BaseRecord<'_, [u8], [u8], D> {
        let fields = &*self.fields;
        let mut base =
            BaseRecord::with_opaque_to(&fields.topic, delivery).payload(&fields.payload[..]);
        if let Some(key) = &fields.key {
            base = base.key(&key[..]);
        }
        if let Some(partition) = partition.or(fields.partition) {
            base = base.partition(partition);
        }
        if let Some(timestamp) = fields.timestamp {
            base = base.timestamp(timestamp);
        }
        if !fields.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(fields.headers.len());
            for (name, value) in &fields.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(&value[..]),
                });
            }
            base = base.headers(headers);
        }
        base
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Fields {
            topic,
            key,
            payload,
            headers,
            partition,
            timestamp,
        } = &*self.fields;
        f.debug_struct("Record")
            .field("topic", topic)
            .field("key", key)
            .field("payload", payload)
            .field("headers", headers)
            .field("partition", partition)
            .field("timestamp", timestamp)
            .finish()
    }
}

/// Where Kafka stored a record: the response of [`KafkaService`](super::KafkaService).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// The partition the record was written to.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_shares_the_fields_and_a_change_copies_them() {
        let record = Record::new("t", vec![1u8, 2, 3]).key("k");
        let clone = record.clone();
        assert!(Arc::ptr_eq(&record.fields, &clone.fields));

        let changed = clone.header("h", "v").partition(2);
        assert!(!Arc::ptr_eq(&record.fields, &changed.fields));
        assert!(record.headers().is_empty());
        assert_eq!(record.partition_number(), None);
        assert_eq!(changed.headers().len(), 1);
        assert_eq!(changed.partition_number(), Some(2));
        assert_eq!(changed.key_bytes(), record.key_bytes());
        assert_eq!(&changed.payload()[..], &[1, 2, 3]);
    }

    #[test]
    fn debug_shows_the_fields_as_before() {
        let shown = format!("{:?}", Record::new("views", "x").timestamp(7));
        assert!(shown.starts_with("Record { topic: \"views\""), "{shown}");
        assert!(shown.contains("timestamp: Some(7)"), "{shown}");
        assert!(!shown.contains("fields"), "{shown}");
    }

    #[test]
    fn the_weight_counts_the_shared_fields_and_the_bytes() {
        let small = Record::new("t", Vec::new());
        let big = Record::new("t", vec![0u8; 1000]).key("key");
        assert!(small.weight() > std::mem::size_of::<Fields>());
        assert_eq!(big.weight() - small.weight(), 1000 + 3);
    }
}
