//! The names of the metrics tanker records, and what they mean.
//!
//! With the `metrics` feature on, every component records its counters and gauges through the
//! [`metrics`](https://docs.rs/metrics) facade, so the application picks the exporter
//! (Prometheus, StatsD, OpenTelemetry...) by installing a recorder. Each metric carries one label
//! naming the component, with the name given to its builder: `bulkhead`, `breaker`, `keyed`, `handoff` or
//! `producer`. Some carry a second label, listed below. With the feature off nothing is
//! recorded and nothing is compiled in; the constants below stay, so dashboards and alerts can
//! be written against them either way.
//!
//! Give each component its own name: two components of one kind with the same name share their
//! metrics (counters add up, and so do the bulkhead's gauges; other gauges mix).
//!
//! Install the recorder **before** building the layers: a component resolves its metric handles
//! once, when it is built, so that a call only bumps them (an atomic add in most recorders) and
//! never looks a metric up by name.
//!
//! A [keyed layer](crate::keyed) builds each key's bulkhead and breaker when the key first
//! comes, named `name/key`: their metrics carry the key in their `bulkhead` and `breaker`
//! labels, and are resolved with the recorder installed at that moment (install it globally,
//! at start-up). An evicted key's series stay in the recorder with their last values.
//!
//! | metric | kind | extra label | meaning |
//! |---|---|---|---|
//! | `tanker_bulkhead_admitted_total` | counter | | calls the bulkhead let through to the inner service, counted when they are made (the handle's `admitted` counts a waiter's slot from `poll_ready`) |
//! | `tanker_bulkhead_shed_total` | counter | | calls shed with `BulkheadFull` |
//! | `tanker_bulkhead_in_flight` | gauge | | slots taken: calls in flight, and slots held by callers that waited |
//! | `tanker_bulkhead_waiting` | gauge | | callers in the waiting room |
//! | `tanker_bulkhead_max_in_flight` | gauge | | the compartment's capacity, set once |
//! | `tanker_breaker_state` | gauge | `state` | 1 for the current state, 0 for the others; `state` is `closed`, `open`, `half_open`, `forced_open` or `forced_closed` |
//! | `tanker_breaker_transitions_total` | counter | `to` | state changes, by the state entered (same values as `state`); forcing or resetting a breaker into the state it is in is not one |
//! | `tanker_breaker_calls_total` | counter | `outcome` | calls that went through (probes included; not those of a breaker forced closed, which counts nothing) and finished, by what the classifier said: `success`, `failure` or `ignored` |
//! | `tanker_breaker_slow_calls_total` | counter | | calls slower than the slow-call threshold (when slow-call detection is on) |
//! | `tanker_breaker_rejected_total` | counter | | calls rejected with `BreakerOpen` |
//! | `tanker_keyed_keys` | gauge | | keys in a keyed layer's table (label `keyed`) |
//! | `tanker_keyed_open` | gauge | | keys of a keyed layer counted open |
//! | `tanker_keyed_outage` | gauge | | 1 while more keys are open than the layer's `max_open`, else 0 |
//! | `tanker_keyed_evicted_total` | counter | | idle keys evicted to make room for new ones |
//! | `tanker_keyed_refused_total` | counter | | calls for a new key refused because the table was full of busy keys |
//! | `tanker_handoff_accepted_total` | counter | | records put in the queue |
//! | `tanker_handoff_dropped_total` | counter | `reason` | records refused by `send`: `full` (queue full) or `closed` (sent after close) |
//! | `tanker_handoff_delivered_total` | counter | | records the stack handled successfully |
//! | `tanker_handoff_failed_total` | counter | `reason` | accepted records not delivered: `shed` (bulkhead full), `rejected` (breaker open; both only with parking off), `expired` (older than the hand-off's maximum age) or `error` (any other error, or a panic) |
//! | `tanker_handoff_queued` | gauge | | records waiting in the queue |
//! | `tanker_handoff_in_flight` | gauge | | records in the stack, not yet finished |
//! | `tanker_handoff_parked` | gauge | | records the stack gave back (an open breaker, a full bulkhead, one more try), waiting in the worker |
//! | `tanker_kafka_delivered_total` | counter | | records Kafka confirmed |
//! | `tanker_kafka_errors_total` | counter | `kind` | records that failed, by [`KafkaErrorKind`] in snake case: `queue_full`, `message_timed_out`, `broker_down`, `broker_error`, `fatal`, `closed`, `message_too_large`, `invalid_record`, `unknown_topic`, `unknown_partition`, `config`, `other` |
//! | `tanker_kafka_in_flight` | gauge | | records handed to librdkafka and not yet reported |
//!
//! The bulkhead and breaker record as calls happen. The hand-off's worker publishes its counters
//! in batches, each time it runs out of work and at each of its ticks (1 ms after traffic, 100 ms
//! when idle), so a send costs nothing more with metrics on; a record dropped after `close` is
//! recorded by `send` itself. A breaker's time-driven changes (the end of a cool-down) happen
//! when the next call arrives, so `tanker_breaker_state` keeps showing `open` after the
//! cool-down of a breaker that gets no calls.
//!
//! ```
//! # #[cfg(feature = "metrics")]
//! # fn main() -> Result<(), tanker::ConfigError> {
//! use metrics_util::debugging::DebuggingRecorder;
//! use tanker::bulkhead::BulkheadLayer;
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! // A process installs its recorder once, at start-up; a test can scope one like this.
//! let bulkhead = metrics::with_local_recorder(&recorder, || {
//!     BulkheadLayer::builder().name("redis").max_in_flight(8).build()
//! })?;
//! # drop(bulkhead);
//! let names: Vec<String> = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .map(|(key, _, _, _)| key.key().name().to_owned())
//!     .collect();
//! assert!(names.iter().any(|name| name == tanker::metrics::BULKHEAD_MAX_IN_FLIGHT));
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "metrics"))]
//! # fn main() {}
//! ```
//!
// The Kafka module exists only with the `kafka` feature: link to it when it is built, and to its
// published docs otherwise, so that `cargo doc` passes with any set of features.
#![cfg_attr(
    feature = "kafka",
    doc = "[`KafkaErrorKind`]: crate::kafka::KafkaErrorKind"
)]
#![cfg_attr(
    not(feature = "kafka"),
    doc = "[`KafkaErrorKind`]: https://docs.rs/tanker/latest/tanker/kafka/enum.KafkaErrorKind.html"
)]

/// Counter: calls a bulkhead let through.
pub const BULKHEAD_ADMITTED: &str = "tanker_bulkhead_admitted_total";
/// Counter: calls a bulkhead shed.
pub const BULKHEAD_SHED: &str = "tanker_bulkhead_shed_total";
/// Gauge: a bulkhead's slots taken.
pub const BULKHEAD_IN_FLIGHT: &str = "tanker_bulkhead_in_flight";
/// Gauge: callers in a bulkhead's waiting room.
pub const BULKHEAD_WAITING: &str = "tanker_bulkhead_waiting";
/// Gauge: a bulkhead's capacity.
pub const BULKHEAD_MAX_IN_FLIGHT: &str = "tanker_bulkhead_max_in_flight";
/// Gauge, label `state`: 1 for a breaker's current state, 0 for the others.
pub const BREAKER_STATE: &str = "tanker_breaker_state";
/// Counter, label `to`: a breaker's state changes.
pub const BREAKER_TRANSITIONS: &str = "tanker_breaker_transitions_total";
/// Counter, label `outcome`: calls through a breaker, by outcome.
pub const BREAKER_CALLS: &str = "tanker_breaker_calls_total";
/// Counter: calls through a breaker slower than its threshold.
pub const BREAKER_SLOW_CALLS: &str = "tanker_breaker_slow_calls_total";
/// Counter: calls a breaker rejected.
pub const BREAKER_REJECTED: &str = "tanker_breaker_rejected_total";
/// Gauge: keys in a keyed layer's table.
pub const KEYED_KEYS: &str = "tanker_keyed_keys";
/// Gauge: keys of a keyed layer counted open.
pub const KEYED_OPEN: &str = "tanker_keyed_open";
/// Gauge: 1 while more keys of a keyed layer are open than its cap.
pub const KEYED_OUTAGE: &str = "tanker_keyed_outage";
/// Counter: idle keys a keyed layer evicted.
pub const KEYED_EVICTED: &str = "tanker_keyed_evicted_total";
/// Counter: calls for a new key a keyed layer refused, its table full of busy keys.
pub const KEYED_REFUSED: &str = "tanker_keyed_refused_total";
/// Counter: records a hand-off queued.
pub const HANDOFF_ACCEPTED: &str = "tanker_handoff_accepted_total";
/// Counter, label `reason`: records a hand-off refused.
pub const HANDOFF_DROPPED: &str = "tanker_handoff_dropped_total";
/// Counter: records a hand-off's stack delivered.
pub const HANDOFF_DELIVERED: &str = "tanker_handoff_delivered_total";
/// Counter, label `reason`: accepted records a hand-off's stack did not deliver.
pub const HANDOFF_FAILED: &str = "tanker_handoff_failed_total";
/// Gauge: records in a hand-off's queue.
pub const HANDOFF_QUEUED: &str = "tanker_handoff_queued";
/// Gauge: records in a hand-off's stack.
pub const HANDOFF_IN_FLIGHT: &str = "tanker_handoff_in_flight";
/// Gauge: records parked in a hand-off's worker, waiting for the stack to take them again.
pub const HANDOFF_PARKED: &str = "tanker_handoff_parked";
/// Counter: records a Kafka producer delivered.
pub const KAFKA_DELIVERED: &str = "tanker_kafka_delivered_total";
/// Counter, label `kind`: records a Kafka producer failed to deliver.
pub const KAFKA_ERRORS: &str = "tanker_kafka_errors_total";
/// Gauge: records a Kafka producer has in flight.
pub const KAFKA_IN_FLIGHT: &str = "tanker_kafka_in_flight";
