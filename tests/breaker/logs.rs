//! What the breaker logs.

use tokio::time::{self};
use tracing::Level;

use crate::support::breaker::*;
use crate::support::capture::{Capture, Logged};

// ===== tracing =====

fn summary(events: &[Logged]) -> Vec<(Level, &str)> {
    events
        .iter()
        .map(|e| (e.level, e.message.as_str()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn transitions_are_logged_warn_on_open_and_info_on_half_open_and_close() {
    let (capture, _guard) = Capture::start();
    let layer = consecutive(2)
        .name("stats")
        .open_for(secs(1))
        .build()
        .unwrap();
    let (mut svc, mut mock, _handle) = spawn(layer);

    for _ in 0..100 {
        succeed(&mut svc, &mut mock).await;
    }
    fail(&mut svc, &mut mock).await;
    assert!(
        capture.take_loud().is_empty(),
        "nothing at info or above for ordinary calls"
    );

    fail(&mut svc, &mut mock).await;
    let events = capture.take_loud();
    assert_eq!(summary(&events), [(Level::WARN, "circuit breaker opened")]);
    let fields = &events[0].fields;
    assert_eq!(fields["breaker"], "stats");
    assert_eq!(fields["from"], "closed");
    assert_eq!(fields["to"], "open");
    assert_eq!(fields["reason"], "consecutive failures");
    assert_eq!(fields["open_for_ms"], "1000");

    for _ in 0..20 {
        reject(&mut svc, &mut mock);
    }
    assert!(
        capture.take_loud().is_empty(),
        "nothing at info or above per rejection"
    );

    time::advance(secs(1)).await;
    succeed(&mut svc, &mut mock).await;
    let events = capture.take_loud();
    assert_eq!(
        summary(&events),
        [
            (Level::INFO, "circuit breaker half-open"),
            (Level::INFO, "circuit breaker closed")
        ]
    );
    assert_eq!(events[1].fields["breaker"], "stats");
    assert_eq!(events[1].fields["from"], "half-open");
    assert_eq!(events[1].fields["to"], "closed");

    for _ in 0..100 {
        succeed(&mut svc, &mut mock).await;
    }
    assert!(capture.take_loud().is_empty());
}

#[tokio::test(start_paused = true)]
async fn failed_probes_and_operator_overrides_are_logged() {
    let (capture, _guard) = Capture::start();
    let layer = consecutive(1)
        .name("redis")
        .open_for(secs(1))
        .backoff(2.0, secs(60))
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;
    fail(&mut svc, &mut mock).await;
    let events = capture.take_loud();
    assert_eq!(
        summary(&events),
        [
            (Level::WARN, "circuit breaker opened"),
            (Level::INFO, "circuit breaker half-open"),
            (Level::WARN, "circuit breaker opened"),
        ]
    );
    assert_eq!(events[2].fields["reason"], "probe failed");
    assert_eq!(events[2].fields["open_for_ms"], "2000");

    handle.force_open();
    handle.force_closed();
    handle.reset();
    let events = capture.take_loud();
    assert_eq!(
        summary(&events),
        [
            (Level::WARN, "circuit breaker forced open"),
            (Level::INFO, "circuit breaker forced closed"),
            (Level::INFO, "circuit breaker closed"),
        ]
    );
    assert!(events.iter().all(|e| e.fields["breaker"] == "redis"));
}
