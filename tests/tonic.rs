//! tanker's layers around a real tonic client and server (tonic-health) on loopback.
//!
//! Time is real here: tokio's paused clock jumps ahead whenever the runtime is idle, which it is
//! while a loopback response is on its way, so timeouts would fire on healthy calls. Instead, a
//! gate in front of the server counts the requests that reach it and holds them while it is
//! closed, and every assertion waits for an event (a request arriving, a call finishing) or reads
//! a counter or a state. The only fixed waits are the timeouts the layers are configured with,
//! which a held call always reaches, and the breaker's own `retry_after`.

#![allow(missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tanker::breaker::{Breaker, BreakerLayer, BreakerState, Classify};
use tanker::bulkhead::{Bulkhead, BulkheadLayer};
use tanker::tonic::GrpcClassifier;
use tanker::{Rejection, ServiceBuilderExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codegen::http::Response;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::timeout::Timeout;
use tower::util::MapErr;
use tower::{BoxError, Layer, Service, ServiceBuilder};

/// Long enough for any healthy loopback call, short enough to keep the test quick.
const TIMEOUT: Duration = Duration::from_millis(500);
/// The longest the test waits for an event that must happen.
const EVENT: Duration = Duration::from_secs(5);

/// A server-side layer that counts the requests reaching the server and, while closed, holds
/// them until it opens again.
#[derive(Clone)]
struct Gate {
    open: watch::Sender<bool>,
    arrivals: watch::Sender<usize>,
}

impl Gate {
    fn new() -> Self {
        Self {
            open: watch::Sender::new(true),
            arrivals: watch::Sender::new(0),
        }
    }

    /// From now on, requests hang at the server.
    fn hang(&self) {
        self.open.send_replace(false);
    }

    /// Lets held requests and new ones through.
    fn release(&self) {
        self.open.send_replace(true);
    }

    fn arrivals(&self) -> usize {
        *self.arrivals.borrow()
    }

    /// Waits until `n` requests have reached the server.
    async fn arrived(&self, n: usize) {
        let mut arrivals = self.arrivals.subscribe();
        tokio::time::timeout(EVENT, arrivals.wait_for(|&seen| seen >= n))
            .await
            .expect("requests reach the server")
            .expect("gate alive");
    }
}

impl<S> Layer<S> for Gate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            gate: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
struct Gated<S> {
    gate: Gate,
    inner: S,
}

impl<S, R> Service<R> for Gated<S>
where
    S: Service<R> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.gate.arrivals.send_modify(|n| *n += 1);
        let mut open = self.gate.open.subscribe();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            // The sender lives as long as the gate, which outlives the server.
            let _ = open.wait_for(|&open| open).await;
            inner.call(request).await
        })
    }
}

/// Starts a health server behind `layer` on a loopback port, and returns its address.
macro_rules! serve {
    ($layer:expr) => {{
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (_reporter, health) = tonic_health::server::health_reporter();
        let router = Server::builder().layer($layer).add_service(health);
        tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
        addr
    }};
}

async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the test server")
}

/// A health client whose channel is wrapped in tanker's recipe.
type Protected<C> = MapErr<Breaker<Bulkhead<Timeout<Channel>>, C>, fn(BoxError) -> Status>;

fn protected<C>(
    channel: Channel,
    breaker: BreakerLayer<C>,
    bulkhead: BulkheadLayer,
    timeout: Duration,
) -> HealthClient<Protected<C>>
where
    C: Classify<Response<tonic::body::Body>, BoxError> + Clone + Send + 'static,
{
    HealthClient::new(
        ServiceBuilder::new()
            .map_err(tanker::tonic::status as fn(BoxError) -> Status)
            .breaker(breaker)
            .bulkhead(bulkhead)
            .timeout(timeout)
            .service(channel),
    )
}

async fn check<T>(client: &mut HealthClient<T>) -> Result<ServingStatus, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<BoxError> + Send,
{
    let response = client.check(HealthCheckRequest::default()).await?;
    Ok(response.into_inner().status())
}

#[track_caller]
fn assert_serving(result: Result<ServingStatus, Status>) {
    match result {
        Ok(status) => assert_eq!(status, ServingStatus::Serving),
        Err(status) => panic!("call failed: {status:?}"),
    }
}

#[tokio::test]
async fn hung_server_opens_the_breaker_which_fails_fast_then_recovers() {
    let gate = Gate::new();
    let channel = connect(serve!(gate.clone())).await;
    let breaker = BreakerLayer::builder()
        .consecutive_failures(2)
        .open_for(TIMEOUT)
        .jitter(0.0)
        .probes(1)
        .classify(GrpcClassifier::new())
        .build()
        .unwrap();
    let bulkhead = BulkheadLayer::new(2).unwrap();
    let (breaker_handle, bulkhead_handle) = (breaker.handle(), bulkhead.handle());
    let mut client = protected(channel, breaker, bulkhead, TIMEOUT);

    // Healthy: calls go through.
    for _ in 0..3 {
        assert_serving(check(&mut client).await);
    }
    assert_eq!(gate.arrivals(), 3);

    // Hung: two calls reach the server, time out, and the breaker opens.
    gate.hang();
    let (mut first, mut second) = (client.clone(), client.clone());
    let (first, second) = tokio::join!(check(&mut first), check(&mut second));
    for result in [first, second] {
        assert_eq!(result.unwrap_err().code(), Code::DeadlineExceeded);
    }
    assert_eq!(gate.arrivals(), 5);
    assert_eq!(breaker_handle.state(), BreakerState::Open);

    // Open: the next call is refused here, without reaching the server or the bulkhead.
    let refused = check(&mut client).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    let Some(Rejection::BreakerOpen {
        retry_after: Some(retry_after),
    }) = Rejection::find(&refused)
    else {
        panic!("not refused by the breaker: {refused:?}");
    };
    assert!(refused.metadata().get("grpc-retry-pushback-ms").is_some());
    assert_eq!(gate.arrivals(), 5);
    assert_eq!(bulkhead_handle.counts().admitted, 5);

    // Recovered: after the cool-down, a probe goes through and closes the breaker.
    gate.release();
    tokio::time::sleep(retry_after).await;
    assert_serving(check(&mut client).await);
    assert_eq!(breaker_handle.state(), BreakerState::Closed);
    assert_serving(check(&mut client).await);
    assert_eq!(gate.arrivals(), 7);
}

#[tokio::test]
async fn client_bulkhead_sheds_the_call_beyond_its_bound() {
    let gate = Gate::new();
    let channel = connect(serve!(gate.clone())).await;
    let breaker = BreakerLayer::builder()
        .consecutive_failures(1)
        .classify(GrpcClassifier::new())
        .build()
        .unwrap();
    let bulkhead = BulkheadLayer::new(2).unwrap();
    let (breaker_handle, bulkhead_handle) = (breaker.handle(), bulkhead.handle());
    // The timeout is longer than the test: the held calls end when the gate opens.
    let client = protected(channel, breaker, bulkhead, EVENT);

    gate.hang();
    let (mut first, mut second, mut third) = (client.clone(), client.clone(), client.clone());
    let held = async { tokio::join!(check(&mut first), check(&mut second)) };
    let excess = async {
        gate.arrived(2).await;
        let result = check(&mut third).await;
        let arrivals = gate.arrivals();
        gate.release();
        (result, arrivals)
    };
    let ((first, second), (excess, arrivals_after_excess)) = tokio::join!(held, excess);

    let shed = excess.unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable);
    assert_eq!(Rejection::find(&shed), Some(Rejection::BulkheadFull));
    assert_eq!(
        arrivals_after_excess, 2,
        "a shed call must not reach the server"
    );
    assert_eq!(bulkhead_handle.counts().shed, 1);
    // Shedding is tanker's back-pressure, not a failure of the server.
    assert_eq!(breaker_handle.state(), BreakerState::Closed);

    assert_serving(first);
    assert_serving(second);
    assert_eq!(bulkhead_handle.counts().in_flight, 0);
}

#[tokio::test]
async fn server_bulkhead_answers_unavailable_to_the_excess_call() {
    let gate = Gate::new();
    let bulkhead = BulkheadLayer::new(1).unwrap();
    let handle = bulkhead.handle();
    let layers = ServiceBuilder::new()
        .map_err(tanker::tonic::status)
        .bulkhead(bulkhead)
        .layer(gate.clone())
        .into_inner();
    let addr = serve!(layers);
    let client = HealthClient::new(connect(addr).await);

    gate.hang();
    let (mut first, mut second) = (client.clone(), client.clone());
    let excess = async {
        gate.arrived(1).await;
        let result = check(&mut second).await;
        let arrivals = gate.arrivals();
        gate.release();
        (result, arrivals)
    };
    let (first, (excess, arrivals_after_excess)) = tokio::join!(check(&mut first), excess);

    let shed = excess.unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable);
    assert_eq!(shed.message(), "bulkhead is full");
    assert!(shed.metadata().get("grpc-retry-pushback-ms").is_none());
    assert_eq!(
        arrivals_after_excess, 1,
        "a shed call must not reach the service"
    );
    assert_eq!(handle.counts().shed, 1);
    assert_serving(first);
}

#[tokio::test]
async fn server_breaker_sends_its_retry_pushback_to_the_client() {
    let gate = Gate::new();
    let breaker = BreakerLayer::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(30))
        .jitter(0.0)
        .build()
        .unwrap();
    let layers = ServiceBuilder::new()
        .map_err(tanker::tonic::status)
        .breaker(breaker)
        .timeout(Duration::from_millis(100))
        .layer(gate.clone())
        .into_inner();
    let addr = serve!(layers);
    let mut client = HealthClient::new(connect(addr).await);

    // The server's own timeout cuts the held call off, and its breaker opens.
    gate.hang();
    let timed_out = check(&mut client).await.unwrap_err();
    assert_eq!(timed_out.code(), Code::DeadlineExceeded);

    let refused = check(&mut client).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    let pushback: u64 = refused
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("pushback sent")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pushback > 0 && pushback <= 30_000, "pushback {pushback} ms");
    assert_eq!(
        gate.arrivals(),
        1,
        "the open breaker must not call the service"
    );
}

#[tokio::test]
async fn client_breaker_can_count_statuses_of_trailers_only_responses() {
    // A server whose own breaker refuses everything once forced open.
    let gate = Gate::new();
    let server_breaker = BreakerLayer::new();
    let server_handle = server_breaker.handle();
    let layers = ServiceBuilder::new()
        .map_err(tanker::tonic::status)
        .layer(gate.clone())
        .breaker(server_breaker)
        .into_inner();
    let addr = serve!(layers);

    let breaker = BreakerLayer::builder()
        .consecutive_failures(1)
        // Reads the status of a trailers-only response: the one a server sends when it refuses
        // a call before running it.
        .classify(GrpcClassifier::new())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .map_err(tanker::tonic::status)
            .breaker(breaker)
            .timeout(EVENT)
            .service(connect(addr).await),
    );

    // NOT_FOUND is the caller's business, not a failing server.
    let request = HealthCheckRequest {
        service: "no.such.Service".to_owned(),
    };
    let not_found = client.check(request).await.unwrap_err();
    assert_eq!(not_found.code(), Code::NotFound);
    assert_eq!(handle.state(), BreakerState::Closed);

    // UNAVAILABLE from the server counts as a failure and opens the client's breaker...
    server_handle.force_open();
    let from_server = check(&mut client).await.unwrap_err();
    assert_eq!(from_server.code(), Code::Unavailable);
    assert_eq!(Rejection::find(&from_server), None, "refused by the server");
    assert_eq!(handle.state(), BreakerState::Open);

    // ...which then refuses calls itself.
    let refused = check(&mut client).await.unwrap_err();
    assert!(matches!(
        Rejection::find(&refused),
        Some(Rejection::BreakerOpen { .. })
    ));
    assert_eq!(gate.arrivals(), 2);
}
