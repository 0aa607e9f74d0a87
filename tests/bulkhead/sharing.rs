//! One compartment per layer value: services and clones share it, separate layers do not.

use tokio_test::{assert_ready_ok, task};
use tower::{Layer, Service, ServiceBuilder};
use tower_test::mock;

use tanker::ServiceBuilderExt;

use crate::support::bulkhead::*;

#[tokio::test(start_paused = true)]
async fn services_built_from_one_layer_share_one_capacity() {
    let bulkhead = layer(1);
    let (mut a, mut handle_a) = spawn(&bulkhead);
    let (mut b, mut handle_b) = spawn(&bulkhead);

    let (_fut, _send) = admit(&mut a, &mut handle_a, "a").await;
    assert_shed_now(&mut b, "b");
    assert_no_request(&mut handle_b);
    assert_eq!(bulkhead.handle().counts().in_flight, 1);
    assert_eq!(b.get_ref().handle().counts().shed, 1);
}

#[tokio::test(start_paused = true)]
async fn clones_made_per_request_share_the_capacity_like_axum_routes() {
    // axum clones the route's service for every request: a per-route bulkhead must still bound.
    let bulkhead = layer(2);
    let (route, mut handle) = mock::pair::<Req, Res>();
    let route = bulkhead.layer(route);

    let mut responses = Vec::new();
    for req in ["r1", "r2"] {
        let mut per_request = route.clone();
        let fut = ready_now(&mut per_request).call(req);
        let send = request!(handle, req);
        responses.push((task::spawn(fut), send));
    }

    let mut third = route.clone();
    let err = ready_now(&mut third).call("r3").await.unwrap_err();
    assert_full(err);
    assert_no_request(&mut handle);

    // Finishing one request lets the next per-request clone in.
    let (mut fut, send) = responses.remove(0);
    send.send_response("done");
    assert_eq!(assert_ready_ok!(fut.poll()), "done");
    let mut fourth = route.clone();
    let fut = ready_now(&mut fourth).call("r4");
    request!(handle, "r4").send_response("ok");
    assert_eq!(fut.await.expect("admitted"), "ok");

    let counters = route.handle();
    assert_eq!(counters.counts().admitted, 3);
    assert_eq!(counters.counts().shed, 1);
    assert_eq!(counters.counts().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_layer_share_one_compartment() {
    let bulkhead = layer(1);
    let (mut a, mut handle_a) = spawn(&bulkhead.clone());
    let (mut b, mut handle_b) = spawn(&bulkhead.clone());

    let (_fut, _send) = admit(&mut a, &mut handle_a, "a").await;
    assert_shed_now(&mut b, "b");
    assert_no_request(&mut handle_b);
    assert_eq!(bulkhead.handle().counts().shed, 1);
}

#[tokio::test(start_paused = true)]
async fn separate_layer_values_are_separate_compartments() {
    let first = layer(1);
    let second = layer(1);
    let (mut a, mut handle_a) = spawn(&first);
    let (mut b, mut handle_b) = spawn(&second);

    let (_fa, _sa) = admit(&mut a, &mut handle_a, "a").await;
    let (_fb, _sb) = admit(&mut b, &mut handle_b, "b").await;
    assert_eq!(first.handle().counts().in_flight, 1);
    assert_eq!(second.handle().counts().in_flight, 1);
    assert_eq!(
        first.handle().counts().shed + second.handle().counts().shed,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn service_builder_ext_adds_the_same_compartment() {
    let bulkhead = layer(1);
    let (inner, mut handle) = mock::pair::<Req, Res>();
    let mut svc = mock::Spawn::new(
        ServiceBuilder::new()
            .bulkhead(bulkhead.clone())
            .service(inner),
    );
    let (other, mut other_handle) = spawn(&bulkhead);
    let mut other = other;

    assert_ready_ok!(svc.poll_ready());
    let _fut = svc.call("a");
    let _send = request!(handle, "a");
    assert_shed_now(&mut other, "b");
    assert_no_request(&mut other_handle);
}
