//! The Kafka leaf: a `tower::Service` that produces records with rdkafka and never blocks.
//!
//! [`KafkaService`] takes a [`Record`] and resolves with its [`Delivery`] (partition and
//! offset), or with a [`KafkaError`] whose [`Fault`] says whether Kafka failed (timeouts, brokers
//! down, a full queue) or the caller did (a record too large, an unknown topic). It has a
//! bulkhead and a breaker per broker built in ([`BrokerDomains`]): each record goes through the
//! compartment of the broker that leads its partition, records without a key go to healthy
//! brokers, and a sick broker's records are refused ([`Refused`](KafkaErrorKind::Refused)) while
//! the others flow. Behind a [hand-off](crate::handoff), which parks what is refused, a slow,
//! frozen or dead broker cannot slow the service that writes to it:
//!
//! ```no_run
//! use std::time::Duration;
//! use tanker::handoff::Handoff;
//! use tanker::kafka::{KafkaService, Record};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let kafka = KafkaService::builder("127.0.0.1:9092").name("stats").build()?;
//! let stats = Handoff::builder().name("stats").spawn(kafka.clone())?;
//!
//! // In a request handler: returns at once, whatever Kafka does.
//! stats.send(Record::new("page-views", b"/index.html".to_vec()));
//!
//! // At shutdown.
//! stats.close(Duration::from_secs(5)).await;
//! let left = kafka.flush(Duration::from_secs(5)).await;
//! println!("{} records not delivered", left.undelivered);
//! # Ok(())
//! # }
//! ```
//!
//! With [`KafkaConfig::no_broker_domains`], the leaf is a plain producer, to put under the
//! generic layers: a [`BreakerLayer`](crate::breaker::BreakerLayer) with the
//! [`FaultClassifier`] over a [`BulkheadLayer`](crate::bulkhead::BulkheadLayer).
//!
//! # Delivery guarantee
//!
//! At least once for the records reported delivered: librdkafka retries a produce request
//! whose answer was lost, so a record may be written twice (set `enable.idempotence=true` to
//! have the broker remove such duplicates). Records that are dropped, shed or rejected never
//! reach Kafka. A record that failed may or may not have been written: a broker that froze and
//! then resumed writes the requests it had already read, after the producer gave up on them
//! ([`MessageTimedOut`](KafkaErrorKind::MessageTimedOut)). Every record is counted under exactly
//! one outcome; none is lost silently.

mod broker;
mod classify;
mod config;
mod context;
mod domains;
mod error;
pub mod future;
mod leaders;
mod partitioner;
mod producer;
mod record;
mod refusal;
mod reply;
mod service;

pub use self::classify::FaultClassifier;
pub use self::config::KafkaConfig;
pub use self::domains::{BrokerDomains, BrokerHandles};
pub use self::error::{Fault, KafkaError, KafkaErrorKind};
pub use self::future::ResponseFuture;
pub use self::record::{Delivery, Record};
pub use self::service::{FlushReport, KafkaCounts, KafkaService};
