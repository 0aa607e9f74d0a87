//! The tower contract, and Send + Sync.

use tanker::breaker::{
    Breaker, BreakerBuilder, BreakerCounts, BreakerHandle, BreakerLayer, BreakerOpen, BreakerState,
    Outcome,
};
use tanker::ConfigError;
use tokio_test::assert_ready_ok;
use tower::{BoxError, Service};

use crate::support::breaker::*;

// ===== the tower contract =====

#[test]
#[should_panic(expected = "Breaker::call without a successful poll_ready")]
fn calling_without_poll_ready_panics() {
    let (mut svc, _mock, _handle) = spawn(BreakerLayer::new());
    drop(svc.call(1));
}

#[tokio::test]
#[should_panic(expected = "Breaker::call without a successful poll_ready")]
async fn one_poll_ready_admits_only_one_call() {
    let (mut svc, _mock, _handle) = spawn(BreakerLayer::new());
    assert_ready_ok!(svc.poll_ready());
    let _first = svc.call(1);
    let _second = svc.call(2);
}

// ===== Send + Sync =====

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    type Classifier = fn(Result<&u32, &BoxError>) -> Outcome;

    assert_send_sync::<Breaker<Mock>>();
    assert_send_sync::<Breaker<Mock, Classifier>>();
    assert_send_sync::<BreakerLayer>();
    assert_send_sync::<BreakerLayer<Classifier>>();
    assert_send_sync::<BreakerBuilder>();
    assert_send_sync::<BreakerHandle>();
    assert_send_sync::<<Breaker<Mock> as Service<u32>>::Future>();
    assert_send_sync::<<Breaker<Mock, Classifier> as Service<u32>>::Future>();
    assert_send_sync::<BreakerOpen>();
    assert_send_sync::<BreakerCounts>();
    assert_send_sync::<BreakerState>();
    assert_send_sync::<ConfigError>();
};
