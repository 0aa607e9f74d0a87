//! A breaker classifier for the Kafka stack: the dependency's faults count, the caller's don't.

use tower::BoxError;

use super::error::{Fault, KafkaError, KafkaErrorKind};
use super::record::Delivery;
use crate::breaker::{Classify, Outcome};
use crate::Rejection;

/// Counts Kafka's own failures (timeouts, brokers down, full queue) and ignores the caller's
/// (record too large, unknown topic), so that a bad record cannot open the breaker on a healthy
/// cluster.
///
/// Works directly over a [`KafkaService`](super::KafkaService) (`KafkaError`) and over a stack of
/// layers that box errors (`BoxError`): there, a [`KafkaError`] is classified by its fault, a
/// refusal by tanker ([`Rejection::find`]: a bulkhead's `BulkheadFull` or an inner breaker's
/// `BreakerOpen`, itself or as the source of another error) is ignored (it is our own
/// back-pressure, and Kafka was not called), and any other error, such as tower's timeout, is a
/// failure.
///
/// ```
/// use tanker::breaker::BreakerLayer;
/// use tanker::kafka::FaultClassifier;
///
/// let breaker = BreakerLayer::builder().name("kafka").classify(FaultClassifier).build()?;
/// # Ok::<_, tanker::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultClassifier;

fn by_fault(error: &KafkaError) -> Outcome {
    // A compartment's refusal is tanker's own back-pressure: Kafka was not called.
    if error.kind() == KafkaErrorKind::Refused {
        return Outcome::Ignore;
    }
    match error.fault() {
        Fault::Dependency => Outcome::Failure,
        Fault::Caller => Outcome::Ignore,
    }
}

impl Classify<Delivery, KafkaError> for FaultClassifier {
    fn classify(&self, result: Result<&Delivery, &KafkaError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(error) => by_fault(error),
        }
    }
}

impl<T> Classify<T, BoxError> for FaultClassifier {
    fn classify(&self, result: Result<&T, &BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(error) => {
                if let Some(kafka) = error.downcast_ref::<KafkaError>() {
                    by_fault(kafka)
                } else if Rejection::find(error.as_ref()).is_some() {
                    Outcome::Ignore
                } else {
                    Outcome::Failure
                }
            }
        }
    }
}
