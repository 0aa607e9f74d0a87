//! The keyed layer: a bulkhead and a breaker per key, the key bound, eviction, the cap on open
//! keys, and the handles, driven with tower-test's mock on paused time.

use std::time::Duration;

use tanker::breaker::{BreakerBuilder, BreakerLayer, BreakerOpen, BreakerState, ErrorsAsFailures};
use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
use tanker::keyed::{Keyed, KeyedBuilder, KeyedHandle, KeyedLayer};
use tanker::Rejection;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_test::mock;

mod support;
use support::DependencyDown;

/// A request: the key (a host) and a number.
type Req = (&'static str, u32);
type Mock = mock::Mock<Req, u32>;
type Deps = mock::Handle<Req, u32>;

fn host(request: &Req) -> &'static str {
    request.0
}

/// A breaker that opens on two failures in a row, for one second, without jitter.
fn breaker() -> BreakerBuilder {
    BreakerLayer::builder()
        .consecutive_failures(2)
        .open_for(Duration::from_secs(1))
        .jitter(0.0)
}

/// The key function's type, named so that the stack's types can be written down.
type HostFn = fn(&Req) -> &'static str;
type KeyedByHost = KeyedLayer<&'static str, HostFn>;

fn builder() -> KeyedBuilder<Req, &'static str, HostFn> {
    KeyedLayer::builder(host as HostFn)
        .name("http")
        .bulkhead(BulkheadLayer::builder().max_in_flight(2))
        .breaker(breaker())
}

type Svc = Keyed<Mock, &'static str, HostFn, ErrorsAsFailures>;

fn stack(keyed: KeyedBuilder<Req, &'static str, HostFn>) -> (KeyedByHost, Svc, Deps) {
    let layer = keyed.build().expect("valid settings");
    let (inner, mut deps) = mock::pair::<Req, u32>();
    deps.allow(u64::MAX);
    let svc = layer.layer(inner);
    (layer, svc, deps)
}

/// Calls the stack and answers the call at the dependency with `reply`.
async fn round_trip(
    svc: &mut Svc,
    deps: &mut Deps,
    request: Req,
    reply: Result<u32, ()>,
) -> Result<u32, BoxError> {
    round_trip_by(svc, deps, request, reply, |svc, request| svc.call(request)).await
}

/// [`round_trip`], with `call` making the call once the service is ready.
async fn round_trip_by(
    svc: &mut Svc,
    deps: &mut Deps,
    request: Req,
    reply: Result<u32, ()>,
    call: impl FnOnce(&mut Svc, Req) -> <Svc as Service<Req>>::Future,
) -> Result<u32, BoxError> {
    svc.ready().await.unwrap();
    let call = call(svc, request);
    let (got, respond) = deps
        .next_request()
        .await
        .expect("the call reached the dependency");
    assert_eq!(got, request);
    match reply {
        Ok(n) => respond.send_response(n),
        Err(()) => respond.send_error(DependencyDown),
    }
    call.await
}

/// Calls the stack and expects a refusal that never reached the dependency.
async fn refused(svc: &mut Svc, request: Req) -> BoxError {
    svc.ready()
        .await
        .unwrap()
        .call(request)
        .await
        .expect_err("refused")
}

/// The next request the dependency sees is `request`: nothing refused before it got there.
async fn next_is(svc: &mut Svc, deps: &mut Deps, request: Req) {
    let answer = round_trip(svc, deps, request, Ok(request.1)).await.unwrap();
    assert_eq!(answer, request.1);
}

#[tokio::test(start_paused = true)]
async fn a_sick_keys_breaker_opens_while_another_key_keeps_flowing() {
    let (layer, mut svc, mut deps) = stack(builder());
    let handle = layer.handle();
    for i in 0..2 {
        let err = round_trip(&mut svc, &mut deps, ("down", i), Err(())).await;
        assert!(err.unwrap_err().is::<DependencyDown>());
    }
    let down = handle.get(&"down").expect("the key is in the table");
    assert_eq!(down.breaker().state(), BreakerState::Open);

    let err = refused(&mut svc, ("down", 9)).await;
    let open = err.downcast_ref::<BreakerOpen>().expect("BreakerOpen");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(1)));
    assert!(matches!(
        Rejection::find(err.as_ref()),
        Some(Rejection::BreakerOpen { .. })
    ));
    // The refused call never reached the dependency; the healthy key's did.
    next_is(&mut svc, &mut deps, ("up", 1)).await;
    assert_eq!(
        handle.get(&"up").unwrap().breaker().state(),
        BreakerState::Closed
    );
    assert_eq!(down.breaker().counts().rejected, 1);

    // After the cool-down, a probe closes the sick key's breaker.
    tokio::time::advance(Duration::from_secs(1)).await;
    next_is(&mut svc, &mut deps, ("down", 3)).await;
    assert_eq!(down.breaker().state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn per_key_bulkheads_bound_independently() {
    let (layer, mut svc, mut deps) = stack(builder());
    let handle = layer.handle();
    // Two calls hold both slots of key `a`.
    let first = svc.ready().await.unwrap().call(("a", 1));
    let second = svc.ready().await.unwrap().call(("a", 2));
    let err = refused(&mut svc, ("a", 3)).await;
    assert!(err.is::<BulkheadFull>());
    assert_eq!(Rejection::find(err.as_ref()), Some(Rejection::BulkheadFull));
    // Key `b` has its own two slots.
    let third = svc.ready().await.unwrap().call(("b", 1));
    let fourth = svc.ready().await.unwrap().call(("b", 2));
    assert!(refused(&mut svc, ("b", 3)).await.is::<BulkheadFull>());
    let a = handle.get(&"a").unwrap();
    let b = handle.get(&"b").unwrap();
    assert_eq!(
        (a.bulkhead().counts().in_flight, a.bulkhead().counts().shed),
        (2, 1)
    );
    assert_eq!(
        (b.bulkhead().counts().in_flight, b.bulkhead().counts().shed),
        (2, 1)
    );
    // The shed calls never reached the dependency: it saw the four admitted, in order.
    for expected in [("a", 1), ("a", 2), ("b", 1), ("b", 2)] {
        let (got, respond) = deps.next_request().await.unwrap();
        assert_eq!(got, expected);
        respond.send_response(got.1);
    }
    for (call, n) in [(first, 1), (second, 2), (third, 1), (fourth, 2)] {
        assert_eq!(call.await.unwrap(), n);
    }
    assert_eq!(a.bulkhead().counts().in_flight, 0);
    // A shed is not the dependency's failure: the breaker did not count it.
    assert_eq!(a.breaker().counts().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted_least_recently_used_first() {
    let (layer, mut svc, mut deps) = stack(builder().max_keys(3));
    let handle = layer.handle();
    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
        next_is(&mut svc, &mut deps, (key, i as u32)).await;
    }
    assert_eq!(handle.counts().keys, 3);
    // A fourth key takes the place of the oldest.
    next_is(&mut svc, &mut deps, ("d", 4)).await;
    assert_eq!(handle.counts().keys, 3);
    assert_eq!(handle.counts().evicted, 1);
    assert!(handle.get(&"a").is_none());
    // `c` is used again; then a fifth key evicts `b`, unused since before `c`'s call.
    next_is(&mut svc, &mut deps, ("c", 5)).await;
    next_is(&mut svc, &mut deps, ("e", 6)).await;
    assert!(handle.get(&"b").is_none());
    let mut keys: Vec<&str> = handle.keys().iter().map(|k| *k.key()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["c", "d", "e"]);
    assert_eq!(handle.counts().evicted, 2);
    // An evicted key comes back with fresh state.
    next_is(&mut svc, &mut deps, ("a", 7)).await;
    assert_eq!(handle.get(&"a").unwrap().bulkhead().counts().admitted, 1);
}

#[tokio::test(start_paused = true)]
async fn busy_and_open_keys_are_never_evicted_and_a_full_table_refuses_new_keys() {
    let (layer, mut svc, mut deps) = stack(builder().max_keys(2));
    let handle = layer.handle();
    // `a` has a call in flight; `b`'s breaker is open.
    let held = svc.ready().await.unwrap().call(("a", 1));
    let (_, respond_a) = deps.next_request().await.unwrap();
    for i in 0..2 {
        let _ = round_trip(&mut svc, &mut deps, ("b", i), Err(())).await;
    }
    assert_eq!(
        handle.get(&"b").unwrap().breaker().state(),
        BreakerState::Open
    );
    // A new key finds no idle key: refused with `BulkheadFull`, as a full compartment is.
    let err = refused(&mut svc, ("c", 1)).await;
    assert!(err.is::<BulkheadFull>());
    assert_eq!(handle.counts().refused, 1);
    assert_eq!(handle.counts().evicted, 0);
    assert_eq!(handle.counts().keys, 2);
    // Once `a`'s call is over, `a` is idle and makes room.
    respond_a.send_response(1);
    assert_eq!(held.await.unwrap(), 1);
    next_is(&mut svc, &mut deps, ("c", 2)).await;
    assert!(handle.get(&"a").is_none());
    assert!(handle.get(&"b").is_some(), "an open key stays");
    assert_eq!(handle.counts().evicted, 1);
}

#[tokio::test(start_paused = true)]
async fn beyond_the_open_cap_the_layer_reports_one_outage_until_a_key_heals() {
    let (layer, mut svc, mut deps) = stack(builder().max_open(1));
    let handle = layer.handle();
    next_is(&mut svc, &mut deps, ("healthy", 0)).await;
    // `a` opens, and is seen open: one open key is within the cap.
    for i in 0..2 {
        let _ = round_trip(&mut svc, &mut deps, ("a", i), Err(())).await;
    }
    assert!(refused(&mut svc, ("a", 9)).await.is::<BreakerOpen>());
    assert_eq!(handle.counts().open_keys, 1);
    assert!(!handle.outage());
    next_is(&mut svc, &mut deps, ("healthy", 1)).await;

    // `b` opens too: beyond the cap, the whole dependency is taken as down.
    tokio::time::advance(Duration::from_millis(500)).await;
    for i in 0..2 {
        let _ = round_trip(&mut svc, &mut deps, ("b", i), Err(())).await;
    }
    assert!(refused(&mut svc, ("b", 9)).await.is::<BreakerOpen>());
    assert_eq!(handle.counts().open_keys, 2);
    assert!(handle.outage());
    let err = refused(&mut svc, ("healthy", 2)).await;
    assert!(err.is::<BreakerOpen>(), "{err}");
    assert_eq!(
        handle.get(&"healthy").unwrap().breaker().state(),
        BreakerState::Closed,
        "refused by the outage, not by its own breaker"
    );

    // `a`'s cool-down ends: its probe still goes out, succeeds and closes `a`; its next call
    // takes it out of the open count, and the outage is over.
    tokio::time::advance(Duration::from_millis(500)).await;
    next_is(&mut svc, &mut deps, ("a", 10)).await;
    next_is(&mut svc, &mut deps, ("a", 11)).await;
    assert_eq!(handle.counts().open_keys, 1);
    assert!(!handle.outage());
    next_is(&mut svc, &mut deps, ("healthy", 3)).await;
}

/// A catch-all key is left out of the open count: with it open, as many other keys may be open
/// as without it before the layer takes the fault for an outage; and it is still refused with
/// the others once there is one.
#[tokio::test(start_paused = true)]
async fn an_exempt_key_does_not_count_toward_the_open_cap() {
    let (layer, mut svc, mut deps) = stack(
        builder()
            .max_open(1)
            .exempt_from_max_open(|key| *key == "unknown"),
    );
    let handle = layer.handle();
    for i in 0..2 {
        let _ = round_trip(&mut svc, &mut deps, ("unknown", i), Err(())).await;
    }
    assert!(refused(&mut svc, ("unknown", 9)).await.is::<BreakerOpen>());
    assert_eq!(
        handle.counts().open_keys,
        0,
        "the exempt key is not counted"
    );
    for i in 0..2 {
        let _ = round_trip(&mut svc, &mut deps, ("a", i), Err(())).await;
    }
    assert!(refused(&mut svc, ("a", 9)).await.is::<BreakerOpen>());
    assert_eq!(handle.counts().open_keys, 1);
    assert!(!handle.outage(), "one counted key open is within the cap");
    next_is(&mut svc, &mut deps, ("healthy", 0)).await;

    // A second counted key opens: now it is an outage, and every key is refused.
    for i in 0..2 {
        let _ = round_trip(&mut svc, &mut deps, ("b", i), Err(())).await;
    }
    assert!(refused(&mut svc, ("b", 9)).await.is::<BreakerOpen>());
    assert_eq!(handle.counts().open_keys, 2);
    assert!(handle.outage());
    assert!(refused(&mut svc, ("healthy", 1)).await.is::<BreakerOpen>());
}

#[tokio::test(start_paused = true)]
async fn handles_list_each_key_with_its_label_and_control_its_breaker() {
    let layer = KeyedLayer::builder(|r: &Req| r.1)
        .name("tenants")
        .label(|id: &u32| format!("tenant-{id}"))
        .build()
        .unwrap();
    let (inner, mut deps) = mock::pair::<Req, u32>();
    deps.allow(u64::MAX);
    let mut svc = layer.layer(inner);
    let handle = svc.handle();
    for id in [7, 8] {
        let call = svc.ready().await.unwrap().call(("x", id));
        let (_, respond) = deps.next_request().await.unwrap();
        respond.send_response(id);
        assert_eq!(call.await.unwrap(), id);
    }
    let mut keys: Vec<(u32, String, String)> = handle
        .keys()
        .into_iter()
        .map(|k| {
            (
                *k.key(),
                k.label().to_owned(),
                k.breaker().name().to_owned(),
            )
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            (7, "tenant-7".into(), "tenants/tenant-7".into()),
            (8, "tenant-8".into(), "tenants/tenant-8".into())
        ]
    );
    let seven = handle.get(&7).unwrap();
    assert_eq!(seven.bulkhead().name(), "tenants/tenant-7");
    assert_eq!(seven.bulkhead().counts().admitted, 1);
    // An operator forces one tenant's breaker open: only its calls are refused.
    seven.breaker().force_open();
    let err = svc.ready().await.unwrap().call(("x", 7)).await.unwrap_err();
    assert!(err.is::<BreakerOpen>());
    let call = svc.ready().await.unwrap().call(("x", 8));
    let (got, respond) = deps.next_request().await.unwrap();
    assert_eq!(got, ("x", 8));
    respond.send_response(8);
    assert_eq!(call.await.unwrap(), 8);
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_the_table() {
    let (layer, mut svc, mut deps) = stack(builder());
    let mut clone = svc.clone();
    let (inner, mut other_deps) = mock::pair::<Req, u32>();
    other_deps.allow(u64::MAX);
    let mut other = layer.layer(inner);
    // One slot each from the clone and a second service: the key's two slots are taken.
    let first = clone.ready().await.unwrap().call(("a", 1));
    let second = other.ready().await.unwrap().call(("a", 2));
    assert!(refused(&mut svc, ("a", 3)).await.is::<BulkheadFull>());
    assert_eq!(layer.handle().counts().keys, 1);
    let (_, respond) = deps.next_request().await.unwrap();
    respond.send_response(1);
    let (_, respond) = other_deps.next_request().await.unwrap();
    respond.send_response(2);
    assert_eq!(first.await.unwrap(), 1);
    assert_eq!(second.await.unwrap(), 2);
    next_is(&mut svc, &mut deps, ("a", 4)).await;
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_future_gives_the_slot_back_and_counts_nothing() {
    let (layer, mut svc, mut deps) = stack(builder());
    let call = svc.ready().await.unwrap().call(("a", 1));
    let (_, _respond) = deps.next_request().await.unwrap();
    let a = layer.handle().get(&"a").unwrap();
    assert_eq!(a.bulkhead().counts().in_flight, 1);
    drop(call);
    assert_eq!(a.bulkhead().counts().in_flight, 0);
    let metrics = a.breaker().counts();
    assert_eq!((metrics.successes, metrics.failures), (0, 0));
}

#[test]
fn invalid_settings_are_refused_when_built() {
    let err = builder().max_keys(0).build().unwrap_err();
    assert_eq!(err.setting(), "max_keys");
    let err = builder().max_keys(4).max_open(4).build().unwrap_err();
    assert_eq!(err.setting(), "max_open");
    let err = builder().max_open(0).build().unwrap_err();
    assert_eq!(err.setting(), "max_open");
    let err = builder()
        .bulkhead(BulkheadLayer::builder().waiting_room(4, Duration::from_millis(10)))
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "bulkhead");
    assert!(err.to_string().contains("no_waiting_room"), "{err}");
    let err = builder()
        .bulkhead(BulkheadLayer::builder().max_in_flight(0))
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "max_in_flight");
    let err = builder()
        .breaker(BreakerLayer::builder().consecutive_failures(0))
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "consecutive_failures");
}

#[test]
fn services_futures_and_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Svc>();
    send_sync::<
        tanker::keyed::future::ResponseFuture<<Mock as Service<Req>>::Future, ErrorsAsFailures>,
    >();
    send_sync::<KeyedByHost>();
    send_sync::<KeyedHandle<&'static str, ErrorsAsFailures>>();
    send_sync::<tanker::keyed::KeyHandle<&'static str>>();
}

/// The table's metrics carry the layer's name; each key's bulkhead and breaker metrics carry
/// `name/key`. A key's handles resolve when the key first comes, so the recorder must be in
/// place for the call that brings it (here a local one, around `call`).
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_are_labelled_per_key_and_the_table_reports_its_keys_and_outage() {
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tanker::metrics as names;

    let recorder = PrometheusBuilder::new().build_recorder();
    let rendered = recorder.handle();
    let (layer, mut svc, mut deps) =
        metrics::with_local_recorder(&recorder, || stack(builder().max_keys(2).max_open(1)));
    let call =
        |svc: &mut Svc, request: Req| metrics::with_local_recorder(&recorder, || svc.call(request));
    // The value of `name{label="value"}` in the Prometheus text.
    let value = |name: &str, label: (&str, &str)| -> Option<f64> {
        let wanted = format!("{}=\"{}\"", label.0, label.1);
        rendered.render().lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let labelled = series.starts_with(&format!("{name}{{")) && series.contains(&wanted);
            labelled.then(|| value.parse().ok()).flatten()
        })
    };

    for (key, reply) in [("a", Ok(1)), ("b", Err(())), ("b", Err(()))] {
        let _ = round_trip_by(&mut svc, &mut deps, (key, 0), reply, call).await;
    }
    assert_eq!(
        value(names::BULKHEAD_ADMITTED, ("bulkhead", "http/a")),
        Some(1.0)
    );
    assert_eq!(
        value(names::BULKHEAD_ADMITTED, ("bulkhead", "http/b")),
        Some(2.0)
    );
    assert_eq!(
        value(names::BREAKER_STATE, ("breaker", "http/b\",state=\"open")),
        Some(1.0)
    );
    assert_eq!(value(names::KEYED_KEYS, ("keyed", "http")), Some(2.0));

    // `b` is seen open; a third key finds the table full of busy keys (an open one, and `a`,
    // used since the hand last passed is spared once, then evicted).
    assert!(refused(&mut svc, ("b", 1)).await.is::<BreakerOpen>());
    assert_eq!(value(names::KEYED_OPEN, ("keyed", "http")), Some(1.0));
    assert_eq!(value(names::KEYED_OUTAGE, ("keyed", "http")), Some(0.0));
    assert_eq!(
        value(names::BREAKER_REJECTED, ("breaker", "http/b")),
        Some(1.0)
    );
    round_trip_by(&mut svc, &mut deps, ("c", 0), Ok(0), call)
        .await
        .unwrap();
    assert_eq!(value(names::KEYED_EVICTED, ("keyed", "http")), Some(1.0));
    // A fourth key: `b` is open and `c` is busy with a call.
    svc.ready().await.unwrap();
    let held = call(&mut svc, ("c", 1));
    let (_, _respond) = deps.next_request().await.unwrap();
    svc.ready().await.unwrap();
    assert!(call(&mut svc, ("d", 0))
        .await
        .unwrap_err()
        .is::<BulkheadFull>());
    assert_eq!(value(names::KEYED_REFUSED, ("keyed", "http")), Some(1.0));
    drop(held);
    assert_eq!(layer.handle().counts().refused, 1);

    // `c` opens too: two open keys, beyond the cap of one, is one outage.
    for i in 2..4 {
        let result = round_trip(&mut svc, &mut deps, ("c", i), Err(())).await;
        assert!(result.unwrap_err().is::<DependencyDown>());
    }
    assert!(refused(&mut svc, ("c", 4)).await.is::<BreakerOpen>());
    assert_eq!(value(names::KEYED_OPEN, ("keyed", "http")), Some(2.0));
    assert_eq!(value(names::KEYED_OUTAGE, ("keyed", "http")), Some(1.0));
    assert!(layer.handle().outage());
}

/// Eight OS threads (more than the cores) call 40 keys through a table of 16, holding up to 8
/// calls each before finishing them, while some keys fail and open: keys come and go under
/// load. No key's compartment ever holds more than its bound, the table never holds more than
/// its bound, no refused call reaches the dependency, and at the end nothing is in flight and
/// the open count matches the open keys.
#[test]
fn keys_come_and_go_under_load_on_more_threads_than_cores() {
    use std::future::{ready, Future};
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use futures::task::noop_waker_ref;
    use tower::service_fn;

    const THREADS: u64 = 8;
    const ROUNDS: u64 = 1_500;
    const HOLD: u64 = 8;
    const MAX_IN_FLIGHT: usize = 3;

    let reached = Arc::new(AtomicU64::new(0));
    let dependency = {
        let reached = reached.clone();
        service_fn(move |n: u64| {
            reached.fetch_add(1, Ordering::Relaxed);
            // Keys that are multiples of 7 are down.
            ready(if (n % 40).is_multiple_of(7) {
                Err(DependencyDown)
            } else {
                Ok(n)
            })
        })
    };
    let layer = KeyedLayer::builder(|n: &u64| n % 40)
        .max_keys(16)
        .bulkhead(BulkheadLayer::builder().max_in_flight(MAX_IN_FLIGHT))
        .breaker(breaker().open_for(Duration::from_secs(60)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(dependency);

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let mut svc = svc.clone();
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut cx = Context::from_waker(noop_waker_ref());
                let (mut ok, mut failed, mut refused) = (0u64, 0u64, 0u64);
                for round in 0..ROUNDS {
                    let mut held = Vec::with_capacity(HOLD as usize);
                    for i in 0..HOLD {
                        assert!(svc.poll_ready(&mut cx).is_ready());
                        held.push(svc.call(t * 7 + round * 3 + i * 11));
                    }
                    for key in handle.keys() {
                        assert!(key.bulkhead().counts().in_flight <= MAX_IN_FLIGHT);
                    }
                    assert!(handle.counts().keys <= 16);
                    for mut call in held {
                        match Pin::new(&mut call).poll(&mut cx) {
                            Poll::Ready(Ok(_)) => ok += 1,
                            Poll::Ready(Err(e)) if e.is::<DependencyDown>() => failed += 1,
                            Poll::Ready(Err(e)) if Rejection::find(e.as_ref()).is_some() => {
                                refused += 1
                            }
                            Poll::Ready(Err(e)) => panic!("unexpected error: {e}"),
                            Poll::Pending => panic!("the dependency answers at once"),
                        }
                    }
                }
                (ok, failed, refused)
            })
        })
        .collect();
    let (mut ok, mut failed, mut refused) = (0, 0, 0);
    for thread in threads {
        let (o, f, r) = thread.join().unwrap();
        (ok, failed, refused) = (ok + o, failed + f, refused + r);
    }
    assert_eq!(ok + failed + refused, THREADS * ROUNDS * HOLD);
    assert_eq!(
        reached.load(Ordering::Relaxed),
        ok + failed,
        "refusals never reach it"
    );
    assert!(
        ok > 0 && failed > 0 && refused > 0,
        "{ok} {failed} {refused}"
    );
    assert!(handle.counts().evicted > 0, "keys came and went");
    let keys = handle.keys();
    assert!(keys.len() <= 16);
    for key in &keys {
        assert_eq!(key.bulkhead().counts().in_flight, 0);
    }
    let open = keys
        .iter()
        .filter(|key| key.breaker().state() == BreakerState::Open)
        .count();
    // Every open key in the table was seen open by a call after it opened (each got several).
    assert!(
        handle.counts().open_keys >= open,
        "{} < {open}",
        handle.counts().open_keys
    );
    // Evicted keys were never counted open: the count holds only keys in the table.
    assert!(handle.counts().open_keys <= keys.len());
}

/// What the dependency behind the hand-off got.
type Delivered = std::sync::Arc<std::sync::Mutex<Vec<u32>>>;

/// Three "brokers", keyed by the record's number, behind a hand-off (parking on or off), over a
/// dependency that records what it got. Records 0 to 2 go through; then broker 1 is forced
/// open and records 3 to 29 are sent.
async fn one_broker_forced_open(
    park: bool,
) -> (
    tanker::handoff::Handoff<u32>,
    KeyedHandle<u32, ErrorsAsFailures>,
    Delivered,
) {
    let delivered = Delivered::default();
    let dependency = {
        let delivered = delivered.clone();
        tower::service_fn(move |n: u32| {
            delivered.lock().unwrap().push(n);
            std::future::ready(Ok::<_, DependencyDown>(()))
        })
    };
    let layer = KeyedLayer::builder(|n: &u32| n % 3)
        .breaker(breaker())
        .build()
        .unwrap();
    let brokers = layer.handle();
    let handoff = tanker::handoff::Handoff::builder()
        .capacity(100)
        .park(park)
        .spawn(layer.layer(dependency))
        .unwrap();
    for n in 0..3 {
        handoff.send(n);
    }
    settle(&handoff).await;
    brokers.get(&1).unwrap().breaker().force_open();
    for n in 3..30 {
        handoff.send(n);
    }
    (handoff, brokers, delivered)
}

/// Runs the hand-off's worker until nothing is pending, or two seconds of paused time pass,
/// and checks the accounting identities.
async fn settle(handoff: &tanker::handoff::Handoff<u32>) -> tanker::handoff::HandoffCounts {
    for _ in 0..2_000 {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        if handoff.counts().pending() == 0 {
            break;
        }
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let counts = handoff.counts();
    assert!(counts.is_balanced(), "{counts:?}");
    counts
}

fn sorted(delivered: &Delivered) -> Vec<u32> {
    let mut got = delivered.lock().unwrap().clone();
    got.sort_unstable();
    got
}

/// The hand-off recognises a key's refusals as it does the unkeyed breaker's: with parking
/// off, a sick key's records are counted `rejected` and the other keys' are delivered.
#[tokio::test(start_paused = true)]
async fn behind_a_hand_off_a_sick_keys_refusals_are_counted_as_rejected() {
    let (handoff, _, delivered) = one_broker_forced_open(false).await;
    let counts = settle(&handoff).await;
    assert_eq!((counts.delivered, counts.rejected), (21, 9), "{counts:?}");
    let healthy: Vec<u32> = (0..30).filter(|n| n % 3 != 1 || *n < 3).collect();
    assert_eq!(sorted(&delivered), healthy);
}

/// With parking on, a sick key's records wait in the hand-off and are all delivered once the
/// key heals: nothing is lost.
#[tokio::test(start_paused = true)]
async fn behind_a_hand_off_a_sick_keys_records_are_parked_and_delivered_after_the_heal() {
    let (handoff, brokers, delivered) = one_broker_forced_open(true).await;
    let counts = settle(&handoff).await;
    assert_eq!(counts.rejected, 0, "{counts:?}");
    assert_eq!(counts.delivered + counts.pending(), 30, "{counts:?}");
    assert!(counts.pending() >= 9, "broker 1's records wait: {counts:?}");

    brokers.get(&1).unwrap().breaker().reset();
    let counts = settle(&handoff).await;
    assert_eq!(counts.delivered, 30, "{counts:?}");
    assert_eq!(sorted(&delivered), (0..30).collect::<Vec<_>>());
}
