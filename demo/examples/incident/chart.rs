//! Draws the incident as an SVG chart, like the original Graphite graph.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::run::{Fault, Report, Second, Variant};

const ORANGE: RGBColor = RGBColor(230, 130, 0);

/// Each variant's colour, the same in every panel.
fn color(variant: Variant) -> RGBColor {
    match variant {
        Variant::Naive => RED,
        Variant::FireAndForget => ORANGE,
        Variant::Protected => BLUE,
    }
}

/// Top: each variant's p99 latency per second (log scale). Middle: records ignored (solid) and
/// Kafka errors (dashed) per second. Bottom: the records buffered in the writer (tanker's
/// queued + parked, librdkafka's in-flight count for fire-and-forget). The naive writer is
/// only in the top panel: it loses nothing on purpose and buffers no more than its
/// connections. Each fault is shaded in its own colour (one broker frozen in yellow, every
/// broker frozen then down in red) and named at the top.
pub(crate) fn draw(path: &Path, reports: &[Report]) -> Result<(), tower::BoxError> {
    let secs = reports.iter().map(|r| r.seconds.len()).max().unwrap_or(1) as u32;
    let root = SVGBackend::new(path, (1000, 960)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, rest) = root.split_vertically(380);
    let (middle, bottom) = rest.split_vertically(290);
    let failure = failure_windows(reports.first());
    latency_panel(&top, reports, secs, &failure)?;

    let writers: Vec<&Report> = reports
        .iter()
        .filter(|r| r.variant != Variant::Naive)
        .collect();
    let lines: Vec<Line<'_>> = writers
        .iter()
        .flat_map(|&r| match r.variant {
            // Each of its Kafka errors is a record lost: one line says both.
            Variant::FireAndForget => vec![Line::solid(r, "ignored (= its Kafka errors)", |s| {
                s.ignored
            })],
            _ => vec![
                Line::solid(r, "ignored", |s| s.ignored),
                Line::dashed(r, "Kafka errors", |s| s.kafka_errors),
            ],
        })
        .collect();
    counts_panel(
        &middle,
        "records ignored (solid) and Kafka errors (dashed) per second",
        &lines,
        secs,
        &failure,
    )?;
    let lines: Vec<Line<'_>> = writers
        .iter()
        .map(|&r| Line::solid(r, "backlog", |s| s.backlog))
        .collect();
    counts_panel(
        &bottom,
        "records buffered in the writer (tanker: queued + parked; raw: librdkafka in flight)",
        &lines,
        secs,
        &failure,
    )?;
    root.present()?;
    Ok(())
}

fn latency_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    reports: &[Report],
    secs: u32,
    failure: &[Window],
) -> Result<(), tower::BoxError> {
    let max_us = reports
        .iter()
        .flat_map(|r| r.seconds.iter().map(|s| s.p99_felt_us))
        .max()
        .unwrap_or(1000)
        .max(1000) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "p99 latency of the service per second (a client timeout counts as the timeout; shaded: the faults)",
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..secs, (50f64..max_us * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("p99 (µs, log)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for window in failure {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(window.from, 50.0), (window.to, max_us * 2.0)],
            shade(window.fault),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            name(window.fault),
            (window.from, max_us * 1.6),
            ("sans-serif", 13),
        )))?;
    }
    for report in reports {
        let color = color(report.variant);
        let points = report
            .seconds
            .iter()
            .map(|s| (s.at, (s.p99_felt_us.max(51)) as f64));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("{} p99", report.variant))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// One line of a counts panel: a variant's per-second figure.
struct Line<'a> {
    report: &'a Report,
    what: &'static str,
    dashed: bool,
    pick: fn(&Second) -> u64,
}

impl<'a> Line<'a> {
    fn solid(report: &'a Report, what: &'static str, pick: fn(&Second) -> u64) -> Self {
        Self {
            report,
            what,
            dashed: false,
            pick,
        }
    }

    fn dashed(report: &'a Report, what: &'static str, pick: fn(&Second) -> u64) -> Self {
        Self {
            dashed: true,
            ..Self::solid(report, what, pick)
        }
    }
}

fn counts_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    lines: &[Line<'_>],
    secs: u32,
    failure: &[Window],
) -> Result<(), tower::BoxError> {
    let max = lines
        .iter()
        .flat_map(|l| l.report.seconds.iter().map(l.pick))
        .max()
        .unwrap_or(1)
        .max(1);
    let top = max + max / 10 + 1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..secs, 0u64..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("records")
        .draw()?;
    for window in failure {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(window.from, 0), (window.to, top)],
            shade(window.fault),
        )))?;
    }
    for line in lines {
        let color = color(line.report.variant);
        let style = color.stroke_width(2);
        let points = line.report.seconds.iter().map(|s| (s.at, (line.pick)(s)));
        let label = format!("{} {}", line.report.variant, line.what);
        if line.dashed {
            chart
                .draw_series(DashedLineSeries::new(points, 6, 4, style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 6, y)], color));
        } else {
            chart
                .draw_series(LineSeries::new(points, style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Seconds `[from, to)` during which one fault was injected.
struct Window {
    from: u32,
    to: u32,
    fault: Fault,
}

/// The shade of a fault's seconds: a partial outage (one broker frozen) yellow; the whole
/// cluster frozen light red, down darker.
fn shade(fault: Fault) -> ShapeStyle {
    let color = if !fault.is_cluster_wide() {
        RGBColor(255, 220, 120)
    } else if fault == Fault::Frozen {
        RGBColor(255, 200, 200)
    } else {
        RGBColor(255, 150, 150)
    };
    color.mix(0.35).filled()
}

/// A fault's label on the chart.
fn name(fault: Fault) -> &'static str {
    match fault {
        Fault::None => "healthy",
        Fault::OneFrozen => "one broker frozen",
        Fault::Frozen => "every broker frozen",
        Fault::Down => "every broker down",
    }
}

/// Each run of seconds with the same injected fault.
fn failure_windows(report: Option<&Report>) -> Vec<Window> {
    let mut windows: Vec<Window> = Vec::new();
    let Some(report) = report else {
        return windows;
    };
    for second in &report.seconds {
        let fault = second.fault.unwrap_or(Fault::None);
        match windows.last_mut() {
            Some(last) if last.fault == fault && last.to == second.at => last.to = second.at + 1,
            _ if fault == Fault::None => {}
            _ => windows.push(Window {
                from: second.at,
                to: second.at + 1,
                fault,
            }),
        }
    }
    windows
}
