//! The recipe (breaker → bulkhead → timeout) in front of a real Redis: healthy calls go
//! through; `CLIENT PAUSE … ALL` freezes Redis (connections stay open, nothing answers), calls
//! time out, the breaker opens and fails fast without reaching Redis, and it closes by itself
//! once the pause is over; a bulkhead sheds the call beyond its bound while the others are stuck.
//!
//! Each test starts its own `redis-server` on a free loopback port, with no persistence, and
//! kills it when the test ends, even on panic. The binary is `$REDIS_SERVER`, else
//! `redis-server` on the `PATH`; without it the tests fail and say how to install it.
//!
//! # Time
//!
//! Real sockets need real time (tokio's paused clock would jump ahead while a loopback reply is
//! in flight), so the timeouts here are real and short, and every assertion is about behaviour:
//! the kind of each error, the breaker's state and counters, how many calls reached the Redis
//! leaf, and which keys Redis holds. A rejection or a shed call must be ready on its first poll;
//! no assertion measures how long anything took.
//!
//! On Redis 7.0, `CLIENT UNPAUSE` sent during `CLIENT PAUSE … ALL` is itself paused (seen with
//! `redis-cli`), so the pause cannot be lifted early. Each test pauses for [`PAUSE`] instead,
//! and learns that the pause is over from an event: a `PING` sent right after the pause is
//! answered only when Redis serves clients again. The only other waits are a sleep exactly as
//! long as a `BreakerOpen` says (`retry_after`), and bounded polls for a real event that fail
//! the test after [`PATIENCE`].

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallClock};

use futures::FutureExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, Value};
use tokio::task::JoinHandle;
use tower::timeout::error::Elapsed;
use tower::util::BoxCloneService;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

use tanker::breaker::{BreakerHandle, BreakerLayer, BreakerOpen, BreakerState, Outcome};
use tanker::bulkhead::{BulkheadFull, BulkheadHandle, BulkheadLayer};
use tanker::ServiceBuilderExt;

/// How long a wait for an event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);
/// How often a bounded poll checks its condition.
const POLL: Duration = Duration::from_millis(10);
/// How long Redis stays paused: long enough for the breaker to trip and reject while it lasts.
const PAUSE: Duration = Duration::from_secs(2);
/// The timeout innermost in the stack, for the breaker test: far above a loopback round trip
/// even when the machine is busy, and short enough that [`TRIP_AFTER`] of them end well within
/// the pause.
const TIMEOUT: Duration = Duration::from_millis(300);
/// The breaker trips after this many failures in a row.
const TRIP_AFTER: u32 = 3;
/// The breaker's cool-down; as long as the pause, so the first call after it is usually still
/// rejected and says how long to wait.
const OPEN_FOR: Duration = PAUSE;

// ===== the server =====

/// The redis-server binary: `$REDIS_SERVER`, else `redis-server` on the `PATH`.
fn redis_server_bin() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// A port nobody listens on now: bind port 0 on loopback and let it go.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("the port bound").port()
}

/// One redis-server process on 127.0.0.1, without persistence; killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it listens. Another process may take the
    /// port between our probe and redis-server's bind; then it tries another port.
    fn start(name: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("redis");
        std::fs::create_dir_all(&dir).expect("create the redis-server directory");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut server = Self::spawn(&dir, name, free_port());
            match server.wait_listening() {
                Ok(()) => return server,
                Err(why) if attempts < 3 => eprintln!("{why}; trying another port"),
                Err(why) => panic!("{why}"),
            }
        }
    }

    fn spawn(dir: &std::path::Path, name: &str, port: u16) -> Self {
        let bin = redis_server_bin();
        let log = dir.join(format!("{name}-{port}.log"));
        let out = File::create(&log).expect("create the redis-server log");
        let child = Command::new(&bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}). These tests run a real Redis: install it with \
                     `apt-get install redis-server`, or point REDIS_SERVER at a redis-server \
                     binary",
                    bin.display()
                )
            });
        Self { child, port, log }
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = WallClock::now() + PATIENCE;
        loop {
            let exited = self
                .child
                .try_wait()
                .expect("check the redis-server process");
            if let Some(status) = exited {
                return Err(format!(
                    "redis-server exited ({status}) before listening on {addr}; log:\n{}",
                    self.log_text()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if WallClock::now() > deadline {
                return Err(format!(
                    "redis-server did not listen on {addr} within {PATIENCE:?}; log:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connection of its own, outside the stack; it never times out by itself.
    async fn connect(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("a valid Redis URL");
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}; log:\n{}", self.url(), self.log_text()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pauses every client of Redis for `pause`. The returned task finishes when Redis answers
/// again: its `PING`, sent after the pause began, is served only once the pause is over.
async fn pause_all(admin: &MultiplexedConnection, pause: Duration) -> JoinHandle<()> {
    let mut conn = admin.clone();
    let millis = pause.as_millis().to_string();
    let reply: String = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(millis)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .expect("CLIENT PAUSE");
    assert_eq!(reply, "OK");
    tokio::spawn(async move {
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .expect("PING after the pause");
        assert_eq!(pong, "PONG");
    })
}

/// Waits for `task`, failing the test if it takes longer than [`PATIENCE`].
async fn join<T>(what: &str, task: JoinHandle<T>) -> T {
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap_or_else(|_| panic!("gave up waiting {PATIENCE:?} for: {what}"))
        .unwrap_or_else(|e| panic!("{what}: the task failed: {e}"))
}

/// Polls `done` until it holds, failing the test after [`PATIENCE`].
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = WallClock::now() + PATIENCE;
    while !done() {
        assert!(
            WallClock::now() < deadline,
            "gave up waiting {PATIENCE:?} for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// ===== the stack =====

type RedisService = BoxCloneService<Cmd, Value, BoxError>;

/// The recipe in front of one Redis connection, and what a test looks at.
struct Stack {
    svc: RedisService,
    breaker: BreakerHandle,
    bulkhead: BulkheadHandle,
    /// Calls that reached the Redis leaf, under the breaker, the bulkhead and the timeout.
    leaf_calls: Arc<AtomicU64>,
}

/// Shedding is the bulkhead's doing, not a sign that Redis fails.
fn classify(result: Result<&Value, &BoxError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(e) if e.is::<BulkheadFull>() => Outcome::Ignore,
        Err(_) => Outcome::Failure,
    }
}

impl Stack {
    fn new(conn: MultiplexedConnection, bulkhead: usize, timeout: Duration) -> Self {
        let breaker = BreakerLayer::builder()
            .name("redis")
            .consecutive_failures(TRIP_AFTER)
            .open_for(OPEN_FOR)
            .jitter(0.0)
            .classify(classify)
            .build()
            .expect("a valid breaker");
        let bulkhead = BulkheadLayer::new(bulkhead).expect("a valid bulkhead");
        let leaf_calls = Arc::new(AtomicU64::new(0));
        let leaf = {
            let leaf_calls = leaf_calls.clone();
            service_fn(move |cmd: Cmd| {
                leaf_calls.fetch_add(1, Ordering::SeqCst);
                let mut conn = conn.clone();
                async move { cmd.query_async::<Value>(&mut conn).await }
            })
        };
        let svc = ServiceBuilder::new()
            .boxed_clone()
            .breaker(breaker.clone())
            .bulkhead(bulkhead.clone())
            .timeout(timeout)
            .service(leaf);
        Self {
            svc,
            breaker: breaker.handle(),
            bulkhead: bulkhead.handle(),
            leaf_calls,
        }
    }

    fn leaf_calls(&self) -> u64 {
        self.leaf_calls.load(Ordering::SeqCst)
    }

    async fn call(&mut self, cmd: Cmd) -> Result<Value, BoxError> {
        self.svc.ready().await?.call(cmd).await
    }

    /// Calls through the stack; the call must be refused on its first poll, without waiting.
    async fn call_refused_at_once(&mut self, cmd: Cmd) -> BoxError {
        let call = self.svc.ready().await.expect("ready").call(cmd);
        match call.now_or_never() {
            Some(Err(e)) => e,
            Some(Ok(value)) => panic!("expected a refusal, got {value:?}"),
            None => panic!("the call was not refused at once: it waits"),
        }
    }

    async fn set(&mut self, key: &str, value: &str) {
        let reply = self.call(Cmd::set(key, value)).await.expect("SET");
        assert_eq!(reply, Value::Okay, "SET {key}");
    }

    async fn get(&mut self, key: &str) -> Result<Option<String>, BoxError> {
        let value = self.call(Cmd::get(key)).await?;
        Ok(redis::from_redis_value(value)?)
    }
}

fn string(value: Value) -> Option<String> {
    redis::from_redis_value(value).expect("a string reply")
}

// ===== the scenarios =====

/// Healthy calls go through; a paused Redis makes calls time out until the breaker opens; the
/// open breaker rejects at once and nothing it rejects reaches Redis; after the pause the
/// breaker lets a probe through, closes by itself, and calls see the right values again.
#[tokio::test]
async fn paused_redis_opens_the_breaker_which_fails_fast_then_closes_by_itself() {
    let server = RedisServer::start("breaker");
    let admin = server.connect().await;
    let mut stack = Stack::new(server.connect().await, 16, TIMEOUT);

    // Healthy.
    stack.set("greeting", "hello").await;
    assert_eq!(
        stack.get("greeting").await.unwrap().as_deref(),
        Some("hello")
    );
    assert_eq!(stack.breaker.state(), BreakerState::Closed);
    assert_eq!(stack.breaker.counts().successes, 2);

    // Redis freezes: each call times out, and the breaker counts each one.
    let pause_over = pause_all(&admin, PAUSE).await;
    for n in 1..=TRIP_AFTER {
        let err = stack.get("greeting").await.unwrap_err();
        assert!(err.is::<Elapsed>(), "call {n} while paused: {err}");
        let expected = if n < TRIP_AFTER {
            BreakerState::Closed
        } else {
            BreakerState::Open
        };
        assert_eq!(stack.breaker.state(), expected, "after {n} timeouts");
    }
    let metrics = stack.breaker.counts();
    assert_eq!(
        (metrics.failures, metrics.times_opened),
        (3, 1),
        "{metrics:?}"
    );
    let reached = stack.leaf_calls();
    assert_eq!(reached, 2 + u64::from(TRIP_AFTER));

    // Open: every call is rejected on its first poll, and none reaches the leaf. They are
    // writes to keys of their own, so Redis itself can tell later whether any got through.
    for n in 0..5 {
        let err = stack
            .call_refused_at_once(Cmd::set(format!("rejected:{n}"), "x"))
            .await;
        let open = err
            .downcast_ref::<BreakerOpen>()
            .unwrap_or_else(|| panic!("rejection {n}: expected BreakerOpen, got {err}"));
        let retry_after = open.retry_after().expect("a cool-down, not forced open");
        assert!(retry_after <= OPEN_FOR, "{retry_after:?}");
    }
    assert_eq!(
        stack.leaf_calls(),
        reached,
        "a rejected call reached the leaf"
    );
    assert_eq!(stack.breaker.counts().rejected, 5);

    // Redis answers again. The breaker, still cooling down or not, lets a probe through when
    // its cool-down is over; the probe succeeds and closes it.
    join("the end of the pause", pause_over).await;
    let mut probe = stack.get("greeting").await;
    if let Some(open) = probe
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<BreakerOpen>())
    {
        assert_eq!(
            stack.leaf_calls(),
            reached,
            "a rejected call reached the leaf"
        );
        let retry_after = open.retry_after().expect("a cool-down");
        println!("the pause is over, the breaker still open: probing in {retry_after:?}");
        tokio::time::sleep(retry_after).await;
        probe = stack.get("greeting").await;
    }
    assert_eq!(probe.unwrap().as_deref(), Some("hello"), "the probe");
    assert_eq!(stack.leaf_calls(), reached + 1, "exactly one probe");
    let metrics = stack.breaker.counts();
    assert_eq!(metrics.state, BreakerState::Closed, "{metrics:?}");
    assert_eq!(metrics.times_opened, 1, "the probe failed: {metrics:?}");

    // Closed again: writes and reads see the right values.
    stack.set("greeting", "hello again").await;
    assert_eq!(
        stack.get("greeting").await.unwrap().as_deref(),
        Some("hello again")
    );

    // Redis never saw a rejected write. (Our last reply came after every earlier command on the
    // stack's connection was served, so nothing is still on its way.)
    let rejected_keys: Vec<String> = (0..5).map(|n| format!("rejected:{n}")).collect();
    let mut admin = admin;
    let reply = Cmd::exists(&rejected_keys)
        .query_async(&mut admin)
        .await
        .expect("EXISTS");
    assert_eq!(integer(reply), 0, "a rejected write reached Redis");
    assert_eq!(stack.bulkhead.counts().in_flight, 0);
    assert_eq!(stack.bulkhead.counts().shed, 0);
}

fn integer(value: Value) -> i64 {
    redis::from_redis_value(value).expect("an integer reply")
}

/// With as many calls stuck behind the pause as the bulkhead holds, the next call is shed on
/// its first poll and never reaches Redis; the stuck calls finish with the right values once
/// the pause is over, and shedding did not count against Redis in the breaker.
#[tokio::test]
async fn bulkhead_sheds_at_once_while_its_calls_are_stuck_behind_the_pause() {
    const CAPACITY: usize = 3;
    let server = RedisServer::start("bulkhead");
    let admin = server.connect().await;
    // The stuck calls must outlast the pause, not time out.
    let mut stack = Stack::new(server.connect().await, CAPACITY, PATIENCE);
    stack.set("colour", "blue").await;

    let pause_over = pause_all(&admin, PAUSE).await;
    let stuck: Vec<_> = (0..CAPACITY)
        .map(|_| {
            let mut svc = stack.svc.clone();
            tokio::spawn(async move { svc.ready().await?.call(Cmd::get("colour")).await })
        })
        .collect();
    let bulkhead = stack.bulkhead.clone();
    let leaf_calls = stack.leaf_calls.clone();
    wait_for(
        "every slot taken by a call sent to the paused Redis",
        || {
            bulkhead.counts().in_flight == CAPACITY
                && leaf_calls.load(Ordering::SeqCst) == 1 + CAPACITY as u64
        },
    )
    .await;

    let err = stack.call_refused_at_once(Cmd::get("colour")).await;
    assert!(
        err.is::<BulkheadFull>(),
        "expected BulkheadFull, got {err} (pause over already: {})",
        pause_over.is_finished()
    );
    assert_eq!(stack.bulkhead.counts().shed, 1);
    assert_eq!(
        stack.leaf_calls(),
        1 + CAPACITY as u64,
        "a shed call reached the leaf"
    );

    join("the end of the pause", pause_over).await;
    for (n, call) in stuck.into_iter().enumerate() {
        let value = join("a stuck call", call)
            .await
            .unwrap_or_else(|e| panic!("stuck call {n}: {e}"));
        assert_eq!(string(value).as_deref(), Some("blue"), "stuck call {n}");
    }
    assert_eq!(stack.bulkhead.counts().in_flight, 0);
    assert_eq!(stack.get("colour").await.unwrap().as_deref(), Some("blue"));

    let metrics = stack.breaker.counts();
    assert_eq!(metrics.state, BreakerState::Closed, "{metrics:?}");
    assert_eq!(
        (metrics.successes, metrics.failures, metrics.ignored),
        (2 + CAPACITY as u64, 0, 1),
        "{metrics:?}"
    );
}
