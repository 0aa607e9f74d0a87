//! Configuration: invalid settings are refused with the setting named.

use std::time::Duration;

use tanker::handoff::{Handoff, Sent};

use crate::support::handoff::*;

#[tokio::test]
async fn invalid_settings_are_refused_with_the_setting_named() {
    let cases = [
        (Handoff::builder().capacity(0), "capacity"),
        (Handoff::builder().capacity(usize::MAX), "capacity"),
        (
            Handoff::builder().capacity(tanker::handoff::MAX_CAPACITY + 1),
            "capacity",
        ),
        (Handoff::builder().concurrency(0), "concurrency"),
    ];
    for (builder, setting) in cases {
        let err = builder
            .spawn(instant_ok::<u32>())
            .expect_err("an invalid setting is refused");
        let config = err.config().expect("a setting is named");
        assert_eq!(config.setting(), setting, "{err}");
        assert!(err.to_string().contains(setting), "{err}");
    }
}

#[tokio::test]
async fn settings_at_the_edges_of_their_range_are_accepted() {
    for builder in [
        Handoff::builder().capacity(1).concurrency(1),
        Handoff::builder().concurrency(usize::MAX),
        Handoff::builder().name(""),
    ] {
        let handoff = builder.spawn(instant_ok::<u32>()).expect("a valid setting");
        assert_eq!(handoff.send(1), Sent::Accepted);
        let report = handoff.close(Duration::from_secs(2)).await;
        assert!(report.drained);
        assert_eq!(report.counts.delivered, 1);
    }
}

#[test]
fn spawn_outside_a_runtime_is_refused_with_its_own_error() {
    let err = Handoff::builder()
        .spawn(instant_ok::<u32>())
        .expect_err("there is no runtime to run the worker");
    assert_eq!(err, tanker::handoff::SpawnError::NoRuntime);
    assert!(err.config().is_none());
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}
