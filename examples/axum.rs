//! An axum route protected by a breaker and a bulkhead, answering 503 with `Retry-After`.
//!
//! By default the server listens on a free port of 127.0.0.1, calls itself over plain
//! HTTP/1.1, prints what each request got, and exits after about two seconds. With
//! `--serve ADDR` it serves on `ADDR` until interrupted (Ctrl-C), for curl or a Prometheus
//! scrape, and `GET /store/healthy`, `/store/slow` and `/store/hung` change how the fake store
//! behaves:
//!
//! ```text
//! cargo run --example axum --features axum
//! cargo run --example axum --features axum,metrics   # also serves and prints GET /metrics
//! cargo run --example axum --features axum,metrics -- --serve 127.0.0.1:3000
//! ```
//!
//! With the `metrics` feature, the example installs a Prometheus recorder before it builds the
//! layers, serves the scrape on `GET /metrics`, and (without `--serve`) prints tanker's lines of
//! it at the end.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tanker::breaker::{BreakerLayer, Outcome};
use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
use tanker::ServiceBuilderExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{BoxError, ServiceBuilder};

/// How the fake stats store behaves.
const HEALTHY: u8 = 0;
const SLOW: u8 = 1;
const HUNG: u8 = 2;

/// A stand-in for a real dependency: fast, slow, or not answering at all.
#[derive(Default)]
struct StatsStore {
    mode: AtomicU8,
}

impl StatsStore {
    async fn read(&self) -> String {
        match self.mode.load(Ordering::SeqCst) {
            HEALTHY => "1234 events".to_owned(),
            SLOW => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                "1234 events (slowly)".to_owned()
            }
            _ => std::future::pending().await,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

async fn stats(State(store): State<Arc<StatsStore>>) -> String {
    store.read().await
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let serve = match args.iter().position(|arg| arg == "--serve") {
        Some(i) => Some(
            args.get(i + 1)
                .ok_or("--serve needs an address, e.g. 127.0.0.1:3000")?,
        ),
        None => None,
    };

    // The recorder comes first: each layer takes its metric handles when it is built.
    #[cfg(feature = "metrics")]
    let prometheus = {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder)?;
        handle
    };

    // One breaker and one compartment for the stats store, built once: axum clones the route's
    // service for every request, and all the clones share these.
    let breaker = BreakerLayer::builder()
        .name("stats-store")
        .consecutive_failures(3)
        .open_for(Duration::from_secs(1))
        .jitter(0.0)
        // Shedding is our own back-pressure, not a failure of the store.
        .classify(|result: Result<&Response, &BoxError>| match result {
            Ok(response) if response.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(err) if err.is::<BulkheadFull>() => Outcome::Ignore,
            Err(_) => Outcome::Failure,
        })
        .build()?;
    let bulkhead = BulkheadLayer::builder()
        .name("stats-store")
        .max_in_flight(2)
        .build()?;
    let slots = bulkhead.handle();

    let store = Arc::new(StatsStore::default());
    let app = Router::new()
        .route(
            "/stats",
            get(stats).layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(tanker::axum::handle_error))
                    .breaker(breaker.clone())
                    .bulkhead(bulkhead.clone())
                    .timeout(Duration::from_millis(250)),
            ),
        )
        .with_state(Arc::clone(&store));
    #[cfg(feature = "metrics")]
    let app = app.route(
        "/metrics",
        get({
            let prometheus = prometheus.clone();
            move || async move { prometheus.render() }
        }),
    );

    let listener = TcpListener::bind(serve.map_or("127.0.0.1:0", String::as_str)).await?;
    let addr = listener.local_addr()?.to_string();
    println!("serving GET /stats on http://{addr}");
    println!("behind a breaker (3 failures, open 1 s), a bulkhead (2 slots) and a 250 ms timeout");

    if serve.is_some() {
        // Until interrupted: the store's behaviour is changed over HTTP.
        let app = ["healthy", "slow", "hung"]
            .into_iter()
            .zip([HEALTHY, SLOW, HUNG])
            .fold(app, |app, (name, mode)| {
                let store = Arc::clone(&store);
                app.route(
                    &format!("/store/{name}"),
                    get(move || async move {
                        store.set(mode);
                        format!("the store is {name}\n")
                    }),
                )
            });
        println!("GET /store/healthy, /store/slow or /store/hung changes the store");
        #[cfg(feature = "metrics")]
        println!("GET /metrics serves the Prometheus scrape");
        println!("Ctrl-C stops");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        return Ok(());
    }
    tokio::spawn(async move { axum::serve(listener, app).await });

    println!("\nthe store is healthy:");
    show(get_stats(&addr).await?);

    println!("\nthe store is slow (100 ms, under the timeout), three requests at once:");
    store.set(SLOW);
    let spawn_get = |addr: String| tokio::spawn(async move { get_stats(&addr).await });
    let first = spawn_get(addr.clone());
    let second = spawn_get(addr.clone());
    while slots.counts().in_flight < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    show(get_stats(&addr).await?);
    show(first.await??);
    show(second.await??);

    println!("\nthe store stops answering:");
    store.set(HUNG);
    for _ in 0..3 {
        show(get_stats(&addr).await?);
    }
    println!("breaker: {:?}", breaker.handle().state());
    show(get_stats(&addr).await?);

    println!("\nthe store is back; after the cool-down the next request is the probe:");
    store.set(HEALTHY);
    tokio::time::sleep(Duration::from_secs(1)).await;
    show(get_stats(&addr).await?);
    println!("breaker: {:?}", breaker.handle().state());

    #[cfg(feature = "metrics")]
    {
        println!("\nGET /metrics, tanker's lines:");
        let scrape = fetch(&addr, "/metrics").await?;
        for line in scrape
            .body
            .lines()
            .filter(|line| line.starts_with("tanker_"))
        {
            println!("  {line}");
        }
    }
    Ok(())
}

/// What a request got: the status line, `Retry-After` if any, and the body.
struct Answer {
    status: String,
    retry_after: Option<String>,
    body: String,
}

fn show(answer: Answer) {
    match answer.retry_after {
        Some(after) => println!(
            "  {} (Retry-After: {after}) {:?}",
            answer.status, answer.body
        ),
        None => println!("  {} {:?}", answer.status, answer.body),
    }
}

/// `GET /stats` over a fresh connection, read to its end.
async fn get_stats(addr: &str) -> Result<Answer, BoxError> {
    fetch(addr, "/stats").await
}

/// `GET path` over a fresh connection, read to its end.
async fn fetch(addr: &str, path: &str) -> Result<Answer, BoxError> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;

    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let mut lines = head.lines();
    let status = lines.next().ok_or("no status line")?;
    let status = status.split_once(' ').map_or(status, |(_, rest)| rest);
    let retry_after = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().to_owned())
    });
    Ok(Answer {
        status: status.to_owned(),
        retry_after,
        body: body.to_owned(),
    })
}
