//! A broken service closes the hand-off and loses no record.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::handoff::*;

#[tokio::test(start_paused = true)]
async fn a_service_whose_poll_ready_fails_closes_the_handoff_and_loses_no_record() {
    let service = Breakable::default();
    service.broken.store(true, Ordering::SeqCst);
    let handoff = builder(16, 4).spawn(service.clone()).unwrap();

    assert_eq!(send_many(&handoff, 0..10), 10);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(
        counts.failed, 10,
        "the record being started and the queued ones fail"
    );
    assert_eq!(counts.delivered, 0);
    assert_eq!(service.calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        service.polls.load(Ordering::SeqCst),
        1,
        "a service whose poll_ready failed is not polled again"
    );
    assert!(handoff.is_closed(), "a dead service closes the hand-off");

    // Later records are dropped, not accepted and failed, and close returns at once.
    assert_eq!(send_many(&handoff, 10..30), 0);
    let report = handoff.close(Duration::from_secs(1)).await;
    assert!(report.drained);
    assert_quiescent(&report.counts);
    assert_eq!(report.counts.failed, 10);
    assert_eq!(report.counts.dropped, 20);
    assert_eq!(report.counts.dropped_closed, 20);
}

#[tokio::test(start_paused = true)]
async fn a_service_that_breaks_later_closes_the_handoff_and_every_record_is_counted() {
    let service = Breakable::default();
    let handoff = builder(16, 2).spawn(service.clone()).unwrap();

    assert_eq!(send_many(&handoff, 0..3), 3);
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 3);

    service.broken.store(true, Ordering::SeqCst);
    assert_eq!(send_many(&handoff, 3..7), 4);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.failed, 4);
    let polls = service.polls.load(Ordering::SeqCst);

    // Even if the service would be ready again, a dead service is not polled again: the
    // hand-off is closed.
    service.broken.store(false, Ordering::SeqCst);
    assert_eq!(send_many(&handoff, 7..12), 0);
    let counts = settle(&handoff).await;
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 3);
    assert_eq!(counts.failed, 4);
    assert_eq!(counts.dropped_closed, 5);
    assert_eq!(service.polls.load(Ordering::SeqCst), polls);
    assert_eq!(service.calls.load(Ordering::SeqCst), 3);
}
