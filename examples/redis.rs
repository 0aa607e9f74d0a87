//! Redis commands behind the recipe (breaker → bulkhead → timeout), and what the caller sees
//! when Redis freezes.
//!
//! Start a Redis on loopback first, then run the example:
//!
//! ```text
//! scripts/redis.sh start        # or: redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no
//! cargo run --example redis     # --url redis://127.0.0.1:6390 for another port
//! scripts/redis.sh stop
//! ```
//!
//! The example writes and reads one key (`tanker:example:greeting`, which expires after a
//! minute), then freezes Redis with `CLIENT PAUSE <ms> ALL` sent on a connection of its own:
//! connections stay open and nothing answers, the way a Redis stuck in a long command or a fork
//! looks to its clients. A caller reads the key every 100 ms through the stack and each line
//! shows what it got: reads that time out, the breaker opening, reads rejected at once while it
//! is open, a probe that fails while Redis is still paused, and, once the pause is over, a probe
//! that succeeds and closes the breaker. It exits after about three seconds.
//!
//! `CLIENT PAUSE … ALL` pauses every client of that Redis, not only this one: do not point
//! `--url` at a Redis that others use.

use std::time::Duration;

use clap::Parser;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig};
use tokio::time::{interval, Instant, MissedTickBehavior};
use tower::timeout::error::Elapsed;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

use tanker::breaker::{BreakerHandle, BreakerLayer, BreakerOpen, BreakerState, Outcome};
use tanker::bulkhead::{BulkheadFull, BulkheadLayer};
use tanker::ServiceBuilderExt;

const KEY: &str = "tanker:example:greeting";
/// The longest a Redis command may take before the caller gives up on it.
const TIMEOUT: Duration = Duration::from_millis(100);
/// How often the caller reads the key.
const EVERY: Duration = Duration::from_millis(100);
/// The example gives up if the breaker has not closed by then.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(about = "Redis behind a breaker, a bulkhead and a timeout, through a CLIENT PAUSE")]
struct Args {
    /// The Redis to use (and pause): one on loopback that nobody else uses.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    url: String,
    /// How long to pause Redis, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pause_ms: u64,
}

/// The two commands the caller needs.
#[derive(Debug, Clone)]
enum Op {
    Get(String),
    /// Sets the key, with an expiry of a minute.
    Set(String, String),
}

/// Runs one command on the shared multiplexed connection (a clone is a handle to it).
/// `Get` answers the value, `Set` answers `None`.
async fn run(mut conn: MultiplexedConnection, op: Op) -> redis::RedisResult<Option<String>> {
    match op {
        Op::Get(key) => conn.get(key).await,
        Op::Set(key, value) => {
            conn.set_ex::<_, _, ()>(key, value, 60).await?;
            Ok(None)
        }
    }
}

/// Shedding is our own back-pressure, not a sign that Redis fails.
fn classify(result: Result<&Option<String>, &BoxError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(e) if e.is::<BulkheadFull>() => Outcome::Ignore,
        Err(_) => Outcome::Failure,
    }
}

fn describe(result: &Result<Option<String>, BoxError>) -> String {
    match result {
        Ok(Some(value)) => format!("{value:?}"),
        Ok(None) => "ok".to_owned(),
        Err(e) if e.is::<Elapsed>() => format!("timed out after {TIMEOUT:?}"),
        Err(e) => match e.downcast_ref::<BreakerOpen>() {
            Some(open) => match open.retry_after() {
                Some(after) => format!("rejected at once, next probe in {after:.0?}"),
                None => "rejected at once, breaker forced open".to_owned(),
            },
            None if e.is::<BulkheadFull>() => "shed by the bulkhead".to_owned(),
            None => format!("failed: {e}"),
        },
    }
}

/// `+1.234s`: when something happened, counted from the start.
fn since(start: Instant, at: Instant) -> String {
    format!("+{:.3}s", (at - start).as_secs_f64())
}

fn breaker_state(breaker: &BreakerHandle) -> String {
    let metrics = breaker.counts();
    match metrics.state {
        BreakerState::Closed if metrics.consecutive_failures > 0 => {
            format!("Closed, {} failed in a row", metrics.consecutive_failures)
        }
        state => format!("{state:?}"),
    }
}

async fn connect(url: &str) -> Result<MultiplexedConnection, BoxError> {
    let client = redis::Client::open(url)?;
    // No response timeout of the client's own: the stack's timeout decides.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| {
            format!(
                "cannot connect to {url}: {e}\nstart a Redis on loopback first: \
                 scripts/redis.sh start"
            )
            .into()
        })
}

/// The caller: the stack, and what it prints after each call.
struct Caller<S> {
    redis: S,
    breaker: BreakerHandle,
    start: Instant,
}

impl<S> Caller<S>
where
    S: Service<Op, Response = Option<String>, Error = BoxError>,
{
    /// Makes one call through the stack and prints what it got, how long it took, and the
    /// breaker's state after it.
    async fn call(&mut self, op: Op) -> Result<Option<String>, BoxError> {
        let what = match &op {
            Op::Get(key) => format!("GET {key}"),
            Op::Set(key, value) => format!("SET {key} {value:?}"),
        };
        let began = Instant::now();
        let result = match self.redis.ready().await {
            Ok(ready) => ready.call(op).await,
            Err(e) => Err(e),
        };
        println!(
            "{:>7}  {what:<44} {:<40} {:>8.1?}  [breaker {}]",
            since(self.start, began),
            describe(&result),
            began.elapsed(),
            breaker_state(&self.breaker),
        );
        result
    }

    /// Writes `value` to the key and checks that reading it back gives `value`.
    async fn write_and_read(&mut self, value: &str) -> Result<(), BoxError> {
        self.call(Op::Set(KEY.to_owned(), value.to_owned())).await?;
        let read = self.call(Op::Get(KEY.to_owned())).await?;
        if read.as_deref() != Some(value) {
            return Err(format!("wrote {value:?}, read back {read:?}").into());
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let pause = Duration::from_millis(args.pause_ms);
    let conn = connect(&args.url).await?;
    let mut admin = connect(&args.url).await?;

    // One breaker and one bulkhead for this Redis, built once.
    let breaker = BreakerLayer::builder()
        .name("redis")
        .consecutive_failures(3)
        .open_for(Duration::from_millis(400))
        .backoff(2.0, Duration::from_secs(2))
        .jitter(0.0)
        .classify(classify)
        .build()?;
    let bulkhead = BulkheadLayer::new(8)?;
    let breaker_handle = breaker.handle();
    let bulkhead_handle = bulkhead.handle();

    let redis = ServiceBuilder::new()
        .breaker(breaker)
        .bulkhead(bulkhead)
        .timeout(TIMEOUT)
        .service(service_fn(move |op: Op| run(conn.clone(), op)));

    let start = Instant::now();
    let mut caller = Caller {
        redis,
        breaker: breaker_handle.clone(),
        start,
    };
    println!("healthy:");
    caller.write_and_read("hello").await?;

    // Freeze Redis. A PING sent after the pause is served only once the pause is over: its
    // answer tells us when Redis serves clients again.
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(args.pause_ms)
        .arg("ALL")
        .query_async::<()>(&mut admin)
        .await?;
    println!(
        "\nCLIENT PAUSE {} ALL: Redis is frozen for {pause:?}",
        args.pause_ms
    );
    let mut pause_over = tokio::spawn(async move {
        redis::cmd("PING")
            .query_async::<String>(&mut admin)
            .await
            .map(|_| Instant::now())
    });

    let mut resumed = false;
    let mut ticks = interval(EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !resumed && pause_over.is_finished() {
            let at = (&mut pause_over).await??;
            println!("{:>7}  Redis answers again", since(start, at));
            resumed = true;
        }
        let result = caller.call(Op::Get(KEY.to_owned())).await;
        if resumed && breaker_handle.state() == BreakerState::Closed {
            assert_eq!(result?.as_deref(), Some("hello"));
            break;
        }
        if start.elapsed() > DEADLINE {
            return Err(format!("the breaker did not close within {DEADLINE:?}").into());
        }
    }

    println!("\nrecovered:");
    caller.write_and_read("hello again").await?;

    let m = breaker_handle.counts();
    let bulkhead = bulkhead_handle.counts();
    println!(
        "\nbreaker: opened {} times, {} calls rejected; {} succeeded and {} failed while closed \
         (probes not counted); bulkhead: {} admitted, {} shed",
        m.times_opened, m.rejected, m.successes, m.failures, bulkhead.admitted, bulkhead.shed,
    );
    Ok(())
}
