//! What is written to Kafka, and what comes back.

use std::borrow::Cow;

use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::util::IntoOpaque;

/// One record to produce: owned bytes, cheap to clone.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
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
            topic: topic.into(),
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
            partition: None,
            timestamp: None,
        }
    }

    /// Sets the key, which picks the partition unless [`partition`](Self::partition) is set.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends the record to this partition instead of letting the partitioner choose.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the record's timestamp, in milliseconds since the Unix epoch (default: when it is
    /// produced).
    pub fn timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The key, if any.
    pub fn key_bytes(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The partition set by [`partition`](Self::partition), if any.
    pub(super) fn partition_number(&self) -> Option<i32> {
        self.partition
    }

    /// The headers.
    pub fn headers(&self) -> &[(Cow<'static, str>, Bytes)] {
        &self.headers
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
        let topic = match &self.topic {
            Cow::Borrowed(_) => 0,
            Cow::Owned(name) => name.len(),
        };
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        std::mem::size_of::<Self>()
            + topic
            + self.payload.len()
            + self.key.as_ref().map_or(0, Bytes::len)
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
        let mut base = BaseRecord::with_opaque_to(&self.topic, delivery).payload(&self.payload[..]);
        if let Some(key) = &self.key {
            base = base.key(&key[..]);
        }
        if let Some(partition) = partition.or(self.partition) {
            base = base.partition(partition);
        }
        if let Some(timestamp) = self.timestamp {
            base = base.timestamp(timestamp);
        }
        if !self.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
            for (name, value) in &self.headers {
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

/// Where Kafka stored a record: the response of [`KafkaService`](super::KafkaService).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// The partition the record was written to.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}
