//! Classifying outcomes, and outcomes of an earlier period.

use tanker::breaker::{BreakerOpen, BreakerState, Outcome};
use tanker::ServiceBuilderExt;
use tokio::time::{self};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{BoxError, ServiceBuilder};
use tower_test::{assert_request_eq, mock};

use crate::support::breaker::*;

// ===== classifying outcomes =====

#[tokio::test(start_paused = true)]
async fn every_error_is_a_failure_by_default() {
    let (mut svc, mut mock, handle) = spawn(consecutive(3).build().unwrap());

    fail_with(&mut svc, &mut mock, "bad request").await;
    fail_with(&mut svc, &mut mock, "timeout").await;
    fail_with(&mut svc, &mut mock, "whatever").await;

    let m = handle.counts();
    assert_eq!((m.state, m.failures, m.ignored), (BreakerState::Open, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn timeouts_inside_the_breaker_count_as_failures() {
    let layer = consecutive(2).build().unwrap();
    let handle = layer.handle();
    let (inner, mut mock) = mock::pair::<u32, u32>();
    let mut svc = mock::Spawn::new(
        ServiceBuilder::new()
            .breaker(layer)
            .timeout(ms(100))
            .service(inner),
    );

    for _ in 0..2 {
        assert_ready_ok!(svc.poll_ready());
        let mut response = task::spawn(svc.call(1));
        let _unanswered = assert_request_eq!(mock, 1);
        assert_pending!(response.poll());
        time::advance(ms(100)).await;
        let err = assert_ready_err!(response.poll());
        assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    }
    assert_eq!(handle.state(), BreakerState::Open);

    assert_ready_ok!(svc.poll_ready());
    let err = svc.call(1).await.unwrap_err();
    assert!(err.is::<BreakerOpen>(), "{err}");
}

fn callers_mistakes_are_ignored(result: Result<&u32, &BoxError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(err) if err.to_string() == "bad request" => Outcome::Ignore,
        Err(_) => Outcome::Failure,
    }
}

#[tokio::test(start_paused = true)]
async fn ignored_errors_never_trip_the_breaker() {
    let layer = consecutive(3)
        .failure_rate(0.5)
        .minimum_calls(5)
        .classify(callers_mistakes_are_ignored)
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);

    for _ in 0..100 {
        fail_with(&mut svc, &mut mock, "bad request").await;
    }
    let m = handle.counts();
    assert_eq!(m.state, BreakerState::Closed);
    assert_eq!((m.ignored, m.failures, m.window_calls), (100, 0, 0));
    assert_eq!(m.consecutive_failures, 0);

    // Ignored calls do not count at all: they neither add to a run of failures nor break it.
    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    fail_with(&mut svc, &mut mock, "bad request").await;
    assert_eq!(handle.state(), BreakerState::Closed);
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn an_ignored_probe_frees_its_place() {
    let layer = consecutive(1)
        .open_for(secs(1))
        .classify(callers_mistakes_are_ignored)
        .build()
        .unwrap();
    let (mut svc, mut mock, handle) = spawn(layer);
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;

    fail_with(&mut svc, &mut mock, "bad request").await; // the probe
    let m = handle.counts();
    assert_eq!(m.state, BreakerState::HalfOpen, "neither closed nor opened");
    assert_eq!((m.probes_in_flight, m.ignored, m.times_opened), (0, 1, 1));

    succeed(&mut svc, &mut mock).await; // the next probe
    assert_eq!(handle.state(), BreakerState::Closed);
}

// ===== outcomes of an earlier period =====

#[tokio::test(start_paused = true)]
async fn calls_admitted_while_closed_that_finish_after_the_breaker_opened_are_not_counted() {
    let (mut svc, mut mock, handle) = spawn(consecutive(2).open_for(secs(1)).build().unwrap());

    // Two slow calls start while the breaker is closed.
    let mut early = svc.clone();
    assert_ready_ok!(early.poll_ready());
    let mut first = task::spawn(early.call(8));
    assert_ready_ok!(early.poll_ready());
    let mut second = task::spawn(early.call(9));
    let first_send = assert_request_eq!(mock, 8);
    let second_send = assert_request_eq!(mock, 9);

    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);

    // One fails while the breaker is open: not counted.
    first_send.send_error("timeout");
    assert_ready_err!(first.poll());
    let m = handle.counts();
    assert_eq!((m.failures, m.times_opened), (2, 1));

    // The other fails while a probe is out: it is not the probe, so the breaker stays half-open.
    time::advance(secs(1)).await;
    assert_ready_ok!(svc.poll_ready());
    let probe = svc.call(1);
    let probe_send = assert_request_eq!(mock, 1);
    second_send.send_error("timeout");
    assert_ready_err!(second.poll());
    let m = handle.counts();
    assert_eq!((m.state, m.probes_in_flight), (BreakerState::HalfOpen, 1));

    probe_send.send_response(0);
    probe.await.unwrap();
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.counts().times_opened, 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_from_an_old_closed_period_does_not_count_in_the_next_one() {
    let (mut svc, mut mock, handle) = spawn(consecutive(2).open_for(secs(1)).build().unwrap());

    let mut early = svc.clone();
    assert_ready_ok!(early.poll_ready());
    let mut early_response = task::spawn(early.call(9));
    let early_send = assert_request_eq!(mock, 9);

    // The breaker opens, probes, and closes again while that call is in flight.
    fail(&mut svc, &mut mock).await;
    fail(&mut svc, &mut mock).await;
    time::advance(secs(1)).await;
    succeed(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);

    early_send.send_error("timeout");
    assert_ready_err!(early_response.poll());
    let m = handle.counts();
    assert_eq!((m.consecutive_failures, m.window_calls), (0, 0));

    // Had the old failure counted, this would be the second in a row.
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    fail(&mut svc, &mut mock).await;
    assert_eq!(handle.state(), BreakerState::Open);
}
