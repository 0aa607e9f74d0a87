//! A panicking inner service gives its slot back.

use std::convert::Infallible;

use tower::{service_fn, Layer, Service, ServiceExt};

use tanker::bulkhead::BulkheadLayer;

use crate::support::bulkhead::*;

/// An inner service whose `call` panics for a request of `true`.
fn panicking_inner() -> impl Service<
    bool,
    Response = (),
    Error = Infallible,
    Future = std::future::Ready<Result<(), Infallible>>,
> + Clone {
    service_fn(|boom: bool| {
        assert!(!boom, "the inner call panicked");
        std::future::ready(Ok(()))
    })
}

async fn panic_in_inner_call_gives_the_slot_back(bulkhead: BulkheadLayer) {
    let cap = bulkhead.handle().max_in_flight();
    let mut svc = bulkhead.layer(panicking_inner());
    for _ in 0..cap + 2 {
        svc.ready().await.expect("never an error");
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| svc.call(true)));
        assert!(unwound.is_err(), "the inner call should have panicked");
        assert_eq!(
            bulkhead.handle().counts().in_flight,
            0,
            "a panic leaked a slot"
        );
    }
    svc.ready().await.expect("never an error");
    svc.call(false)
        .await
        .expect("after panics, calls must still get through");
    assert_eq!(bulkhead.handle().counts().shed, 0);
    assert_eq!(bulkhead.handle().counts().admitted, cap as u64 + 3);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_inner_call_gives_the_slot_back() {
    panic_in_inner_call_gives_the_slot_back(layer(2)).await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_inner_call_gives_a_held_slot_back() {
    panic_in_inner_call_gives_the_slot_back(layer_with_room(2, 1, MAX_WAIT)).await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_inner_future_gives_the_slot_back() {
    let bulkhead = layer(1);
    let mut svc = bulkhead.layer(service_fn(|boom: bool| async move {
        assert!(!boom, "the inner future panicked");
        Ok::<_, Infallible>(())
    }));
    for _ in 0..3 {
        let fut = svc.ready().await.expect("never an error").call(true);
        let unwound = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut)).await;
        assert!(unwound.is_err());
    }
    svc.ready().await.unwrap().call(false).await.unwrap();
    assert_eq!(bulkhead.handle().counts().in_flight, 0);
}
