//! Errors of the Kafka leaf, and whose fault they are.

use std::fmt;
use std::sync::Arc;

use tower::BoxError;

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};

use crate::breaker::BreakerOpen;
use crate::bulkhead::BulkheadFull;

/// Whose fault an error is: this decides whether it may trip a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Kafka (or the way to it) is failing: time out, down, overloaded. Counts as a failure.
    Dependency,
    /// The record or the configuration is wrong; Kafka is fine. Retrying will not help, and it
    /// must not trip a breaker.
    Caller,
}

/// What went wrong with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KafkaErrorKind {
    /// The producer's local queue is full (Kafka is not taking records as fast as they come).
    /// Returned at once, never waited for.
    QueueFull,
    /// The record was not confirmed within `message.timeout.ms`. It may still have been written
    /// (a broker that resumes writes what it had already read).
    MessageTimedOut,
    /// The brokers cannot be reached (connection refused or lost, all brokers down).
    BrokerDown,
    /// A broker kept answering with a retriable error code until the producer gave up.
    BrokerError,
    /// The producer hit a fatal error and must be rebuilt.
    Fatal,
    /// The producer was shut down before the record was delivered (it was purged).
    Closed,
    /// The record is larger than the producer or the broker accepts.
    MessageTooLarge,
    /// The record is invalid (bad timestamp, corrupt, unsupported format...).
    InvalidRecord,
    /// The topic does not exist and is not created automatically.
    UnknownTopic,
    /// The partition does not exist.
    UnknownPartition,
    /// The broker refused the producer's configuration or credentials.
    Config,
    /// Any other error; counted as the dependency's.
    Other,
    /// The record's broker compartment refused it: the broker that leads its partition is sick
    /// (its breaker is open, or its compartment full, or more brokers are open than the cap).
    /// The record never reached librdkafka. The refusal,
    /// [`BreakerOpen`](crate::breaker::BreakerOpen) or
    /// [`BulkheadFull`](crate::bulkhead::BulkheadFull), is the error's
    /// [`source`](std::error::Error::source), so [`Rejection::find`](crate::Rejection::find)
    /// sees it and a hand-off parks the record.
    Refused,
}

impl KafkaErrorKind {
    /// Whose fault this kind of error is.
    pub fn fault(self) -> Fault {
        match self {
            Self::MessageTooLarge
            | Self::InvalidRecord
            | Self::UnknownTopic
            | Self::UnknownPartition
            | Self::Config => Fault::Caller,
            Self::QueueFull
            | Self::MessageTimedOut
            | Self::BrokerDown
            | Self::BrokerError
            | Self::Fatal
            | Self::Closed
            | Self::Other
            | Self::Refused => Fault::Dependency,
        }
    }

    /// Every kind, for metrics that keep one counter per kind.
    pub(crate) const ALL: [Self; 13] = [
        Self::QueueFull,
        Self::MessageTimedOut,
        Self::BrokerDown,
        Self::BrokerError,
        Self::Fatal,
        Self::Closed,
        Self::MessageTooLarge,
        Self::InvalidRecord,
        Self::UnknownTopic,
        Self::UnknownPartition,
        Self::Config,
        Self::Other,
        Self::Refused,
    ];

    /// The kind in snake case, as the `kind` label of [`crate::metrics::KAFKA_ERRORS`].
    pub fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::MessageTimedOut => "message_timed_out",
            Self::BrokerDown => "broker_down",
            Self::BrokerError => "broker_error",
            Self::Fatal => "fatal",
            Self::Closed => "closed",
            Self::MessageTooLarge => "message_too_large",
            Self::InvalidRecord => "invalid_record",
            Self::UnknownTopic => "unknown_topic",
            Self::UnknownPartition => "unknown_partition",
            Self::Config => "config",
            Self::Other => "other",
            Self::Refused => "refused",
        }
    }

    /// The index of this kind in [`ALL`](Self::ALL), which lists the kinds in the order they
    /// are declared.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "producer queue is full",
            Self::MessageTimedOut => "record timed out before delivery",
            Self::BrokerDown => "kafka brokers unreachable",
            Self::BrokerError => "kafka broker kept failing",
            Self::Fatal => "kafka producer failed fatally",
            Self::Closed => "kafka producer closed before delivery",
            Self::MessageTooLarge => "record too large",
            Self::InvalidRecord => "invalid record",
            Self::UnknownTopic => "unknown topic",
            Self::UnknownPartition => "unknown partition",
            Self::Config => "kafka refused the producer's configuration",
            Self::Other => "kafka error",
            Self::Refused => "refused by the broker's compartment",
        }
    }

    pub(crate) fn from_code(code: RDKafkaErrorCode) -> Self {
        use RDKafkaErrorCode as C;
        match code {
            C::QueueFull => Self::QueueFull,
            C::MessageTimedOut | C::RequestTimedOut => Self::MessageTimedOut,
            C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::BrokerNotAvailable
            | C::NetworkException
            | C::BrokerDestroy
            | C::Resolve => Self::BrokerDown,
            C::NotLeaderForPartition
            | C::LeaderNotAvailable
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::KafkaStorageError
            | C::PreferredLeaderNotAvailable => Self::BrokerError,
            C::Fatal => Self::Fatal,
            C::PurgeQueue | C::PurgeInflight | C::DestroyBroker => Self::Closed,
            C::MessageSizeTooLarge | C::InvalidMessageSize => Self::MessageTooLarge,
            C::InvalidMessage
            | C::InvalidRecord
            | C::InvalidTimestamp
            | C::BadMessage
            | C::UnsupportedForMessageFormat
            | C::InvalidArgument => Self::InvalidRecord,
            C::UnknownTopic | C::UnknownTopicOrPartition => Self::UnknownTopic,
            C::UnknownPartition => Self::UnknownPartition,
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::InvalidRequiredAcks => Self::Config,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for KafkaErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record could not be written, with the kind of failure and whose fault it is.
///
/// Returned by [`KafkaService`](super::KafkaService); boxed into a [`tower::BoxError`] by the
/// layers above it, where `err.downcast_ref::<KafkaError>()` finds it again.
#[derive(Debug, Clone)]
pub struct KafkaError {
    kind: KafkaErrorKind,
    source: Option<Cause>,
    /// The record's topic, kept for the errors a topic explains (unknown topic or partition).
    topic: Option<Box<str>>,
}

/// What caused a [`KafkaError`]: librdkafka's error, or a compartment's refusal.
#[derive(Debug, Clone)]
enum Cause {
    /// Boxed: a record's outcome (`Result<Delivery, KafkaError>`) then stays small on every
    /// record's way back, and the failure, rarer, pays the allocation.
    Rdkafka(Box<RdKafkaError>),
    /// The broker's breaker refused: kept by value, its box freed.
    BreakerOpen(BreakerOpen),
    /// The broker's compartment was full: kept by value, its box freed.
    BulkheadFull(BulkheadFull),
    /// Any other refusal (none of tanker's layers returns one today).
    Refusal(Arc<dyn std::error::Error + Send + Sync>),
}

impl KafkaError {
    pub(crate) fn new(kind: KafkaErrorKind, source: Option<RdKafkaError>) -> Self {
        Self {
            kind,
            source: source.map(|error| Cause::Rdkafka(Box::new(error))),
            topic: None,
        }
    }

    /// The refusal of a record's broker compartment, kept as the source; a breaker's or a
    /// bulkhead's refusal is taken out of its box, so that a refused record costs no
    /// allocation beyond the box it came in.
    pub(crate) fn refused(refusal: BoxError) -> Self {
        let cause = match refusal.downcast::<BreakerOpen>() {
            Ok(open) => Cause::BreakerOpen(*open),
            Err(refusal) => match refusal.downcast::<BulkheadFull>() {
                Ok(full) => Cause::BulkheadFull(*full),
                Err(other) => Cause::Refusal(Arc::from(other)),
            },
        };
        Self {
            kind: KafkaErrorKind::Refused,
            source: Some(cause),
            topic: None,
        }
    }

    /// Keeps the record's topic when it explains the error (an unknown topic or partition), so
    /// that the message names it; other errors stay as they are, without an allocation.
    pub(crate) fn for_topic(mut self, topic: &str) -> Self {
        if matches!(
            self.kind,
            KafkaErrorKind::UnknownTopic | KafkaErrorKind::UnknownPartition
        ) {
            self.topic = Some(topic.into());
        }
        self
    }

    pub(crate) fn from_rdkafka(error: RdKafkaError) -> Self {
        let kind = match error.rdkafka_error_code() {
            Some(code) => KafkaErrorKind::from_code(code),
            None => match error {
                RdKafkaError::Canceled => KafkaErrorKind::Closed,
                _ => KafkaErrorKind::Other,
            },
        };
        Self::new(kind, Some(error))
    }

    /// What went wrong.
    pub fn kind(&self) -> KafkaErrorKind {
        self.kind
    }

    /// Whose fault it is.
    pub fn fault(&self) -> Fault {
        self.kind.fault()
    }

    /// The topic of the record, for an [`UnknownTopic`](KafkaErrorKind::UnknownTopic) or
    /// [`UnknownPartition`](KafkaErrorKind::UnknownPartition) error.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// The librdkafka error code, if there is one.
    pub fn code(&self) -> Option<RDKafkaErrorCode> {
        match &self.source {
            Some(Cause::Rdkafka(error)) => error.rdkafka_error_code(),
            _ => None,
        }
    }
}

impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match self.fault() {
            Fault::Dependency => "dependency",
            Fault::Caller => "caller",
        };
        match &self.topic {
            Some(topic) if self.kind == KafkaErrorKind::UnknownPartition => {
                write!(f, "unknown partition of topic `{topic}` ({whose} fault)")
            }
            Some(topic) => write!(f, "{} `{topic}` ({whose} fault)", self.kind),
            None => write!(f, "{} ({whose} fault)", self.kind),
        }
    }
}

impl std::error::Error for KafkaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.source {
            Some(Cause::Rdkafka(error)) => Some(&**error),
            Some(Cause::BreakerOpen(open)) => Some(open),
            Some(Cause::BulkheadFull(full)) => Some(full),
            Some(Cause::Refusal(refusal)) => Some(&**refusal),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_place_and_label() {
        for (index, kind) in KafkaErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), index, "{kind:?}");
            let label = kind.label();
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
        let mut labels: Vec<_> = KafkaErrorKind::ALL.iter().map(|k| k.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), KafkaErrorKind::ALL.len());
    }

    #[test]
    fn a_refusal_keeps_its_kind_and_domain() {
        use crate::{Domain, Rejection};

        let domain = Domain::new();
        let open = BreakerOpen::new(Some(std::time::Duration::from_secs(1)), domain);
        let full = BulkheadFull::new(domain);
        let other: BoxError = "refused by a layer of the user's".into();
        for (refusal, expected) in [
            (
                Box::new(open) as BoxError,
                Some(Rejection::BreakerOpen {
                    retry_after: open.retry_after(),
                }),
            ),
            (Box::new(full), Some(Rejection::BulkheadFull)),
            (other, None),
        ] {
            let error = KafkaError::refused(refusal);
            assert_eq!(error.kind(), KafkaErrorKind::Refused);
            let found = Rejection::find_with_domain(&error);
            assert_eq!(found.map(|(r, _)| r), expected, "{error}");
            if expected.is_some() {
                assert_eq!(found.map(|(_, d)| d), Some(domain));
            }
            let copy = error.clone();
            assert_eq!(Rejection::find(&copy), expected);
        }
        assert!(std::error::Error::source(&KafkaError::refused("x".into())).is_some());
    }

    #[test]
    fn an_unknown_topic_is_named() {
        let error = KafkaError::from_rdkafka(RdKafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ))
        .for_topic("page-views");
        assert_eq!(error.kind(), KafkaErrorKind::UnknownTopic);
        assert_eq!(error.topic(), Some("page-views"));
        assert_eq!(
            error.to_string(),
            "unknown topic `page-views` (caller fault)"
        );

        let error = KafkaError::from_rdkafka(RdKafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownPartition,
        ))
        .for_topic("page-views");
        assert_eq!(
            error.to_string(),
            "unknown partition of topic `page-views` (caller fault)"
        );

        let error = KafkaError::from_rdkafka(RdKafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        ))
        .for_topic("page-views");
        assert_eq!(error.topic(), None, "a timeout is not the topic's doing");
    }
}
