//! Defaults and configuration.

use std::time::Duration;

use tanker::breaker::{BreakerBuilder, BreakerLayer, BreakerState};
use tanker::ConfigError;
use tower::{service_fn, Layer};

use crate::support::breaker::*;

// ===== defaults =====

#[tokio::test(start_paused = true)]
async fn defaults_trip_after_five_failures_and_cool_down_about_half_a_second() {
    let layer = BreakerLayer::new();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(echo));

    drive(&mut svc, Err("down"), 4).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    drive(&mut svc, Err("down"), 1).await;
    assert_eq!(handle.state(), BreakerState::Open);

    let cool_down = echo_rejected(&mut svc).await.retry_after().unwrap();
    // 500 ms, less up to 10 % of jitter.
    assert!((ms(450)..=ms(500)).contains(&cool_down), "{cool_down:?}");
}

// ===== configuration =====

#[test]
fn bad_settings_are_refused_with_the_setting_named() {
    type Spoil = fn(BreakerBuilder) -> BreakerBuilder;
    let cases: &[(&str, Spoil)] = &[
        ("failure_rate", |b| b.failure_rate(0.0)),
        ("failure_rate", |b| b.failure_rate(-0.5)),
        ("failure_rate", |b| b.failure_rate(1.01)),
        ("failure_rate", |b| b.failure_rate(f64::NAN)),
        ("consecutive_failures", |b| b.consecutive_failures(0)),
        ("slow_calls", |b| b.slow_calls(secs(1), 0.0)),
        ("slow_calls", |b| b.slow_calls(secs(1), 2.0)),
        ("slow_calls", |b| b.slow_calls(Duration::ZERO, 0.5)),
        ("window", |b| b.window(Duration::ZERO, 10)),
        ("window", |b| b.window(secs(10), 0)),
        ("window", |b| b.window(secs(10), 1001)),
        ("window", |b| b.window(ms(5), 10)),
        ("minimum_calls", |b| b.minimum_calls(0)),
        ("open_for", |b| b.open_for(Duration::ZERO)),
        ("backoff", |b| b.open_for(secs(10)).backoff(2.0, secs(5))),
        ("backoff", |b| b.backoff(0.5, secs(60))),
        ("backoff", |b| b.backoff(f64::INFINITY, secs(60))),
        ("jitter", |b| b.jitter(1.0)),
        ("jitter", |b| b.jitter(-0.1)),
        ("probes", |b| b.probes(0)),
        ("probe_timeout", |b| b.probe_timeout(Duration::ZERO)),
        ("failure_rate", |b| {
            b.no_consecutive_failures().no_failure_rate()
        }),
    ];
    for (setting, spoil) in cases {
        let err: ConfigError = spoil(BreakerLayer::builder()).build().expect_err(setting);
        assert_eq!(err.setting(), *setting, "{err}");
        assert!(err.to_string().contains(setting), "{err}");
    }
}

#[test]
fn settings_at_the_edge_of_the_range_are_accepted() {
    type Edge = fn(BreakerBuilder) -> BreakerBuilder;
    let cases: &[(&str, Edge)] = &[
        ("rate of 1", |b| b.failure_rate(1.0)),
        ("no jitter", |b| b.jitter(0.0)),
        ("jitter just below 1", |b| b.jitter(0.99)),
        ("1 ms buckets", |b| b.window(secs(1), 1000)),
        ("one bucket", |b| b.window(secs(1), 1)),
        ("constant cool-down", |b| {
            b.open_for(secs(5)).backoff(1.0, secs(5))
        }),
        ("slow calls only", |b| {
            b.no_consecutive_failures()
                .no_failure_rate()
                .slow_calls(ms(1), 1.0)
        }),
        ("consecutive failures only", |b| b.no_failure_rate()),
        ("failure rate only", |b| b.no_consecutive_failures()),
    ];
    for (what, edge) in cases {
        if let Err(err) = edge(BreakerLayer::builder()).build() {
            panic!("{what}: {err}");
        }
    }
}
