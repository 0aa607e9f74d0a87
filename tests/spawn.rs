//! A task spawned per call: the two ways around rustc's "implementation of `From` is not general
//! enough" (see "Spawning calls" in the crate docs), for the bulkhead and the breaker. The trap
//! itself is reproduced by `compile_fail` doc tests in `src/lib.rs` (`spawn_trap`): if rustc ever
//! accepts them, those tests fail and the docs must change.

use std::future::poll_fn;

use tanker::breaker::BreakerLayer;
use tanker::bulkhead::BulkheadLayer;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

/// An inner service whose error type is `BoxError` and whose future awaits: what triggers it.
fn dependency() -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send
{
    service_fn(|n: u64| async move {
        tokio::task::yield_now().await;
        if n == 0 {
            Err::<u64, BoxError>("zero".into())
        } else {
            Ok(n)
        }
    })
}

#[tokio::test]
async fn boxed_stacks_can_be_called_from_a_task_per_call() {
    let bulkhead = ServiceBuilder::new()
        .boxed_clone()
        .layer(BulkheadLayer::new(4).unwrap())
        .service(dependency());
    let breaker = ServiceBuilder::new()
        .boxed_clone()
        .layer(BreakerLayer::builder().build().unwrap())
        .service(dependency());
    let calls = (1..=3).flat_map(|n| {
        [
            tokio::spawn(bulkhead.clone().oneshot(n)),
            tokio::spawn(breaker.clone().oneshot(n)),
        ]
    });
    for call in calls.collect::<Vec<_>>() {
        assert!(call.await.unwrap().unwrap() >= 1);
    }
    let failed = tokio::spawn(bulkhead.oneshot(0)).await.unwrap();
    assert_eq!(failed.unwrap_err().to_string(), "zero");
}

#[tokio::test]
async fn unboxed_stacks_can_be_called_from_a_task_polling_by_hand() {
    let mut bulkhead = BulkheadLayer::new(4).unwrap().layer(dependency());
    let mut breaker = BreakerLayer::builder().build().unwrap().layer(dependency());
    let through_bulkhead = tokio::spawn(async move {
        poll_fn(|cx| bulkhead.poll_ready(cx)).await?;
        bulkhead.call(1).await
    });
    let through_breaker = tokio::spawn(async move {
        poll_fn(|cx| breaker.poll_ready(cx)).await?;
        breaker.call(2).await
    });
    assert_eq!(through_bulkhead.await.unwrap().unwrap(), 1);
    assert_eq!(through_breaker.await.unwrap().unwrap(), 2);
}
