//! Integration tests for `tanker::axum`: tanker's layers on a real `axum::Router`, which clones a
//! route's service for every request, answering with 503 and `Retry-After`, 504 and 500.
//!
//! Requests go through `Router::oneshot`, on paused tokio time driven by `time::advance`;
//! nothing here sleeps. A request held inside its handler is polled by hand (tokio-test's
//! `task::spawn`), so the test knows exactly what has run.

mod support;

use std::future::pending;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tanker::breaker::{BreakerLayer, BreakerState};
use tanker::bulkhead::BulkheadLayer;
use tanker::{Rejection, ServiceBuilderExt};
use tokio::sync::watch;
use tokio::time::{self, Instant};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};

use crate::support::DependencyDown;

// ===== helpers =====

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `GET uri`, as a client sends it.
fn get_request(uri: &str) -> Request<Body> {
    Request::get(uri)
        .body(Body::empty())
        .expect("a valid request")
}

/// Sends `GET uri` through a clone of the router, as axum does for each connection.
///
/// Fails instead of hanging when no answer comes: on paused time, the minute passes as soon as
/// nothing else can happen.
async fn send(app: &Router, uri: &str) -> Response {
    time::timeout(secs(60), app.clone().oneshot(get_request(uri)))
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {uri}"))
        .unwrap_or_else(|never| match never {})
}

fn retry_after(response: &Response) -> Option<&str> {
    response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("an ASCII header"))
}

/// Asserts that `response` is a 503, and returns its `Retry-After`.
fn unavailable(response: &Response) -> Option<&str> {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    retry_after(response)
}

async fn text(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .expect("a short body");
    String::from_utf8(bytes.to_vec()).expect("a UTF-8 body")
}

/// A breaker that trips after `failures` in a row and cools down for `open_for`, exactly.
fn breaker(failures: u32, open_for: Duration) -> BreakerLayer {
    BreakerLayer::builder()
        .consecutive_failures(failures)
        .no_failure_rate()
        .open_for(open_for)
        .jitter(0.0)
        .build()
        .expect("a valid breaker")
}

/// A fake dependency as a route's service: it counts its calls, and fails with
/// [`DependencyDown`] while `down` is set.
#[derive(Default)]
struct Dependency {
    calls: AtomicUsize,
    down: AtomicBool,
}

impl Dependency {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The route's service, behind `handle_error` and `breaker`.
    fn route(self: &Arc<Self>, breaker: &BreakerLayer) -> Router {
        let dependency = Arc::clone(self);
        let service = service_fn(move |_: Request<Body>| {
            let dependency = Arc::clone(&dependency);
            async move {
                dependency.calls.fetch_add(1, Ordering::SeqCst);
                if dependency.down.load(Ordering::SeqCst) {
                    Err::<Response, BoxError>(DependencyDown.into())
                } else {
                    Ok("fresh stats".into_response())
                }
            }
        });
        Router::new().route_service(
            "/stats",
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(tanker::axum::handle_error))
                .breaker(breaker.clone())
                .service(service),
        )
    }
}

// ===== bulkhead =====

#[tokio::test(start_paused = true)]
async fn per_route_bulkhead_bounds_requests_although_axum_clones_the_service() {
    // Built once: every clone of the route's service, one per request, shares these two slots.
    let bulkhead = BulkheadLayer::new(2).expect("a valid compartment");
    let slots = bulkhead.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate, parked) = watch::channel(false);

    let handler = {
        let calls = Arc::clone(&calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut parked = parked.clone();
            async move {
                // Held here until the test opens the gate.
                parked.wait_for(|open| *open).await.expect("the gate lives");
                "slow answer"
            }
        }
    };
    let app = Router::new()
        .route(
            "/slow",
            get(handler).layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(tanker::axum::handle_error))
                    .bulkhead(bulkhead.clone()),
            ),
        )
        .route("/fast", get(|| async { "fast answer" }));

    let mut first = task::spawn(send(&app, "/slow"));
    let mut second = task::spawn(send(&app, "/slow"));
    assert_pending!(first.poll());
    assert_pending!(second.poll());
    assert_eq!(calls.load(Ordering::SeqCst), 2, "both reached the handler");
    assert_eq!(slots.counts().in_flight, 2);

    // The compartment is full: the third request is answered at once, without the handler.
    let asked = Instant::now();
    let third = send(&app, "/slow").await;
    assert_eq!(asked.elapsed(), Duration::ZERO, "answered without waiting");
    assert_eq!(unavailable(&third), None, "a shed call has no retry time");
    assert_eq!(text(third).await, "bulkhead is full\n");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the handler never saw the shed request"
    );
    assert_eq!(slots.counts().shed, 1);

    // The bulkhead is per route: another route is not held up.
    assert_eq!(send(&app, "/fast").await.status(), StatusCode::OK);

    gate.send_replace(true);
    assert!(first.is_woken() && second.is_woken());
    for parked in [&mut first, &mut second] {
        let response = assert_ready!(parked.poll());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, "slow answer");
    }
    assert_eq!(
        slots.counts().in_flight,
        0,
        "finished requests gave their slots back"
    );

    let fourth = send(&app, "/slow").await;
    assert_eq!(fourth.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(slots.counts().admitted, 3);
}

// ===== breaker =====

#[tokio::test(start_paused = true)]
async fn forced_open_breaker_answers_503_without_retry_after_or_calling_the_service() {
    let breaker = breaker(3, secs(5));
    let dependency = Arc::new(Dependency::default());
    let app = dependency.route(&breaker);

    breaker.handle().force_open();
    let response = send(&app, "/stats").await;
    assert_eq!(unavailable(&response), None, "no probe until a reset");
    assert_eq!(text(response).await, "circuit breaker is forced open\n");
    assert_eq!(dependency.calls(), 0);

    breaker.handle().reset();
    assert_eq!(send(&app, "/stats").await.status(), StatusCode::OK);
    assert_eq!(dependency.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn tripped_breaker_answers_503_with_retry_after_until_its_probe() {
    let open_for = secs(5);
    let breaker = breaker(3, open_for);
    let handle = breaker.handle();
    let dependency = Arc::new(Dependency::default());
    let app = dependency.route(&breaker);

    dependency.set_down(true);
    for _ in 0..3 {
        let response = send(&app, "/stats").await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(retry_after(&response), None);
    }
    assert_eq!(dependency.calls(), 3);
    assert_eq!(handle.state(), BreakerState::Open);

    // Open: rejected at once, with the whole cool-down as Retry-After.
    let opened = Instant::now();
    let response = send(&app, "/stats").await;
    assert_eq!(opened.elapsed(), Duration::ZERO, "answered without waiting");
    let whole_cool_down = open_for.as_secs().to_string();
    assert_eq!(unavailable(&response), Some(whole_cool_down.as_str()));
    assert_eq!(
        dependency.calls(),
        3,
        "the open breaker did not call the service"
    );

    // 1.2 s later, 3.8 s are left: rounded up to 4.
    time::advance(Duration::from_millis(1_200)).await;
    let response = send(&app, "/stats").await;
    assert_eq!(unavailable(&response), Some("4"));

    // 0.3 s before the probe: still a whole second.
    time::advance(Duration::from_millis(3_500)).await;
    let response = send(&app, "/stats").await;
    assert_eq!(unavailable(&response), Some("1"));
    assert_eq!(dependency.calls(), 3);

    // After the cool-down the next request is the probe; the dependency answers and the breaker
    // closes.
    dependency.set_down(false);
    time::advance(Duration::from_millis(300)).await;
    let response = send(&app, "/stats").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "fresh stats");
    assert_eq!(dependency.calls(), 4);
    assert_eq!(handle.state(), BreakerState::Closed);
}

// ===== timeouts and other errors =====

#[tokio::test(start_paused = true)]
async fn hung_handler_times_out_with_504_and_the_timeouts_trip_the_breaker() {
    let breaker = breaker(2, secs(5));
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            pending::<&'static str>()
        }
    };
    let app = Router::new().route(
        "/stats",
        get(handler).layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(tanker::axum::handle_error))
                .breaker(breaker.clone())
                .timeout(secs(1)),
        ),
    );

    for _ in 0..2 {
        let started = Instant::now();
        let response = send(&app, "/stats").await;
        assert_eq!(
            started.elapsed(),
            secs(1),
            "answered when the timeout fired"
        );
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(retry_after(&response), None);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Two timeouts in a row are two failures: the breaker is open.
    let response = send(&app, "/stats").await;
    assert_eq!(unavailable(&response), Some("5"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn other_errors_are_500_without_their_text() {
    let dependency = Arc::new(Dependency::default());
    let app = dependency.route(&breaker(10, secs(5)));
    dependency.set_down(true);

    let response = send(&app, "/stats").await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = text(response).await;
    assert!(
        !body.contains(&DependencyDown.to_string()),
        "the client saw the inner error: {body:?}"
    );
    assert_eq!(body, "internal server error\n");
    assert_eq!(dependency.calls(), 1);
}

// ===== handlers =====

/// A handler that calls a tanker-protected client and returns its refusal as a response.
async fn lookup<C>(client: C) -> Result<String, Response>
where
    C: tower::Service<u32, Response = u32, Error = BoxError>,
{
    match client.oneshot(7).await {
        Ok(n) => Ok(n.to_string()),
        Err(err) => Err(match Rejection::find(err.as_ref()) {
            Some(rejection) => rejection.into_response(),
            None => StatusCode::BAD_GATEWAY.into_response(),
        }),
    }
}

#[tokio::test(start_paused = true)]
async fn handler_returns_a_refusal_of_its_client_as_503() {
    let breaker = breaker(3, secs(5));
    let calls = Arc::new(AtomicUsize::new(0));
    let client = {
        let calls = Arc::clone(&calls);
        ServiceBuilder::new()
            .breaker(breaker.clone())
            .service(service_fn(move |n: u32| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, BoxError>(n * 6) }
            }))
    };
    let app = Router::new().route("/lookup", get(move || lookup(client.clone())));

    let response = send(&app, "/lookup").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "42");

    breaker.handle().force_open();
    let response = send(&app, "/lookup").await;
    assert_eq!(unavailable(&response), None);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the open breaker kept the client's call"
    );
}
