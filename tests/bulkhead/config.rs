//! Configuration: invalid settings are refused with a `ConfigError` naming the setting.

use std::time::Duration;

use tanker::bulkhead::BulkheadLayer;
use tanker::ConfigError;

use crate::support::bulkhead::*;

#[test]
fn zero_max_in_flight_is_refused() {
    let err: ConfigError = BulkheadLayer::new(0).unwrap_err();
    assert_eq!(err.setting(), "max_in_flight");
    let message = err.to_string();
    assert!(message.contains("max_in_flight"), "{message}");
    assert!(message.contains("at least 1"), "{message}");

    let err = BulkheadLayer::builder()
        .max_in_flight(0)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "max_in_flight");
}

#[test]
fn waiting_room_with_no_capacity_is_refused() {
    let err = BulkheadLayer::builder()
        .waiting_room(0, MAX_WAIT)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "waiting_room");
    let message = err.to_string();
    assert!(message.contains("capacity must be at least 1"), "{message}");
    assert!(message.contains("no_waiting_room()"), "{message}");
}

#[test]
fn waiting_room_with_zero_max_wait_is_refused() {
    let err = BulkheadLayer::builder()
        .waiting_room(4, Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "waiting_room");
    let message = err.to_string();
    assert!(message.contains("max_wait"), "{message}");
    assert!(message.contains("no_waiting_room()"), "{message}");
}

#[test]
fn no_waiting_room_undoes_a_waiting_room() {
    let layer = BulkheadLayer::builder()
        .waiting_room(0, Duration::ZERO)
        .no_waiting_room()
        .max_in_flight(3)
        .build()
        .expect("no waiting room is valid");
    assert_eq!(layer.handle().max_in_flight(), 3);
}

#[test]
fn builder_defaults_to_64_in_flight() {
    let layer = BulkheadLayer::builder()
        .build()
        .expect("defaults are valid");
    assert_eq!(layer.handle().max_in_flight(), 64);
    assert_eq!(layer.handle().counts().waiting, 0);
}
