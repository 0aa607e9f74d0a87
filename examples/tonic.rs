//! A gRPC client protected by a breaker, a bulkhead and a timeout, against a server that hangs.
//!
//! Starts a tonic-health server on loopback, calls it while it is healthy, makes it hang, and
//! shows the calls timing out, the breaker opening, the next calls failing fast with
//! `UNAVAILABLE`, and the breaker closing again once the server answers.
//!
//! ```text
//! cargo run --example tonic --features tonic
//! ```

use std::time::Duration;

use tanker::breaker::{BreakerHandle, BreakerLayer};
use tanker::bulkhead::BulkheadLayer;
use tanker::tonic::GrpcClassifier;
use tanker::{Rejection, ServiceBuilderExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::Status;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{BoxError, ServiceBuilder};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The server. A switch in front of it makes every request hang while it is on.
    let (hang, hanging) = watch::channel(false);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let switch = ServiceBuilder::new()
        .map_future(move |call| {
            let mut hanging = hanging.clone();
            async move {
                let _ = hanging.wait_for(|on| !on).await;
                call.await
            }
        })
        .into_inner();
    let server = Server::builder().layer(switch).add_service(health);
    tokio::spawn(server.serve_with_incoming(TcpIncoming::from(listener)));

    // The client: its channel wrapped in tanker's recipe, errors mapped to gRPC statuses.
    let breaker = BreakerLayer::builder()
        .name("health")
        .consecutive_failures(3)
        .open_for(Duration::from_secs(1))
        .jitter(0.0)
        // Timeouts, transport errors and the server's UNAVAILABLE & co. are failures; the
        // bulkhead shedding a call is not.
        .classify(GrpcClassifier::new())
        .build()?;
    let handle = breaker.handle();
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .map_err(tanker::tonic::status)
            .breaker(breaker)
            .bulkhead(BulkheadLayer::new(8)?)
            .timeout(Duration::from_millis(200))
            .service(channel),
    );

    println!("server on {addr}, healthy");
    for _ in 0..2 {
        call(&mut client, &handle).await;
    }

    println!("server hangs");
    hang.send_replace(true);
    let mut retry_after = None;
    for _ in 0..5 {
        if let Some(status) = call(&mut client, &handle).await {
            retry_after = Rejection::find(&status).and_then(|r| r.retry_after());
        }
    }

    println!("server answers again");
    hang.send_replace(false);
    if let Some(after) = retry_after {
        println!("waiting {after:?} for the breaker's next probe");
        tokio::time::sleep(after).await;
    }
    for _ in 0..2 {
        call(&mut client, &handle).await;
    }
    let metrics = handle.counts();
    println!(
        "breaker {:?}: opened {} time(s), {} call(s) failed, {} refused without calling the server",
        metrics.state, metrics.times_opened, metrics.failures, metrics.rejected
    );
    Ok(())
}

/// One health check, printed with its outcome, how long it took, and the breaker's state after.
/// Returns the status of a failed call.
async fn call<T>(client: &mut HealthClient<T>, breaker: &BreakerHandle) -> Option<Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<BoxError> + Send,
{
    let start = Instant::now();
    let result = client.check(HealthCheckRequest::default()).await;
    let took = start.elapsed().as_millis();
    let state = breaker.state();
    match result {
        Ok(response) => {
            let serving = response.into_inner().status();
            println!("  ok: {serving:?} in {took} ms; breaker {state:?}");
            None
        }
        Err(status) => {
            let pushback = status
                .metadata()
                .get("grpc-retry-pushback-ms")
                .and_then(|v| v.to_str().ok())
                .map(|ms| format!(" (pushback {ms} ms)"))
                .unwrap_or_default();
            println!(
                "  {:?}: {}{pushback} in {took} ms; breaker {state:?}",
                status.code(),
                status.message()
            );
            Some(status)
        }
    }
}
