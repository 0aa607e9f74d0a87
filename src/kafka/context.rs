//! The producer's librdkafka context: counts the records in flight, hands each delivery report to the call waiting for it, feeds librdkafka's statistics to the
//! leaders table, and reports librdkafka's logs and errors through `tracing`, at most once a
//! second per producer.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::statistics::Statistics;

use super::leaders::Leaders;

use super::error::{Fault, KafkaError, KafkaErrorKind};
use super::record::Delivery;
use super::reply::{Reply, ReplyGuard};
use crate::metrics as names;
use crate::telemetry::{Counter, Gauge, Labels, Throttle};

/// The producer's context, shared with librdkafka's threads.
pub(super) struct ProducerState {
    name: Arc<str>,
    /// Records handed to librdkafka whose delivery report has not come back.
    in_flight: AtomicUsize,
    /// Records Kafka confirmed.
    delivered: AtomicU64,
    /// Records librdkafka refused at once or reported failed.
    failed: AtomicU64,
    /// The leaders table the statistics feed, when the producer routes by leader.
    leaders: Option<Arc<Leaders>>,
    /// Whether librdkafka said its producer failed fatally (an error event, or a record refused
    /// or failed with that kind): only then is it asked for the error, which costs a call
    /// across the FFI and a 512-byte buffer.
    fatal: AtomicBool,
    metrics: ProducerMetrics,
    reports: ClientReports,
}

/// The producer's metric handles (empty without the `metrics` feature).
struct ProducerMetrics {
    delivered: Counter,
    /// One per [`KafkaErrorKind`], in the order of [`KafkaErrorKind::ALL`].
    errors: [Counter; KafkaErrorKind::ALL.len()],
    in_flight: Gauge,
}

impl ProducerMetrics {
    fn new(name: &str) -> Self {
        let labels = Labels::new("producer", name);
        Self {
            delivered: labels.counter(names::KAFKA_DELIVERED, "records Kafka confirmed"),
            errors: KafkaErrorKind::ALL.map(|kind| {
                labels.counter_with(
                    names::KAFKA_ERRORS,
                    "records a Kafka producer failed to deliver, by kind",
                    Some(("kind", kind.label())),
                )
            }),
            in_flight: labels.gauge(
                names::KAFKA_IN_FLIGHT,
                "records handed to librdkafka and not yet reported",
            ),
        }
    }
}

impl ProducerState {
    pub(super) fn new(name: Arc<str>, leaders: Option<Arc<Leaders>>) -> Self {
        Self {
            metrics: ProducerMetrics::new(&name),
            name,
            in_flight: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            leaders,
            fatal: AtomicBool::new(false),
            reports: ClientReports::new(),
        }
    }

    /// Whether the producer may have failed fatally: see [`fatal`](Self::fatal).
    pub(super) fn fatal_raised(&self) -> bool {
        self.fatal.load(Ordering::Relaxed)
    }

    /// Records handed to librdkafka whose delivery report has not come back.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Records Kafka confirmed, and records that failed (refused at once or reported failed).
    pub(super) fn outcomes(&self) -> (u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// A record is about to be handed to librdkafka.
    pub(super) fn sending(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.publish_in_flight();
    }

    /// librdkafka refused a record at once (queue full, record too large...): no report will
    /// come for it.
    pub(super) fn refused(&self, error: &KafkaError) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.publish_in_flight();
        self.count_error(error);
    }

    /// The in-flight gauge, as an absolute value: exporters such as StatsD drop a gauge's
    /// increments and decrements, since they cannot know its previous value.
    fn publish_in_flight(&self) {
        self.metrics.in_flight.track(|| self.in_flight());
    }

    /// Counts a broker's answer for its stall watch, when the producer routes by leader.
    fn answered(&self, topic: &str, partition: i32) {
        if let Some(leaders) = &self.leaders {
            leaders.answered(topic, partition);
        }
    }

    fn count_error(&self, error: &KafkaError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if error.kind() == KafkaErrorKind::Fatal {
            self.fatal.store(true, Ordering::Relaxed);
        }
        self.metrics.errors[error.kind().index()].increment();
    }
}

impl ProducerContext for ProducerState {
    type DeliveryOpaque = Arc<Reply>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Arc<Reply>) {
        let reply = ReplyGuard::new(reply);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.publish_in_flight();
        let outcome = match result {
            Ok(message) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.metrics.delivered.increment();
                self.answered(message.topic(), message.partition());
                Ok(Delivery {
                    partition: message.partition(),
                    offset: message.offset(),
                })
            }
            Err((error, message)) => {
                let error = KafkaError::from_rdkafka(error.clone()).for_topic(message.topic());
                self.count_error(&error);
                if error.fault() == Fault::Caller {
                    // The broker answered; the record was wrong.
                    self.answered(message.topic(), message.partition());
                }
                Err(error)
            }
        };
        // The caller may have stopped waiting; the record is counted either way.
        reply.send(outcome);
    }
}

impl ClientContext for ProducerState {
    fn stats(&self, statistics: Statistics) {
        if let Some(leaders) = &self.leaders {
            leaders.update(&statistics, Instant::now());
        }
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let producer = &*self.name;
        let serious = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        );
        // librdkafka logs a broker's failure (facility `FAIL`) and also raises it as an error
        // event, reported by `error` below: logging both would say it twice.
        if !serious || facility == "FAIL" {
            if matches!(level, RDKafkaLogLevel::Debug) {
                tracing::trace!(producer, facility, "librdkafka: {message}");
            } else {
                tracing::debug!(producer, facility, "librdkafka: {message}");
            }
            return;
        }
        let Some(reports) = self.reports.due() else {
            tracing::debug!(producer, facility, "librdkafka: {message}");
            return;
        };
        if matches!(level, RDKafkaLogLevel::Warning) {
            tracing::warn!(producer, facility, reports, "librdkafka: {message}");
        } else {
            tracing::error!(producer, facility, reports, "librdkafka: {message}");
        }
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        let producer = &*self.name;
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Ordering::Relaxed);
        }
        // librdkafka sometimes says that all brokers are down when none is ("0/1 brokers are
        // down", a race between its threads): nothing to warn about.
        if code == Some(RDKafkaErrorCode::AllBrokersDown) && reason.starts_with("0/") {
            tracing::debug!(producer, %error, "kafka client error: {reason}");
            return;
        }
        if self.reports.repeated(code, reason, Instant::now()) {
            return;
        }
        let Some(reports) = self.reports.due() else {
            tracing::debug!(producer, %error, "kafka client error: {reason}");
            return;
        };
        tracing::warn!(producer, %error, reports, "kafka client error: {reason}");
    }
}

/// librdkafka's reports of trouble (its client errors, and its log lines at warning or above),
/// let through at most once a second per producer: a broker that is down fails every reconnection
/// attempt, and each failure is a report. A line that goes through carries `reports`, the number
/// of reports since the previous line, itself included.
struct ClientReports {
    /// Reports seen so far.
    total: AtomicU64,
    throttle: Throttle,
    /// The last client error: rdkafka 0.39 hands each error event to the context twice in a row
    /// (once in `Client::poll_event`, once more in `BaseProducer::poll`), and one event must be
    /// counted once.
    last_error: Mutex<Option<LastError>>,
}

struct LastError {
    code: Option<RDKafkaErrorCode>,
    reason: String,
    at: Instant,
}

/// Two identical client errors closer than this are one event handed over twice. librdkafka's
/// own repeats are at least a reconnection back-off apart.
const SAME_EVENT: Duration = Duration::from_millis(5);

impl ClientReports {
    fn new() -> Self {
        Self {
            total: AtomicU64::new(0),
            throttle: Throttle::real_time(),
            last_error: Mutex::new(None),
        }
    }

    /// Counts one report; returns how many there were since the last line if a line is due.
    fn due(&self) -> Option<u64> {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        self.throttle.poll(total)
    }

    /// Whether this client error is the one just seen, handed over a second time.
    fn repeated(&self, code: Option<RDKafkaErrorCode>, reason: &str, now: Instant) -> bool {
        // A poisoned lock only means a log call panicked; the last error is still usable.
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        let repeated = last.as_ref().is_some_and(|last| {
            last.code == code
                && last.reason == reason
                && now.saturating_duration_since(last.at) < SAME_EVENT
        });
        *last = Some(LastError {
            code,
            reason: reason.to_owned(),
            at: now,
        });
        repeated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_handed_over_twice_is_one_event() {
        let reports = ClientReports::new();
        let code = Some(RDKafkaErrorCode::BrokerTransportFailure);
        let down = Some(RDKafkaErrorCode::AllBrokersDown);
        let t0 = Instant::now();
        assert!(!reports.repeated(code, "connect failed", t0));
        assert!(
            reports.repeated(code, "connect failed", t0),
            "the second copy"
        );
        assert!(
            !reports.repeated(code, "1/1 brokers are down", t0),
            "another reason"
        );
        assert!(
            !reports.repeated(down, "1/1 brokers are down", t0),
            "another code"
        );
        let later = t0 + SAME_EVENT;
        assert!(
            !reports.repeated(down, "1/1 brokers are down", later),
            "the same error a back-off later is a new event"
        );
    }
}
