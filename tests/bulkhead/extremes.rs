//! Every builder setting at its extremes: the builder refuses it with a `ConfigError` naming
//! the setting, or the compartment works, and no call panics later.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time;

use tanker::bulkhead::BulkheadLayer;

use crate::support::bulkhead::*;

fn count() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(2),
        Just(u32::MAX as usize),
        Just(u32::MAX as usize + 1),
        Just(usize::MAX),
        1..5usize,
    ]
}

fn wait() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(MAX_WAIT),
        Just(Duration::from_secs(u64::MAX)),
        Just(Duration::MAX),
    ]
}

/// What the builder must say of these settings: `None` when they are valid.
fn refused(max: usize, room: Option<(usize, Duration)>) -> Option<&'static str> {
    if max == 0 || max > u32::MAX as usize {
        return Some("max_in_flight");
    }
    match room {
        Some((capacity, max_wait))
            if capacity == 0 || capacity > u32::MAX as usize || max_wait.is_zero() =>
        {
            Some("waiting_room")
        }
        _ => None,
    }
}

/// Fills the compartment (at most a few slots), makes one caller more wait or be shed, lets
/// time pass, frees everything, and checks the counters.
async fn exercise(bulkhead: BulkheadLayer, room: Option<(usize, Duration)>) {
    let counters = bulkhead.handle();
    let fill = counters.max_in_flight().min(3);
    let (mut svc, mut handle) = spawn(&bulkhead);
    let mut calls = Vec::new();
    for _ in 0..fill {
        calls.push(admit(&mut svc, &mut handle, "fill").await);
    }
    let mut extra = svc.clone();
    let extra_ready = extra.poll_ready();
    time::advance(Duration::from_secs(86_400)).await;
    let _ = extra.poll_ready();
    for (fut, send) in calls.drain(..) {
        send.send_response("ok");
        drop(fut);
    }
    let _ = extra.poll_ready();
    drop(extra);
    assert_eq!(counters.counts().in_flight, 0);
    assert_eq!(counters.counts().waiting, 0);
    assert_eq!(counters.counts().admitted, fill as u64);
    if counters.max_in_flight() > fill {
        assert!(extra_ready.is_ready(), "a free slot, yet the caller waited");
    } else if room.is_none() {
        assert!(extra_ready.is_ready(), "no room, yet the caller waited");
    }
    // The compartment still works afterwards.
    let (_f, _s) = admit(&mut svc, &mut handle, "after").await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn extreme_settings_are_refused_or_work(
        max in count(),
        room in prop::option::of((count(), wait())),
    ) {
        let mut builder = BulkheadLayer::builder().max_in_flight(max);
        if let Some((capacity, max_wait)) = room {
            builder = builder.waiting_room(capacity, max_wait);
        }
        match (builder.build(), refused(max, room)) {
            (Err(err), Some(setting)) => {
                prop_assert_eq!(err.setting(), setting);
                prop_assert!(!err.to_string().is_empty());
            }
            (Ok(bulkhead), None) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .start_paused(true)
                    .build()
                    .unwrap();
                runtime.block_on(exercise(bulkhead, room));
            }
            (Ok(_), Some(setting)) => prop_assert!(false, "{} was accepted", setting),
            (Err(err), None) => prop_assert!(false, "valid settings refused: {}", err),
        }
    }
}
