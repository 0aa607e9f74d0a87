//! `close`: drains what was accepted, drops later sends, reports what was left at the deadline.

use std::time::Duration;

use tokio::time::Instant;
use tower::ServiceExt;
use tower_test::mock;

use tanker::handoff::{CloseReport, HandoffCounts, Sent};

use crate::support::handoff::*;
use crate::support::DependencyDown;

#[tokio::test(start_paused = true)]
async fn close_drains_queued_and_in_flight_records_and_drops_later_sends() {
    let dependency = Dependency::default();
    let handoff = builder(16, 2).spawn(dependency.clone()).unwrap();
    assert_eq!(send_many(&handoff, [Fate::Slow; 10]), 10);
    run_worker().await;
    assert_eq!(handoff.counts().in_flight, 2);
    assert_eq!(handoff.counts().queued, 8);

    let start = Instant::now();
    let report = handoff.close(Duration::from_secs(5)).await;
    let took = Instant::now() - start;
    assert!(report.drained, "{report:?}");
    assert_eq!(report.left, 0);
    assert_quiescent(&report.counts);
    assert_eq!(report.counts.delivered, 10);
    // Five rounds of two slow calls, and no waiting for the deadline.
    assert!(took >= SLOW * 5 && took < SLOW * 5 + TICK * 5, "{took:?}");
    assert!(handoff.is_closed());

    // Later sends, through any clone or the Service impl, are dropped and counted.
    let clone = handoff.clone();
    assert_eq!(handoff.send(Fate::Deliver), Sent::Dropped);
    assert_eq!(clone.send(Fate::Deliver), Sent::Dropped);
    assert_eq!(
        clone.clone().oneshot(Fate::Deliver).await,
        Ok(Sent::Dropped)
    );
    let counts = handoff.counts();
    assert_quiescent(&counts);
    assert_eq!(counts.dropped, 3);
    assert_eq!(counts.accepted, 10);
    assert_eq!(dependency.calls(), 10);
}

#[tokio::test(start_paused = true)]
async fn close_of_an_idle_handoff_returns_at_once() {
    let handoff = builder(4, 1).spawn(instant_ok::<u32>()).unwrap();
    run_worker().await;
    let start = Instant::now();
    let report = handoff.close(Duration::from_secs(30)).await;
    assert!(report.drained);
    assert_eq!(report.left, 0);
    assert_eq!(report.counts, HandoffCounts::default());
    assert!(
        Instant::now() - start < TICK,
        "{:?}",
        Instant::now() - start
    );

    // Closing again reports the same, at once.
    let again = handoff.close(Duration::from_secs(30)).await;
    assert_eq!(again, report);
    assert!(Instant::now() - start < TICK);
}

#[tokio::test(start_paused = true)]
async fn close_before_the_worker_ever_ran_still_drains() {
    let handoff = builder(4, 1).spawn(instant_ok::<u32>()).unwrap();
    assert_eq!(send_many(&handoff, 0..3), 3);
    let report = handoff.close(Duration::from_secs(1)).await;
    assert!(report.drained);
    assert_quiescent(&report.counts);
    assert_eq!(report.counts.delivered, 3);
}

#[tokio::test(start_paused = true)]
async fn close_with_a_hung_dependency_returns_at_the_deadline_with_what_is_left() {
    let (service, mut handle) = mock::pair::<u32, ()>();
    let handoff = builder(8, 2).spawn(service).unwrap();
    assert_eq!(send_many(&handoff, 0..5), 5);
    run_worker().await;
    let hung = take_requests(&mut handle);
    assert_eq!(hung.len(), 2);

    let deadline = Duration::from_millis(250);
    let start = Instant::now();
    let report: CloseReport = handoff.close(deadline).await;
    assert_eq!(Instant::now() - start, deadline);
    assert!(!report.drained);
    assert_eq!(report.left, 5);
    assert_eq!(report.left, report.counts.pending());
    assert_eq!(report.counts.in_flight, 2);
    assert_eq!(report.counts.queued, 3);
    assert!(report.counts.is_balanced(), "{report:?}");
    assert_eq!(handoff.send(99), Sent::Dropped);

    // The worker keeps driving what was left, and counts it when it finishes.
    for (_, respond) in hung {
        respond.send_response(());
    }
    let answer = tokio::spawn(async move {
        for _ in 0..3 {
            let (_, respond) = handle.next_request().await.expect("the worker calls");
            respond.send_error(DependencyDown);
        }
        handle
    });
    let counts = settle(&handoff).await;
    let _handle = answer.await.unwrap();
    assert_quiescent(&counts);
    assert_eq!(counts.delivered, 2);
    assert_eq!(counts.failed, 3);
    assert_eq!(counts.dropped, 1);

    // The worker has now finished: a second close reports drained at once.
    let start = Instant::now();
    let report = handoff.close(deadline).await;
    assert!(report.drained);
    assert_eq!(report.left, 0);
    assert!(Instant::now() - start < TICK);
}

#[tokio::test(start_paused = true)]
async fn close_with_a_service_that_is_never_ready_reports_the_held_record_as_left() {
    let (service, mut handle) = mock::pair::<u32, ()>();
    handle.allow(0);
    let handoff = builder(8, 4).spawn(service).unwrap();
    assert_eq!(send_many(&handoff, 0..6), 6);
    let report = handoff.close(Duration::from_millis(100)).await;
    assert!(!report.drained);
    assert_eq!(report.left, 6);
    assert_eq!(
        report.counts.in_flight, 1,
        "one record held back: {report:?}"
    );
    assert_eq!(report.counts.queued, 5);
    assert!(report.counts.is_balanced());
    drop(handle);
}
