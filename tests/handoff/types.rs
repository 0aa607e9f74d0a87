//! Types, clones and names: `Send + Sync`, clones share the queue, the counts' helpers.

use std::cell::Cell;
use std::time::Duration;

use tanker::handoff::{CloseReport, Handoff, HandoffBuilder, HandoffCounts, Sent};

use crate::support::handoff::*;

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn public_types_are_send_and_sync() {
    assert_send_sync::<Handoff<String>>();
    // A record only has to be `Send`.
    assert_send_sync::<Handoff<Cell<u64>>>();
    assert_send_sync::<HandoffCounts>();
    assert_send_sync::<CloseReport>();
    assert_send_sync::<Sent>();
    assert_send_sync::<HandoffBuilder>();
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_queue_the_counters_and_the_name() {
    let handoff = Handoff::builder()
        .capacity(3)
        .name("stats")
        .spawn(instant_ok::<u32>())
        .unwrap();
    let clone = handoff.clone();
    assert_eq!(clone.name(), "stats");
    assert!(format!("{handoff:?}").contains("stats"));

    assert_eq!(handoff.send(1), Sent::Accepted);
    assert_eq!(clone.send(2), Sent::Accepted);
    assert_eq!(clone.clone().send(3), Sent::Accepted);
    assert_eq!(handoff.send(4), Sent::Dropped, "one queue for all clones");
    assert_eq!(handoff.counts(), clone.counts());
    assert_eq!(clone.counts().accepted, 3);
    assert_eq!(clone.counts().dropped, 1);

    let counts = settle(&clone).await;
    assert_eq!(handoff.counts(), counts);
    assert_eq!(counts.delivered, 3);

    // Closing one closes all.
    assert!(handoff.close(Duration::from_secs(1)).await.drained);
    assert!(clone.is_closed());
    assert_eq!(clone.send(5), Sent::Dropped);
}

#[test]
fn counts_helpers_add_up() {
    // `HandoffCounts` is non-exhaustive: users can only fill a default.
    let mut counts = HandoffCounts::default();
    counts.offered = 20;
    counts.accepted = 15;
    counts.dropped = 5;
    counts.delivered = 6;
    counts.shed = 1;
    counts.rejected = 2;
    counts.failed = 3;
    counts.queued = 2;
    counts.in_flight = 1;
    assert_eq!(counts.pending(), 3);
    assert_eq!(counts.finished(), 12);
    assert_eq!(counts.ignored(), 11);
    assert!(counts.is_balanced());
    let mut unbalanced = counts;
    unbalanced.delivered += 1;
    assert!(!unbalanced.is_balanced());
    let mut unbalanced = counts;
    unbalanced.offered += 1;
    assert!(!unbalanced.is_balanced());
}
