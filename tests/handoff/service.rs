//! The `Service` impl: always ready, answers at once, composes with tower.

use std::convert::Infallible;
use std::future::Ready;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::noop_waker;
use futures::FutureExt;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

use tanker::handoff::Sent;

use crate::support::handoff::*;

/// Compile-time check: the hand-off is a service that cannot fail and answers with `Sent`.
fn assert_infallible_service<S, Req>(_: &S)
where
    S: Service<Req, Response = Sent, Error = Infallible, Future = Ready<Result<Sent, Infallible>>>,
{
}

#[tokio::test(start_paused = true)]
async fn the_service_is_always_ready_and_answers_at_once() {
    let handoff = builder(2, 1).spawn(instant_ok::<u32>()).unwrap();
    assert_infallible_service::<_, u32>(&handoff);

    let mut svc = handoff.clone();
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    for (request, expected) in [(1, Sent::Accepted), (2, Sent::Accepted), (3, Sent::Dropped)] {
        assert_eq!(svc.poll_ready(&mut cx), Poll::Ready(Ok(())));
        let answer = svc.call(request).now_or_never();
        assert_eq!(answer, Some(Ok(expected)), "request {request}");
    }
    // Ready even with the queue full.
    assert_eq!(svc.poll_ready(&mut cx), Poll::Ready(Ok(())));

    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.offered, 3);
    assert_eq!(counts.delivered, 2);
    assert_eq!(counts.dropped, 1);
}

#[tokio::test(start_paused = true)]
async fn the_service_composes_with_service_builder_and_oneshot() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let seen = seen.clone();
        service_fn(move |n: u32| {
            seen.lock().unwrap().push(n);
            async { Ok::<_, BoxError>(()) }
        })
    };
    let handoff = builder(8, 2).spawn(inner).unwrap();

    let svc = ServiceBuilder::new()
        .map_request(|n: u32| n * 10)
        .service(handoff.clone());
    assert_eq!(svc.clone().oneshot(4).await, Ok(Sent::Accepted));
    let mut svc = svc;
    assert_eq!(svc.ready().await.unwrap().call(5).await, Ok(Sent::Accepted));

    // With tower's own load shedding and timeout around it: the hand-off is always ready, so
    // nothing is ever shed by `LoadShed`, and nothing waits.
    let mut guarded = ServiceBuilder::new()
        .load_shed()
        .timeout(Duration::from_millis(1))
        .service(handoff.clone());
    let sent = guarded.ready().await.unwrap().call(6).await.unwrap();
    assert_eq!(sent, Sent::Accepted);

    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 3);
    assert_eq!(*seen.lock().unwrap(), vec![40, 50, 6]);
}
