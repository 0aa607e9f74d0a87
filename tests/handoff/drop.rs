//! Dropping the handles: what was queued is still delivered, then the worker ends.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time;
use tower::{service_fn, BoxError, Service};

use crate::support::handoff::*;

/// A service that says when it is dropped (which happens when the worker task ends).
#[derive(Debug, Clone)]
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Service<u32> for DropFlag {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn records_queued_when_the_last_handle_is_dropped_are_still_delivered() {
    let delivered = Arc::new(AtomicU64::new(0));
    let inner = {
        let delivered = delivered.clone();
        service_fn(move |_: u32| {
            delivered.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        })
    };
    let handoff = builder(16, 2).spawn(inner).unwrap();
    assert_eq!(send_many(&handoff, 0..10), 10);
    drop(handoff);
    for _ in 0..100 {
        run_worker().await;
        time::advance(TICK).await;
    }
    assert_eq!(delivered.load(Ordering::SeqCst), 10);
}

/// Like tower's `Buffer`, the worker should end once no handle can send any more and the queue
/// is drained, instead of ticking forever and keeping the service (a Kafka producer, say) alive.
#[tokio::test(start_paused = true)]
async fn dropping_every_handle_ends_the_worker_and_drops_the_service() {
    let dropped = Arc::new(AtomicBool::new(false));
    let handoff = builder(16, 2).spawn(DropFlag(dropped.clone())).unwrap();
    let clone = handoff.clone();
    assert_eq!(send_many(&handoff, 0..3), 3);
    drop(handoff);
    run_worker().await;
    assert!(!dropped.load(Ordering::SeqCst), "a clone can still send");
    drop(clone);
    for _ in 0..1_000 {
        run_worker().await;
        if dropped.load(Ordering::SeqCst) {
            return;
        }
        time::advance(TICK).await;
    }
    panic!("the worker still runs (and holds the service) 1 s after the last handle was dropped");
}
