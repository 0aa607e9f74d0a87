//! The tower contract: `call` without `poll_ready` panics, and the public types are `Send + Sync`.

use tokio_test::assert_ready_ok;
use tower::Service;
use tower_test::mock;

use tanker::bulkhead::future::ResponseFuture;
use tanker::bulkhead::{Bulkhead, BulkheadFull, BulkheadHandle, BulkheadLayer};
use tanker::ConfigError;

use crate::support::bulkhead::*;

#[tokio::test(start_paused = true)]
#[should_panic(expected = "poll_ready")]
async fn call_without_poll_ready_panics() {
    let (mut svc, _handle) = spawn(&layer(1));
    drop(svc.call("a"));
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "poll_ready")]
async fn a_second_call_after_one_poll_ready_panics() {
    let (mut svc, _handle) = spawn(&layer(2));
    assert_ready_ok!(svc.poll_ready());
    let _first = svc.call("a");
    drop(svc.call("b"));
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "poll_ready")]
async fn a_clone_of_a_ready_service_panics_when_called_without_poll_ready() {
    let (mut svc, _handle) = spawn(&layer(1));
    assert_ready_ok!(svc.poll_ready());
    let mut clone = svc.clone();
    drop(clone.call("a"));
}

#[test]
fn public_types_are_send_sync_and_static() {
    fn send_sync<T: Send + Sync>() {}
    fn send_sync_static<T: Send + Sync + 'static>() {}

    // For any inner service and future, not only the mock.
    fn generic<S: Send + Sync, F: Send + Sync>() {
        send_sync::<Bulkhead<S>>();
        send_sync::<ResponseFuture<F>>();
    }
    fn generic_static<S: Send + Sync + 'static, F: Send + Sync + 'static>() {
        send_sync_static::<Bulkhead<S>>();
        send_sync_static::<ResponseFuture<F>>();
    }
    generic::<MockSvc, mock::future::ResponseFuture<Res>>();
    generic_static::<MockSvc, mock::future::ResponseFuture<Res>>();

    send_sync_static::<BulkheadLayer>();
    send_sync_static::<BulkheadHandle>();
    send_sync_static::<BulkheadFull>();
    send_sync_static::<ConfigError>();
    send_sync_static::<<Bulkhead<MockSvc> as Service<Req>>::Future>();
    // One word, its domain: boxing it for a shed call is one small allocation.
    assert_eq!(std::mem::size_of::<BulkheadFull>(), 8);
}
