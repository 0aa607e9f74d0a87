//! The incident, reproduced: a latency-critical service writes stats to Kafka; one broker of
//! three freezes, then every broker freezes, then the cluster goes down, then heals. The same
//! service runs three times on the same load, each on a fresh Kafka: **naive** (awaits each
//! Kafka write in the handler), **fire-and-forget** (raw rdkafka `ThreadedProducer::send`,
//! errors ignored, nothing awaited) and **protected** (tanker's hand-off → Kafka leaf with a
//! compartment and a breaker per broker, on the README's defaults).
//!
//! ```text
//! cargo run --release --example incident
//! cargo run --release --example incident -- --help
//! ```
//!
//! By default Kafka is librdkafka's in-process mock cluster (3 brokers, a topic of 6
//! partitions, two led by each broker) and the faults are injected there.
//! With `--brokers HOST:PORT` it writes to a real cluster and the faults are yours to cause; with
//! tansu (see `scripts/tansu.sh`), a single broker, freeze it when the "all frozen" phase begins:
//!
//! ```text
//! scripts/tansu.sh start request-stats
//! cargo run --release --example incident -- --brokers 127.0.0.1:19092 &
//! sleep 18; kill -STOP $(cat target/tansu/tansu.pid)   # frozen: the seed incident
//! sleep 8;  kill -CONT $(cat target/tansu/tansu.pid)   # healed
//! scripts/tansu.sh stop
//! ```

mod chart;
mod raw;
mod run;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use run::{Fault, MockFaults, NoFaults, Phase, Report, Settings, Variant, SICK_BROKER, TOPIC};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Which {
    All,
    Naive,
    FireAndForget,
    Protected,
}

/// Reproduce the Kafka incident with and without tanker, on loopback.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Seconds of each phase: healthy, one broker of three frozen, every broker frozen, every
    /// broker down, healed.
    #[arg(long, value_delimiter = ',', default_value = "6,8,8,6,10")]
    phases: Vec<u32>,
    /// Requests per second sent to the service.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Client connections (at most this many requests in flight).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Client timeout per request, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Which variant(s) to run.
    #[arg(long, value_enum, default_value_t = Which::All)]
    variant: Which,
    /// Where to write the chart.
    #[arg(long, default_value = "target/incident.svg")]
    out: PathBuf,
    /// Write to this Kafka cluster instead of the embedded mock (no faults are injected).
    #[arg(long)]
    brokers: Option<String>,
    /// Do the handler's critical lookup in this Redis (e.g. redis://127.0.0.1/) instead of memory.
    #[arg(long)]
    redis: Option<String>,
    /// No progress line per second.
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<(), tower::BoxError> {
    let args = Args::parse();
    let [healthy, one_frozen, frozen, down, healed] = args.phases[..] else {
        return Err(
            "--phases takes five numbers: healthy,one broker frozen,all frozen,all down,healed"
                .into(),
        );
    };
    let phase = |name: &str, secs, fault| Phase {
        name: name.into(),
        secs,
        fault,
    };
    let settings = Settings {
        phases: vec![
            phase("healthy", healthy, Fault::None),
            phase("one frozen", one_frozen, Fault::OneFrozen),
            phase("all frozen", frozen, Fault::Frozen),
            phase("all down", down, Fault::Down),
            phase("healed", healed, Fault::None),
        ],
        rate: args.rate,
        connections: args.concurrency,
        client_timeout: Duration::from_millis(args.timeout_ms),
        progress: !args.quiet,
        redis: args.redis.clone(),
    };
    let variants: &[Variant] = match args.variant {
        Which::All => &[Variant::Naive, Variant::FireAndForget, Variant::Protected],
        Which::Naive => &[Variant::Naive],
        Which::FireAndForget => &[Variant::FireAndForget],
        Which::Protected => &[Variant::Protected],
    };

    // The mock cluster is not `Send`: it lives on this thread, and the runtime's main future
    // (which applies the faults) runs here too.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.brokers.is_none() {
        println!(
            "Kafka: librdkafka's mock cluster, {} brokers, topic `{TOPIC}` of {} partitions; \"one frozen\" freezes broker {SICK_BROKER}",
            run::BROKERS,
            run::PARTITIONS
        );
    }
    let mut reports = Vec::new();
    for &variant in variants {
        println!(
            "== {variant}: {} requests/s for {}s",
            settings.rate,
            settings.phases.iter().map(|p| p.secs).sum::<u32>()
        );
        let report = match &args.brokers {
            Some(brokers) => runtime.block_on(run::run(variant, &settings, brokers, &NoFaults))?,
            None => {
                let cluster = run::mock_cluster()?;
                let faults = MockFaults { cluster: &cluster };
                let bootstrap = cluster.bootstrap_servers();
                runtime.block_on(run::run(variant, &settings, &bootstrap, &faults))?
            }
        };
        print_table(&report);
        reports.push(report);
    }
    println!();
    print_verdict_table(&reports, &settings);
    println!();
    print_phase_table(&reports, &settings);
    println!();
    for report in &reports {
        print_verdict(report, &settings.phases);
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    chart::draw(&args.out, &reports)?;
    println!("\nchart: {}", args.out.display());
    // librdkafka's threads may still be shutting down; the figures are out.
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn print_table(report: &Report) {
    println!();
    println!(
        "{:>4} {:<10} {:>6} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8} {:>7} {:>8} {:>10} {:>4}",
        "s",
        "phase",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "timeouts",
        "delivered",
        "ignored",
        "errors",
        "backlog",
        "breaker",
        "open"
    );
    for s in &report.seconds {
        println!(
            "{:>4} {:<10} {:>6} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8} {:>7} {:>8} {:>10} {:>4}",
            s.at + 1,
            s.phase,
            s.answered,
            ms(s.p50_us),
            ms(s.p99_us),
            ms(s.max_us),
            s.timeouts,
            s.delivered,
            s.ignored,
            s.kafka_errors,
            s.backlog,
            s.breaker.map_or("-".to_owned(), |b| b.to_string()),
            s.open_breakers.map_or("-".to_owned(), |n| n.to_string()),
        );
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("not seen".to_owned(), |d| {
        format!("{:.1} s", d.as_secs_f64())
    })
}

fn percent(part: u64, whole: u64) -> String {
    format!("{:.1} %", part as f64 * 100.0 / whole.max(1) as f64)
}

/// One row per variant, as a Markdown table (the README's).
fn print_verdict_table(reports: &[Report], settings: &Settings) {
    let phases = &settings.phases;
    println!(
        "| | p99 healthy | p99 during the failure | requests answered | records delivered | records lost | peak buffered records | peak RSS (at start) | heal → full delivery | heal → backlog drained |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for report in reports {
        let healthy = report.p99_where(&phases[..1], |f| f == Fault::None);
        let failing = report.p99_where(phases, |f| f != Fault::None);
        let failing = match (healthy, failing) {
            (Some(h), Some(f)) if h > 0 => {
                format!("{} ms ({:.1}×)", ms(f), f as f64 / h as f64)
            }
            (_, Some(f)) => format!("{} ms", ms(f)),
            (_, None) => "every request timed out".to_owned(),
        };
        let r = report.records;
        let lost = match report.handoff {
            Some(c) => format!(
                "{} (dropped {}, expired {}, shed {}, rejected {}, failed {})",
                r.lost, c.dropped, c.expired, c.shed, c.rejected, c.failed
            ),
            None if report.variant == Variant::Naive => {
                format!(
                    "{} seen failing; {} sent after their request timed out, outcome unseen",
                    r.lost, r.unseen
                )
            }
            None => r.lost.to_string(),
        };
        let buffered = match report.variant {
            Variant::Protected => format!("{} (queued + parked)", report.peak_backlog),
            _ => format!("{} (librdkafka in flight)", report.peak_backlog),
        };
        println!(
            "| {} | {} ms | {failing} | {} / {} | {} / {} ({}) | {lost} | {buffered} | {} | {} | {} |",
            report.variant,
            healthy.map_or("n/a".into(), ms),
            report.answered,
            report.sent,
            r.delivered,
            r.offered,
            percent(r.delivered, r.offered),
            report.rss.map_or("n/a".to_owned(), |m| format!(
                "{} MiB ({} MiB)",
                m.peak >> 20,
                m.start >> 20
            )),
            secs(report.heal_to_full_delivery),
            secs(report.heal_to_drained),
        );
    }
}

/// One row per variant and phase, as a Markdown table. Records count in the phase in which their
/// outcome was seen.
fn print_phase_table(reports: &[Report], settings: &Settings) {
    let timeout_us = settings.client_timeout.as_micros() as u64;
    println!(
        "| | phase | p99 (a timeout counts as {} ms) | requests answered | records offered | records delivered | records lost | peak buffered | phase start → full delivery | breakers not closed (most at once) |",
        settings.client_timeout.as_millis()
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for report in reports {
        for (phase, figures) in settings.phases.iter().zip(&report.phases) {
            let p99 = match figures.p99_felt_us {
                Some(us) if us >= timeout_us => "timed out".to_owned(),
                Some(us) => format!("{} ms", ms(us)),
                None => "n/a".to_owned(),
            };
            println!(
                "| {} | {} ({} s) | {p99} | {} / {} | {} | {} ({}) | {} | {} | {} | {} |",
                report.variant,
                phase.name,
                phase.secs,
                figures.answered,
                figures.requests,
                figures.offered,
                figures.delivered,
                percent(figures.delivered, figures.offered),
                figures.lost,
                figures.peak_backlog,
                figures
                    .to_full_delivery
                    .map_or("not in the phase".to_owned(), |d| {
                        format!("{} s", d.as_secs())
                    }),
                figures
                    .most_open_breakers
                    .map_or("n/a".to_owned(), |n| format!("{n} of {}", run::BROKERS)),
            );
        }
    }
}

fn print_verdict(report: &Report, phases: &[Phase]) {
    let healthy = report.p99_where(&phases[..1], |f| f == Fault::None);
    let failing = report.p99_where(phases, |f| f != Fault::None);
    let failing_timeouts = report.timeouts_where(phases, |f| f != Fault::None);
    let ratio = match (healthy, failing) {
        (Some(h), Some(f)) if h > 0 => format!("{:.1}x", f as f64 / h as f64),
        (Some(_), None) => "every request timed out".to_owned(),
        _ => "n/a".to_owned(),
    };
    print!(
        "verdict {:>15}: p99 healthy {} ms, during failure {} ms ({ratio}), {} client timeouts during failure, {}/{} requests answered",
        report.variant,
        healthy.map_or("n/a".into(), ms),
        failing.map_or("-".into(), ms),
        failing_timeouts,
        report.answered,
        report.sent,
    );
    let r = report.records;
    print!(
        "; records: offered {} = delivered {} + lost {} + left {} + unseen {}",
        r.offered, r.delivered, r.lost, r.left, r.unseen
    );
    if report.variant == Variant::Protected {
        print!(
            ", breaker changed state {} times",
            report.breaker_states.len().saturating_sub(1)
        );
        if let Some(d) = report.fault_to_open {
            print!(
                ", a breaker first opened {:.2} s into the first fault",
                d.as_secs_f64()
            );
        }
        match report.heal_to_closed {
            Some(d) => print!(
                ", every breaker closed {:.2} s after the heal",
                d.as_secs_f64()
            ),
            None => print!(", breakers not seen closed after the heal"),
        }
        if let Some(c) = report.handoff {
            print!(
                "; records: offered {} = delivered {} + dropped {} + expired {} + shed {} + rejected {} + failed {} + pending {} (queued {}, parked {}, in flight {}) ({}); {} given one more try",
                c.offered, c.delivered, c.dropped, c.expired, c.shed, c.rejected, c.failed, c.pending(),
                c.queued, c.parked, c.in_flight,
                if c.is_balanced() { "balanced" } else { "UNBALANCED" },
                c.retried,
            );
        }
    }
    println!();
}
